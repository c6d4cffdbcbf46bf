"""Digit captions with a small ViT + decoder, trained on DFLOP-balanced packed rows.

The skewed workload (single images, multi-image sets, "videos"; `data/multimodal.py`) is packed
per step into one row per batch shard by `parallel.balance`. `configs/multimodal.py:tiny` is the
same job shrunk for tests; `:tiny_pipeline` runs it on 8 devices as 2 decoder pipeline stages x 4
data shards, whose 2S = 4 microbatches per shard are the balancer's bins (training/multimodal.py).
"""

import ml_collections

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.model.update(kind='multimodal', num_layers=4, d_model=64, num_heads=4, mlp_dim=192,
                 max_len=8192)
  c.vision = ml_collections.ConfigDict(dict(
      image_size=8, patch_size=2, shuffle=2, num_layers=2, d_model=64, num_heads=4, mlp_dim=128))
  c.balance = ml_collections.ConfigDict(dict(
      workload='dflop',  # DigitStories builder config: uniform | mild | dflop | dflop_tiny
      solver='lpt',  # lpt | cpsat (falls back to LPT when time_limit_s hits)
      time_limit_s=1.0,
      max_images=256,  # largest bucket; a larger sample gets a row of its own (with a warning)
      max_tokens=8192,
      ladder_growth=1.125,  # bucket sizes grow by this factor: fewer shapes vs less padding
      correction_decay=0.8))  # EMA of measured / predicted step time
  c.optim.update(lr=3e-3, warmup_steps=20)
  c.train.update(steps=300, batch_size=64, log_every=10)
  c.checkpoint.every = 100
  if arg in ('tiny', 'tiny_pipeline'):
    c.model.update(num_layers=2, d_model=32, num_heads=2, mlp_dim=64)
    c.vision.update(num_layers=1, d_model=32, num_heads=2, mlp_dim=64)
    c.balance.update(workload='dflop_tiny', max_tokens=4096)
    c.train.update(steps=4, batch_size=16, log_every=2, progress=False)
    c.optim.warmup_steps = 2
    c.checkpoint.every = 2
  if arg == 'tiny_pipeline':
    c.parallel.update(stage=2, data=4)
    c.train.batch_size = 32  # two samples per bin on average: 4 shards x 4 microbatches
  elif arg not in (None, 'tiny'):
    raise ValueError(f"configs/multimodal.py: unknown variant {arg!r}; use 'tiny', "
                     "'tiny_pipeline' or nothing")
  return c
