"""The decoder LM loss through the 1F1B pipeline schedule, whose backward runs inside the schedule.

The token embedding is what the first stage applies to each microbatch (and differentiates in its
backward); the final norm, unembedding and token loss are the head the last stage applies. Value
and gradients are those of `nnx.value_and_grad` over `step.lm_loss`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from data.text import PAD
from parallel import pipeline
from parallel.sharding import constrain
from training import step as step_lib


def uses_1f1b(model) -> bool:
  runner = getattr(model, 'stack_runner', None)
  return isinstance(runner, pipeline.StackRunner) and runner.cfg.schedule == '1f1b'


def lm_value_and_grad(model, tokens: jax.Array, aux_coef: float):
  """((loss + aux_coef * aux, (loss, per_example, counts)), grads), as step.lm_loss's gradient."""
  tokens = constrain(tokens, ('act_batch', None))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  graphdef, layers, rest = nnx.split(model, nnx.PathContains('layers'), ...)
  # The head and the embedding need the modules around the stack, never its parameters.
  layer_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), layers)
  without_layers = lambda rest: nnx.merge(graphdef, layer_shapes, rest)
  mask = (targets != PAD).astype(jnp.float32)
  counts = mask.sum(-1)
  # Each example's share of the token-weighted mean, so microbatch losses simply add up.
  weights = jnp.broadcast_to(1.0 / jnp.maximum(counts.sum(), 1.0), counts.shape)

  def head_fn(rest, y, head_inputs):
    targets, weights = head_inputs
    m = without_layers(rest)
    nll, mask = step_lib.token_nll(m.logits(m.final_norm(y)), targets)
    per_example = nll.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return jnp.sum(nll.sum(-1) * weights), per_example

  embed_fn = lambda rest, inputs: without_layers(rest).embed_tokens(inputs)
  positions = jnp.broadcast_to(jnp.arange(inputs.shape[-1]), inputs.shape)
  layer_fn = pipeline.nnx_layer_fn(nnx.split(model.layers)[0])
  stats, (d_layers, d_rest) = pipeline.loss_and_grads(
      layer_fn, embed_fn, head_fn, model.stack_runner.cfg, layers, rest, inputs, positions,
      (targets, weights), aux_weight=aux_coef)
  total = stats.loss + aux_coef * stats.aux
  return (total, (stats.loss, stats.head_stats, counts)), nnx.merge_state(d_layers, d_rest)
