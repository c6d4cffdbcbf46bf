"""Reference-model loss: a per-example score computed with Paceline's own model.

A model trained on clean reference data scores every row of a pool by its mean token loss, in one
jitted forward pass per batch. As a quality score use its negation (higher = more like the
reference data); as a difficulty score use it as it is. `data/` cannot compute this itself (it knows
no model), so it lives here, next to the train step whose loss it shares.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data import scores as scores_lib
from data.text import PAD
from training.step import token_nll


def _batch_loss(graphdef, params, tokens):
  model = nnx.merge(graphdef, params)
  logits, _ = model(tokens[:, :-1])
  nll, mask = token_nll(logits, tokens[:, 1:])
  return nll.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def reference_loss(model: nnx.Module, tokens, batch_size: int = 64) -> np.ndarray:
  """Mean token loss [N] of each row of `tokens` [N, T+1] (PAD targets excluded)."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f'tokens must be [examples, length >= 2], got shape {tokens.shape}')
  graphdef, params = nnx.split(model)
  loss_fn = jax.jit(lambda p, t: _batch_loss(graphdef, p, t))
  n = tokens.shape[0]
  # Pad to whole batches so that every call has one shape and compiles once.
  padded = np.full((-(-n // batch_size) * batch_size, tokens.shape[1]), PAD, np.int32)
  padded[:n] = tokens
  out = [loss_fn(params, padded[i:i + batch_size]) for i in range(0, len(padded), batch_size)]
  return np.asarray(jax.device_get(jnp.concatenate(out)))[:n].astype(np.float64)


def reference_loss_scores(model: nnx.Module, tokens, cache_dir: Optional[str],
                          batch_size: int = 64) -> np.ndarray:
  """`reference_loss`, cached beside the dataset under a hash of the tokens and the weights."""
  if cache_dir is None:
    return reference_loss(model, tokens, batch_size)
  weights = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  return scores_lib.cached(cache_dir, 'refloss', lambda: reference_loss(model, tokens, batch_size),
                           np.asarray(tokens), *weights)
