"""The curriculum interface and the simple curricula: uniform, ordered, phased.

A curriculum is a pair of pure functions over a pytree of arrays, in the style of optax's
`GradientTransformation`: `next_batch` says which pool rows the step trains on, `update` folds the
step's per-example statistics back into the state. Both run inside the jitted train step, so a
curriculum must be jittable, deterministic given its key and free of host callbacks; its state is
saved in every checkpoint, so a resumed run draws exactly the indices an uninterrupted run draws.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

CurriculumState = Any  # a pytree of arrays


class Feedback(NamedTuple):
  """Per-example statistics of one step, all device arrays with a leading [batch] axis."""

  loss: jax.Array  # mean token loss of each example
  tokens: jax.Array  # number of target tokens that entered the loss
  reward: Optional[jax.Array] = None  # RL: mean reward over the group of completions
  correct: Optional[jax.Array] = None  # RL: [batch, group] 0/1 verifier outcomes


class Curriculum(NamedTuple):
  init: Callable[[jax.Array], CurriculumState]
  next_batch: Callable[[CurriculumState], tuple[jax.Array, CurriculumState]]
  update: Callable[[CurriculumState, jax.Array, Feedback], CurriculumState]


def _no_update(state, idx, feedback):
  del idx, feedback
  return state


def _check_sizes(pool_size: int, batch_size: int):
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if pool_size < batch_size:
    raise ValueError(f'pool of {pool_size} examples is smaller than one batch of {batch_size}')


class UniformState(NamedTuple):
  key: jax.Array  # fixed for the run; each epoch's permutation is derived from it
  epoch: jax.Array  # int32
  offset: jax.Array  # int32, position within the current epoch's permutation
  perm: jax.Array  # int32 [pool_size], the current epoch's order


def uniform(pool_size: int, batch_size: int) -> Curriculum:
  """Uniform sampling without replacement within an epoch; batches may straddle two epochs."""
  _check_sizes(pool_size, batch_size)

  def epoch_perm(key, epoch):
    return jax.random.permutation(jax.random.fold_in(key, epoch), pool_size).astype(jnp.int32)

  def init(key):
    return UniformState(key, jnp.int32(0), jnp.int32(0), epoch_perm(key, 0))

  def next_batch(state):
    pos = state.offset + jnp.arange(batch_size, dtype=jnp.int32)
    crosses = state.offset + batch_size > pool_size
    # The next epoch's permutation is built only on the step that reaches it.
    nxt = jax.lax.cond(crosses, lambda: epoch_perm(state.key, state.epoch + 1), lambda: state.perm)
    idx = jnp.where(pos < pool_size, state.perm[jnp.minimum(pos, pool_size - 1)],
                    nxt[jnp.maximum(pos - pool_size, 0)])
    offset = state.offset + batch_size
    wrapped = offset >= pool_size
    new = UniformState(state.key, state.epoch + wrapped.astype(jnp.int32),
                       jnp.where(wrapped, offset - pool_size, offset),
                       jnp.where(wrapped, nxt, state.perm))
    return idx, new

  return Curriculum(init, next_batch, _no_update)


class OrderedState(NamedTuple):
  cursor: jax.Array  # int32, examples consumed so far (mod the pool size)


def ordered(permutation, batch_size: int) -> Curriculum:
  """One pass over the pool in a fixed order (e.g. from `curriculum.ordering`), then again."""
  perm = np.asarray(permutation)
  n = perm.shape[0]
  _check_sizes(n, batch_size)
  if not np.array_equal(np.sort(perm), np.arange(n)):
    raise ValueError(f'ordered: permutation must be a permutation of range({n})')
  perm = jnp.asarray(perm, jnp.int32)

  def init(key):
    del key
    return OrderedState(jnp.int32(0))

  def next_batch(state):
    idx = perm[(state.cursor + jnp.arange(batch_size, dtype=jnp.int32)) % n]
    return idx, OrderedState((state.cursor + batch_size) % n)

  return Curriculum(init, next_batch, _no_update)


class PhasedState(NamedTuple):
  key: jax.Array
  step: jax.Array  # int32, batches drawn so far
  order: jax.Array  # int32 [num_sources], the planned source order (re-plannable)


def source_table(source: np.ndarray, num_sources: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads the member lists of each source into a static [num_sources, max_members] table."""
  source = np.asarray(source)
  members = [np.flatnonzero(source == s) for s in range(num_sources)]
  empty = [s for s, m in enumerate(members) if m.size == 0]
  if empty:
    raise ValueError(f'source(s) {empty} have no examples in the pool')
  width = max(m.size for m in members)
  table = np.stack([np.pad(m, (0, width - m.size), mode='edge') for m in members])
  return table.astype(np.int32), np.array([m.size for m in members], np.int32)


def phased(source: np.ndarray, source_order, steps_per_source: int, batch_size: int) -> Curriculum:
  """Trains `steps_per_source` steps on each source in `source_order`, then cycles the plan.

  Within a phase, examples of the source are drawn uniformly (with replacement across steps).
  The order lives in the state so that a planner may replace it mid-run.
  """
  order0 = np.asarray(source_order, np.int32)
  num_sources = int(np.max(source)) + 1
  if steps_per_source < 1:
    raise ValueError(f'steps_per_source must be >= 1, got {steps_per_source}')
  if sorted(order0.tolist()) != list(range(num_sources)):
    raise ValueError(f'source_order {order0.tolist()} is not a permutation of the '
                     f'{num_sources} sources')
  table, counts = (jnp.asarray(a) for a in source_table(source, num_sources))

  def init(key):
    return PhasedState(key, jnp.int32(0), jnp.asarray(order0))

  def next_batch(state):
    phase = (state.step // steps_per_source) % num_sources
    src = state.order[phase]
    key = jax.random.fold_in(state.key, state.step)
    col = jax.random.randint(key, (batch_size,), 0, counts[src])
    return table[src, col], state._replace(step=state.step + 1)

  return Curriculum(init, next_batch, _no_update)
