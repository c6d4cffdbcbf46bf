"""RevFFN fine-tuning of the MoE preset (configs/moe.py) on the KJV in reversible two-stream form.

Stage 1 (the first `reversible.stage1_steps` updates) trains the projection adapters only; stage 2
trains every parameter. `configs/revffn.py:tiny` is the same job shrunk for tests.
"""

from configs import moe


def get_config(arg=None):
  c = moe.get_config(arg)
  c.model.kind = 'revffn'
  c.data.corpus = 'kjv'
  c.reversible.update(coupling='explicit', stage1_steps=200)
  c.optim.update(lr=1e-3, warmup_steps=50)
  if arg == 'tiny':
    c.reversible.stage1_steps = 4
    c.optim.warmup_steps = 2
  return c
