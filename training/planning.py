"""The tournament curriculum: the Lie-bracket planner orders the phases of a `phased` curriculum.

`curriculum.kind='tournament'` trains `steps_per_source` steps per source like `phased`, but the
order of the sources comes from `curriculum.commutator.tournament` on the model's own loss: one
batch per source from the training pool, the target a batch of the held-out split (the mixture of
all configured corpora). The plan is made before the first step and, if
`curriculum.replan_every = P > 0`, again every P steps from the current parameters: sources
already trained in the current cycle keep their places, the rest are re-ranked among themselves.
The order lives in `PhasedState.order`, so it is checkpointed and a resumed run keeps its plan.

The trainer calls `make_planner(...)` once and then `planner(state, cstate, step)` at step 0 of a
fresh run and whenever `planner.due(step)`; both run on the host between jitted steps.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from curriculum import commutator
from curriculum.api import PhasedState
from parallel.sharding import use_rules
from training import step as step_lib


def replanned_order(order: np.ndarray, position: int, rank_remaining: Callable) -> np.ndarray:
  """Keeps `order[:position]`, re-orders the rest by `rank_remaining(sources) -> permutation`."""
  order = np.asarray(order)
  remaining = order[position:]
  if len(remaining) < 2:
    return order
  return np.concatenate([order[:position], remaining[rank_remaining(remaining)]]).astype(np.int32)


class Planner:
  """Re-plans the source order of a `PhasedState` from the trainer's current model state."""

  def __init__(self, config, graphdef, read_rows: Callable[[np.ndarray], np.ndarray],
               source: np.ndarray, target_tokens: np.ndarray, mesh, rules):
    c = config.curriculum
    self.steps_per_source, self.replan_every = c.steps_per_source, c.replan_every
    self.batch_size, self.seed = c.plan_batch_size, c.seed
    self.graphdef, self.read_rows, self.mesh, self.rules = graphdef, read_rows, mesh, rules
    self.source = np.asarray(source)
    self.num_sources = int(self.source.max()) + 1
    self.aux_coef = config.optim.aux_loss_coef
    rng = np.random.default_rng(self.seed)
    take = min(len(target_tokens), self.batch_size * self.num_sources)
    self.target = np.asarray(target_tokens)[rng.choice(len(target_tokens), take, replace=False)]
    self._loss_fn = None

  def due(self, step: int) -> bool:
    return self.replan_every > 0 and step > 0 and step % self.replan_every == 0

  def loss_fn_and_params(self, state):
    """The mean token loss as a function of the model's parameters, and those parameters."""
    model, _ = nnx.merge(self.graphdef, state)
    model_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if self._loss_fn is None:  # one function object, so the planner's jit cache is reused

      def loss_fn(p, tokens):
        return step_lib.lm_loss(nnx.merge(model_graphdef, p, rest), tokens, self.aux_coef)[0]

      self._loss_fn = loss_fn
    return self._loss_fn, params

  def source_batches(self, sources: np.ndarray, step: int) -> list[np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    batches = []
    for s in sources:
      members = np.flatnonzero(self.source == s)
      draw = rng.choice(members, self.batch_size, replace=len(members) < self.batch_size)
      batches.append(self.read_rows(np.sort(draw)))
    return batches

  def __call__(self, state, cstate: PhasedState, step: int) -> PhasedState:
    position = (step // self.steps_per_source) % self.num_sources
    with jax.set_mesh(self.mesh), use_rules(self.rules):
      loss_fn, params = self.loss_fn_and_params(state)

      def rank(sources):
        order, _ = commutator.tournament(loss_fn, params, self.source_batches(sources, step),
                                         jnp.asarray(self.target))
        return order

      new = replanned_order(np.asarray(jax.device_get(cstate.order)), position, rank)
    return cstate._replace(order=jax.device_put(jnp.asarray(new, jnp.int32),
                                                cstate.order.sharding))


def validate(config, mesh):
  """Rejects contradictory tournament settings, naming the key."""
  c = config.curriculum
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if c.plan_batch_size < 1 or c.plan_batch_size % shards:
    raise ValueError(f'curriculum.plan_batch_size={c.plan_batch_size} must be a positive multiple '
                     f'of the {shards} batch shards (parallel.data x parallel.fsdp)')
  if c.replan_every < 0 or c.replan_every % c.steps_per_source:
    raise ValueError(f'curriculum.replan_every={c.replan_every} must be 0 (plan once) or a '
                     f'multiple of curriculum.steps_per_source={c.steps_per_source}, so that '
                     're-plans fall on phase boundaries')


def make_planner(config, graphdef, pool, stream, eval_pool, mesh, rules) -> Optional[Planner]:
  """The planner of `curriculum.kind='tournament'`, or None for every other kind."""
  if config.curriculum.kind != 'tournament':
    return None
  validate(config, mesh)
  if stream is None:
    tokens = np.asarray(pool.tokens)
    read_rows = lambda idx: tokens[idx]
  else:
    read_rows = lambda idx: stream.read(idx)['tokens']
  return Planner(config, graphdef, read_rows, np.asarray(pool.source),
                 np.asarray(eval_pool.tokens), mesh, rules)
