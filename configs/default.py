"""Byte-level Shakespeare LM that trains on 2 CPU cores in under 10 minutes.

`configs/default.py:tiny` is the same job shrunk for tests (a few seconds).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  if arg == 'tiny':
    c.model.update(num_layers=2, d_model=64, num_heads=4, mlp_dim=128, max_len=64)
    c.data.seq_len = 32
    c.train.update(steps=8, batch_size=8, log_every=2, progress=False)
    c.optim.warmup_steps = 2
    c.checkpoint.every = 4
    c.eval.update(every=4, batches=2, batch_size=8)
  elif arg is not None:
    raise ValueError(f"configs/default.py: unknown variant {arg!r}; use 'tiny' or nothing")
  return c
