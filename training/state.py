"""Model and optimizer construction, sharded from the start by the logical axis rules."""

import dataclasses
from typing import Optional

import jax
import optax
from flax import nnx

from models import moe, reversible, transformer
from parallel import pipeline
from parallel.sharding import tree_shardings


def decoder_config(config, cls=transformer.DecoderConfig) -> transformer.DecoderConfig:
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in config.model.items() if k in names})


def reversible_config(config) -> reversible.ReversibleConfig:
  return reversible.ReversibleConfig(**{k: config.reversible[k] for k in (
      'coupling', 'fixed_point_tol', 'fixed_point_max_iters')})


def stack_runner(config) -> Optional[pipeline.StackRunner]:
  """A decoder's `stack_runner`: pipeline stages over the mesh's stage axis when parallel.stage
  is not 1, else None (the scan)."""
  if config.parallel.stage == 1:
    return None
  return pipeline.StackRunner(pipeline.PipelineConfig(
      stages=0, batch_axes=pipeline.batch_axes(config.parallel.rules), **config.pipeline))


def make_model(config, key: jax.Array) -> nnx.Module:
  if config.model.kind == 'decoder':
    model = transformer.Decoder(decoder_config(config), nnx.Rngs(params=key))
    model.stack_runner = stack_runner(config)
    return model
  if config.model.kind == 'moe':
    return transformer.Decoder(decoder_config(config, moe.MoEConfig), nnx.Rngs(params=key),
                               block_factory=moe.MoEBlock)
  if config.model.kind == 'revffn':
    return reversible.ReversibleDecoder(decoder_config(config, moe.MoEConfig),
                                        nnx.Rngs(params=key), reversible_config(config))
  raise ValueError(f'model.kind={config.model.kind!r} is unknown')


def learning_rate(config) -> optax.Schedule:
  o = config.optim
  decay_steps = max(o.decay_steps or config.train.steps, 1)
  warmup = min(o.warmup_steps, decay_steps - 1)  # optax needs at least one cosine step
  return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, decay_steps, o.lr * o.min_lr_ratio)


def make_tx(config) -> optax.GradientTransformation:
  o = config.optim
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(learning_rate(config), o.b1, o.b2, o.eps,
                               weight_decay=o.weight_decay))
  if config.model.kind == 'revffn' and config.reversible.stage1_steps:
    tx = reversible.two_stage(tx, config.reversible.stage1_steps)
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
  if config.model.kind == 'revffn' and config.reversible.init_from:
    from training import convert  # it builds on this module
    return graphdef, convert.converted_state(config, mesh, rules, shardings), shardings
  state = jax.jit(lambda k: nnx.split(build(config, k))[1], out_shardings=shardings)(key)
  return graphdef, state, shardings


def param_count(state) -> int:
  model_state = state[0]
  return sum(x.size for x in jax.tree.leaves(model_state.filter(nnx.Param)))

