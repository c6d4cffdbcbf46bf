"""Ahead-of-time compilation of the train step for a config, without data or parameters.

This is how presets too large for this machine (configs/decoder_1b.py) are checked: the step is
lowered against abstract, sharded inputs on the target mesh and compiled; `memory_analysis()`
then gives per-device argument, output and temporary bytes (MaxText's AOT check).
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import base
from curriculum import api
from data.pool import Pool
from parallel.mesh import make_mesh
from parallel.sharding import use_rules
from training import state as state_lib, step as step_lib


def abstract_pool(size: int, seq_len: int) -> Pool:
  s = jax.ShapeDtypeStruct
  return Pool(s((size, seq_len + 1), jnp.int32), s((size,), jnp.int32), s((size,), jnp.float32),
              s((size,), jnp.int32))


def compile_train_step(config, devices=None, pool_size: int = 4096):
  """The compiled pool step of `config` on a mesh over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  mesh = make_mesh(base.validate(config, len(devices)), devices)
  rules = tuple(tuple(r) for r in config.parallel.rules)
  graphdef, abstract, shardings = state_lib.abstract_state(config, mesh, rules)
  curriculum = api.uniform(pool_size, config.train.batch_size)
  abstract_c = jax.eval_shape(curriculum.init, jax.random.key(0))
  c_shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_c)
  pool = abstract_pool(pool_size, config.data.seq_len)
  fn = step_lib.jit_pool_step(graphdef, curriculum, config.optim.aux_loss_coef, shardings,
                              c_shardings, pool, mesh)
  with jax.set_mesh(mesh), use_rules(rules):
    return fn.lower(abstract, abstract_c, pool).compile()
