"""The jitted train step: curriculum picks -> gather -> loss with per-example statistics ->
optimizer -> curriculum update. Nothing in it goes back to the host."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from curriculum.api import Curriculum, Feedback
from data.text import PAD
from parallel.sharding import constrain, logical_to_spec


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token negative log-likelihood [B, T] and its mask (PAD targets do not count)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  mask = (targets != PAD).astype(jnp.float32)
  return nll * mask, mask


def lm_loss(model, tokens: jax.Array, aux_coef: float):
  """Token-weighted mean loss (+ auxiliary loss) and per-example statistics for the curriculum."""
  tokens = constrain(tokens, ('act_batch', None))
  logits, aux = model(tokens[:, :-1])
  nll, mask = token_nll(logits, tokens[:, 1:])
  counts = mask.sum(-1)
  loss = nll.sum() / jnp.maximum(counts.sum(), 1.0)
  per_example = nll.sum(-1) / jnp.maximum(counts, 1.0)
  return loss + aux_coef * aux, (loss, per_example, counts)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def make_update(graphdef, curriculum: Curriculum, aux_coef: float) -> Callable:
  """(state, cstate, idx, tokens) -> (state, cstate, metrics): one optimizer step on a batch."""

  def update(state, cstate, idx, tokens):
    model, opt = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(lambda m: lm_loss(m, tokens, aux_coef), has_aux=True)
    (_, (loss, per_example, counts)), grads = grad_fn(model)
    opt.update(model, grads)  # optax.apply_if_finite skips non-finite gradients
    finite = jnp.isfinite(loss) & _all_finite(grads)
    # A bad step must not poison the curriculum's statistics either.
    updated = curriculum.update(cstate, idx, Feedback(loss=per_example, tokens=counts))
    cstate = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, cstate)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), 'tokens': counts.sum(),
               'nonfinite_streak': opt.opt_state.notfinite_count[...]}
    return nnx.state((model, opt)), cstate, metrics

  return update


def make_pool_step(graphdef, curriculum: Curriculum, aux_coef: float) -> Callable:
  """The step of a device-resident pool: indices and gather happen inside the step."""
  update = make_update(graphdef, curriculum, aux_coef)

  def step(state, cstate, pool):
    idx, cstate = curriculum.next_batch(cstate)
    return update(state, cstate, idx, pool.gather(idx)['tokens'])

  return step


def jit_pool_step(graphdef, curriculum, aux_coef, state_shardings, c_shardings, pool, mesh):
  """The pool step jitted with its shardings; state and curriculum state are donated."""
  rep = NamedSharding(mesh, P())
  return jax.jit(make_pool_step(graphdef, curriculum, aux_coef),
                 in_shardings=(state_shardings, c_shardings, replicated(mesh, pool)),
                 out_shardings=(state_shardings, c_shardings, rep), donate_argnums=(0, 1))


def make_stream_step(graphdef, curriculum: Curriculum, aux_coef: float) -> Callable:
  """The streaming step: trains on the host-read batch of `idx` and returns the next indices,
  computed from the updated curriculum state, so the host can read them one step ahead."""
  update = make_update(graphdef, curriculum, aux_coef)

  def step(state, cstate, idx, tokens):
    state, cstate, metrics = update(state, cstate, idx, tokens)
    next_idx, cstate = curriculum.next_batch(cstate)
    return state, cstate, metrics, next_idx

  return step


def make_eval_step(graphdef) -> Callable:
  """(state, tokens) -> (sum of token NLL, number of tokens) on a held-out batch."""

  def eval_step(state, tokens):
    model, _ = nnx.merge(graphdef, state)
    tokens = constrain(tokens, ('act_batch', None))
    logits, _ = model(tokens[:, :-1])
    nll, mask = token_nll(logits, tokens[:, 1:])
    return nll.sum(), mask.sum()

  return eval_step


def replicated(mesh, tree):
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def batch_sharding(mesh, rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(('act_batch', None), rules, dict(mesh.shape)))
