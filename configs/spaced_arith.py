"""SPaCe on synthetic arithmetic: warm-up, pool reduction, GRPO with the cluster bandit.

`get_config()` is the reproduction's SPaCe arm; `get_config('quick')` shrinks every stage for
smoke tests. Other arms: `curriculum.kind` uniform | spaced, `curriculum.pool` full | reduced |
random, `curriculum.reward` negated | progress | variance.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = dict(vocab_size=264, num_layers=2, d_model=64, num_heads=4, mlp_dim=256, max_len=32)
  c.data = dict(num_train=20_000, num_test_per_difficulty=100, seed=0, prompt_len=13, data_dir='')
  c.warmup = dict(steps=5000, batch_size=64, learning_rate=3e-3, max_difficulty=3)
  c.reduction = dict(num_clusters=10, per_cluster=10, num_components=16, difficulty_weight=1.0,
                     samples=4)
  c.curriculum = dict(kind='spaced', pool='reduced', reward='progress', sigma0=0.3, ema_decay=0.9,
                      progress_weight=1.0, discount=1.0)
  c.grpo = dict(group_size=8, answer_len=8, temperature=1.0, clip_eps=0.2, kl_coef=0.0,
                batch_size=16, learning_rate=3e-4, updates_per_batch=1)
  c.train = dict(steps=500, log_every=10, eval_every=50, eval_batch_size=500, eval_samples=4,
                 seed=0)
  c.parallel = dict(data=-1)
  c.checkpoint = dict(every=100, max_to_keep=2, async_save=False)
  if arg == 'quick':
    c.data.update(num_train=600, num_test_per_difficulty=10)
    c.warmup.update(steps=300)
    c.reduction.update(num_clusters=4, per_cluster=5, samples=2)
    c.train.update(steps=10, log_every=5, eval_every=5, eval_batch_size=50, eval_samples=2)
    c.checkpoint.every = 5
  elif arg:
    raise ValueError(f'configs/spaced_arith.py: unknown preset {arg!r} (use quick)')
  return c
