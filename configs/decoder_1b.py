"""A ~1B-parameter byte-level decoder for a TPU pod slice or a GPU node.

Checked here only by ahead-of-time compilation on 8 fake CPU devices (tests/integration/test_aot.py):
bf16 compute, full remat, FSDP over every device by default (`--config.parallel.tensor=4` etc.
on bigger meshes).
"""

from configs import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(num_layers=20, d_model=2048, num_heads=16, mlp_dim=5632, max_len=2048,
                 dtype='bfloat16', remat='full')
  c.data.update(corpus='shakespeare,kjv', seq_len=2048)
  c.parallel.update(data=1, fsdp=-1)
  c.optim.update(lr=3e-4, warmup_steps=2000)
  c.train.update(steps=100_000, batch_size=256, log_every=100)
  c.checkpoint.every = 1000
  c.eval.update(every=1000, batches=8, batch_size=256)
  return c
