"""A RevFFN run that starts from a trained MoE run (`reversible.init_from=<moe workdir>`).

The MoE run's latest `state` item is restored against its own abstract target (the same config
with `model.kind='moe'`), its model is converted with `to_reversible`, and a fresh optimizer for
the converted model is created; the step counter starts at 0, so stage 1 comes first.
"""

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from models import reversible
from training import state as state_lib


def converted_state(config, mesh, rules, shardings):
  source = config.reversible.init_from
  moe_config = config.copy_and_resolve_references()
  with moe_config.unlocked():
    moe_config.model.kind = 'moe'
  moe_graphdef, moe_abstract, _ = state_lib.abstract_state(moe_config, mesh, rules)
  manager = ocp.CheckpointManager(os.path.join(source, 'checkpoints'))
  step = manager.latest_step()
  if step is None:
    raise ValueError(f'reversible.init_from={source!r} holds no checkpoint of an MoE run')
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(moe_abstract))).state
  manager.close()
  model, _ = nnx.merge(moe_graphdef, restored)
  converted = reversible.to_reversible(model, state_lib.reversible_config(config))
  optimizer = nnx.Optimizer(converted, state_lib.make_tx(config), wrt=nnx.Param)
  return jax.device_put(nnx.state((converted, optimizer)), shardings)
