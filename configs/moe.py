"""MoE decoder (8 experts, top-2, dropless) on Shakespeare: RevFFN's backbone before conversion.

`configs/moe.py:tiny` is the same job shrunk for tests. `configs/revffn.py` fine-tunes this model
in reversible form.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.model.update(kind='moe', num_layers=4, d_model=128, num_heads=4, mlp_dim=256, num_experts=8,
                 top_k=2, capacity_factor=0.0)
  if arg == 'tiny':
    c.model.update(num_layers=2, d_model=64, num_heads=4, mlp_dim=64, num_experts=4, max_len=64)
    c.data.seq_len = 32
    c.train.update(steps=8, batch_size=8, log_every=2, progress=False)
    c.optim.warmup_steps = 2
    c.checkpoint.every = 4
    c.eval.update(every=4, batches=2, batch_size=8)
  elif arg is not None:
    raise ValueError(f"configs/moe.py: unknown variant {arg!r}; use 'tiny' or nothing")
  return c
