"""Model and optimizer construction, sharded from the start by the logical axis rules."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models import transformer
from parallel.sharding import tree_shardings


def decoder_config(config) -> transformer.DecoderConfig:
  names = {f.name for f in dataclasses.fields(transformer.DecoderConfig)}
  return transformer.DecoderConfig(**{k: v for k, v in config.model.items() if k in names})


def make_model(config, key: jax.Array) -> nnx.Module:
  if config.model.kind == 'decoder':
    return transformer.Decoder(decoder_config(config), nnx.Rngs(params=key))
  raise ValueError(f'model.kind={config.model.kind!r} is unknown')


def learning_rate(config) -> optax.Schedule:
  o = config.optim
  decay_steps = o.decay_steps or config.train.steps
  return optax.warmup_cosine_decay_schedule(0.0, o.lr, min(o.warmup_steps, decay_steps),
                                            max(decay_steps, 1), o.lr * o.min_lr_ratio)


def make_tx(config) -> optax.GradientTransformation:
  o = config.optim
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(learning_rate(config), o.b1, o.b2, o.eps,
                               weight_decay=o.weight_decay))
  # A non-finite gradient leaves parameters and moments untouched; the loop stops the run after
  # `train.max_nonfinite` such steps in a row. The inner limit is never reached on purpose: past
  # it optax would apply the bad update.
  return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def build(config, key: jax.Array):
  """(model, optimizer) as live nnx objects; used under `nnx.eval_shape` and inside jit."""
  model = make_model(config, key)
  return model, nnx.Optimizer(model, make_tx(config), wrt=nnx.Param)


def abstract_state(config, mesh, rules):
  """(graphdef, abstract state with shardings, shardings) without allocating anything."""
  abstract = nnx.eval_shape(lambda: build(config, jax.random.key(0)))
  graphdef, state = nnx.split(abstract)
  shardings = tree_shardings(nnx.get_partition_spec(state), mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, shardings)
  return graphdef, abstract, shardings


def init_state(config, mesh, rules, key: jax.Array):
  """Parameters and optimizer state created directly in their shards (no host copy)."""
  graphdef, _, shardings = abstract_state(config, mesh, rules)
  state = jax.jit(lambda k: nnx.split(build(config, k))[1], out_shardings=shardings)(key)
  return graphdef, state, shardings


def param_count(state) -> int:
  model_state = state[0]
  return sum(x.size for x in jax.tree.leaves(model_state.filter(nnx.Param)))


def nonfinite_streak(state) -> jax.Array:
  """Consecutive non-finite steps so far, read from optax.apply_if_finite's state."""
  opt_state = state[1]['opt_state']
  return opt_state['notfinite_count'][...] if isinstance(opt_state, dict) else jnp.int32(0)
