"""Losses through the 1F1B pipeline schedule, whose backward runs inside the schedule.

`value_and_grad` splits an nnx model into the decoder's stacked layers, which the stages run, and
everything around them: the embedding the first stage applies to each microbatch (and
differentiates in its backward) and the head the last stage applies. `lm_value_and_grad` is the
decoder LM's loss this way; its value and gradients are those of `nnx.value_and_grad` over
`step.lm_loss`. The multimodal model's caption loss uses `value_and_grad` with the vision encoder
in its embedding (training/multimodal.py).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from data.text import PAD
from parallel import pipeline
from parallel.sharding import constrain
from training import step as step_lib


def uses_1f1b(decoder) -> bool:
  runner = getattr(decoder, 'stack_runner', None)
  return isinstance(runner, pipeline.StackRunner) and runner.cfg.schedule == '1f1b'


def value_and_grad(model, decoder_path: tuple[str, ...], embed_fn: Callable, head_fn: Callable,
                   inputs, extras, head_inputs, aux_coef: float) -> tuple[pipeline.Stats, Any]:
  """Stats and gradients (an nnx.State of `model`) of the pipelined loss
  `sum_m head_fn(model, stack(embed_fn(model, inputs_m)), head_inputs_m)[0] + aux_coef * aux`.

  `decoder_path` names the attributes from `model` to the decoder whose `layers` the stages run
  (`stack_runner.cfg` is the schedule); embed_fn and head_fn get the model with those layers
  abstract, so they can use everything else. Batch arguments as in `pipeline.loss_and_grads`.
  """
  decoder = functools.reduce(getattr, decoder_path, model)
  stack_path = (*decoder_path, 'layers')
  graphdef, layers, rest = nnx.split(model, lambda path, _: path[:len(stack_path)] == stack_path,
                                     ...)
  layer_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), layers)
  around = lambda rest: nnx.merge(graphdef, layer_shapes, rest)
  stats, (d_layers, d_rest) = pipeline.loss_and_grads(
      pipeline.nnx_layer_fn(nnx.split(decoder.layers)[0]),
      lambda rest, inputs: embed_fn(around(rest), inputs),
      lambda rest, y, head_inputs: head_fn(around(rest), y, head_inputs),
      decoder.stack_runner.cfg, layers, rest, inputs, extras, head_inputs, aux_weight=aux_coef)
  return stats, nnx.merge_state(d_layers, d_rest)


def lm_value_and_grad(model, tokens: jax.Array, aux_coef: float):
  """((loss + aux_coef * aux, (loss, per_example, counts)), grads), as step.lm_loss's gradient."""
  tokens = constrain(tokens, ('act_batch', None))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  mask = (targets != PAD).astype(jnp.float32)
  counts = mask.sum(-1)
  # Each example's share of the token-weighted mean, so microbatch losses simply add up.
  weights = jnp.broadcast_to(1.0 / jnp.maximum(counts.sum(), 1.0), counts.shape)

  def head_fn(m, y, head_inputs):
    targets, weights = head_inputs
    nll, mask = step_lib.token_nll(m.logits(m.final_norm(y)), targets)
    per_example = nll.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return jnp.sum(nll.sum(-1) * weights), per_example

  positions = jnp.broadcast_to(jnp.arange(inputs.shape[-1]), inputs.shape)
  stats, grads = value_and_grad(model, (), lambda m, inputs: m.embed_tokens(inputs), head_fn,
                                inputs, positions, (targets, weights), aux_coef)
  total = stats.loss + aux_coef * stats.aux
  return (total, (stats.loss, stats.head_stats, counts)), grads
