"""One ordered pass over Shakespeare + KJV scored by a byte 5-gram model: data organization.

`configs/data_organization.py` trains SAW at the repo defaults (K=3, rho=0.075, L=2) over the pool
sorted by `data.score='ngram'`, one pass, no shuffling, as the paper trains. The argument picks
another order from `curriculum.ordering.ORDERS` (`:stair`, `:sort`, `:fold`, `:zigzag`,
`:segment`, `:random`, `:delt`); a `_jit` suffix (`:saw_jit`) adds JIT over 5% of the pool.
"""

from configs import base
from curriculum import ordering

POOL_WINDOWS = 70056  # train windows of shakespeare + kjv at seq_len 128 (data/lm.py)


def get_config(arg=None):
  order, jit = (arg or 'saw'), False
  if order.endswith('_jit'):
    order, jit = order[:-len('_jit')], True
  if order not in ordering.ORDERS:
    raise ValueError(f'configs/data_organization.py: unknown order {arg!r}; choose one of '
                     f'{sorted(ordering.ORDERS)}, optionally with _jit')
  c = base.get_config()
  c.data.corpus = 'shakespeare,kjv'
  c.data.score = 'ngram'
  c.curriculum.kind = 'ordered'
  c.curriculum.order = order
  if jit:
    c.curriculum.order_args = {'window': POOL_WINDOWS // 20}
  c.train.steps = POOL_WINDOWS // c.train.batch_size  # one pass
  return c
