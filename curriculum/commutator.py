"""Lie-bracket prediction of transfer order (arXiv 2606.24993) and an Adam-aware extension.

Training k SGD steps on source A then k on B, versus B then A, moves the parameters apart by
θ_AB − θ_BA = η²k² (H_B g_A − H_A g_B) + O(η³), the Lie bracket of the two gradient fields. For a
target E with gradient g_E the order effect on the target loss is

  L_E(θ_AB) − L_E(θ_BA) = η²k² σ_AB + O(η³),    σ_AB = ⟨g_E, H_B g_A − H_A g_B⟩,

so σ_AB < 0 means "train A first". By Hessian symmetry ⟨g_E, H_B g_A⟩ = ⟨u_B, g_A⟩ with
u_X = H_X g_E, which gives the O(N) tournament: N gradients and N Hessian-vector products rank N
sources by their Borda score (the negated row sum of the pairwise matrix).

Everything here is a function of a scalar `loss_fn(params, batch, ...)` over a parameter pytree
(a dict, an `nnx.State`, sharded or not); this module never sees a model. The functions are
planning-time utilities called from the host between train steps, so they may raise on bad input
(non-finite gradients) after looking at values.
"""

import functools
import itertools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
LossFn = Callable[..., jax.Array]

REFERENCES = ('theta0', 'trotter', 'midpoint')


def hvp(loss_fn: LossFn, params: Params, v: Params, *args) -> Params:
  """Hessian of `loss_fn(params, *args)` with respect to `params`, times `v` (forward-over-reverse).

  `v` has the structure of `params`. Costs about 2.5 gradients; sharded parameters stay sharded
  (the jvp follows the shardings of its inputs).
  """
  grad_fn = lambda p: jax.grad(loss_fn)(p, *args)
  return jax.jvp(grad_fn, (params,), (v,))[1]


def _axpy(a, x: Params, y: Params) -> Params:
  """a * x + y over pytrees."""
  return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


class _Oracle:
  """Jitted gradient and HVP of one loss, with the per-source input checks of the planners."""

  def __init__(self, loss_fn: LossFn):
    self.grad = jax.jit(jax.grad(loss_fn))
    self.hvp = jax.jit(lambda p, v, batch: hvp(loss_fn, p, v, batch))

  def checked_grad(self, params: Params, batch, name: str) -> Params:
    g = self.grad(params, batch)
    finite = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), g))
    if not bool(finite):
      raise ValueError(f'{name}: the loss gradient is not finite (NaN or inf)')
    return g


@functools.lru_cache(maxsize=16)
def _oracle(loss_fn: LossFn) -> _Oracle:
  """One compiled oracle per loss function, so repeated planning calls do not recompile."""
  return _Oracle(loss_fn)


def _check_batches(batches: Sequence[Any], names: Sequence[str]):
  """All batches share the tree structure, dtypes and per-example shapes of the first one."""

  def signature(batch):
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, [(jnp.result_type(x), np.shape(x)[1:]) for x in leaves]

  ref = signature(batches[0])
  for batch, name in zip(batches[1:], names[1:]):
    sig = signature(batch)
    if sig[0] != ref[0]:
      raise ValueError(f'{name} has tree structure {sig[0]}, but {names[0]} has {ref[0]}')
    if sig[1] != ref[1]:
      raise ValueError(f'{name} has leaves (dtype, per-example shape) {sig[1]}, but {names[0]} '
                       f'has {ref[1]}')


def bracket(loss_fn: LossFn, params: Params, batch_a, batch_b, batch_target, *,
            reference: str = 'theta0', lr: float = 0.0, steps: int = 1) -> float:
  """σ_AB = ⟨g_E, H_B g_A − H_A g_B⟩; negative means "train A first".

  `reference` says where the pieces are evaluated, with drift δ = lr·steps·(g_A + g_B) (the shared
  first-order displacement of both orders after `steps` steps per source):
    'theta0':   everything at `params` (the paper's Prop. 2.3, error O(η³)).
    'trotter':  g_E at θ0 − δ, the bracket at θ0 (Prop. 2.5, drift-matched, error O(η⁴)).
    'midpoint': the bracket re-evaluated at θ0 − δ/2 and g_E at θ0 − δ: what a planner that
                re-plans from the current parameters sees midway (not in the paper).
  Two HVPs with different vectors, computed directly (the tournament uses Hessian symmetry).
  """
  if reference not in REFERENCES:
    raise ValueError(f'reference={reference!r}; choose one of {REFERENCES}')
  if reference != 'theta0' and lr <= 0:
    raise ValueError(f'reference={reference!r} needs the learning rate: lr > 0, got {lr}')
  names = ('batch_a', 'batch_b', 'batch_target')
  _check_batches([batch_a, batch_b, batch_target], names)
  oracle = _oracle(loss_fn)
  g_a = oracle.checked_grad(params, batch_a, 'batch_a')
  g_b = oracle.checked_grad(params, batch_b, 'batch_b')
  drift = jax.tree.map(jnp.add, g_a, g_b)
  target_at, bracket_at = params, params
  if reference in ('trotter', 'midpoint'):
    target_at = _axpy(-lr * steps, drift, params)
  if reference == 'midpoint':
    bracket_at = _axpy(-0.5 * lr * steps, drift, params)
    g_a = oracle.checked_grad(bracket_at, batch_a, 'batch_a')
    g_b = oracle.checked_grad(bracket_at, batch_b, 'batch_b')
  g_e = oracle.checked_grad(target_at, batch_target, 'batch_target')
  b_ab = jax.tree.map(jnp.subtract, oracle.hvp(bracket_at, g_a, batch_b),
                      oracle.hvp(bracket_at, g_b, batch_a))
  return float(optax.tree_utils.tree_vdot(g_e, b_ab))


def _check_sources(source_batches: Sequence[Any], target_batch) -> list[str]:
  """Validates the planner's inputs; returns the sources' names for error messages."""
  if not source_batches:
    raise ValueError('source_batches is empty: give one batch per source')
  names = [f'source_batches[{i}]' for i in range(len(source_batches))]
  _check_batches(list(source_batches) + [target_batch], names + ['target_batch'])
  return names


def tournament(loss_fn: LossFn, params: Params, source_batches: Sequence[Any], target_batch, *,
               reference: str = 'theta0', lr: float = 0.0,
               steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Orders N sources by score_A = ⟨u_A, G⟩ − ⟨U, g_A⟩ (high first), with u_X = H_X g_E.

  G = Σ g_X and U = Σ u_X; score_A = −Σ_B σ_AB, the Borda score of the pairwise brackets, from N
  gradients, N HVPs (all with vector g_E) and 2N tree dot products: the N×N matrix is never built.
  `reference='trotter'` takes g_E at θ0 − lr·steps·G, the first-order endpoint that every order of
  the N phases shares (one more gradient; the pairwise analogue uses each pair's own drift).
  Returns `(order, scores)`: source indices best-first and the float64 [N] scores.
  """
  if reference not in ('theta0', 'trotter'):
    raise ValueError(f"reference={reference!r}; the tournament takes 'theta0' or 'trotter'")
  if reference == 'trotter' and lr <= 0:
    raise ValueError(f'reference={reference!r} needs the learning rate: lr > 0, got {lr}')
  names = _check_sources(source_batches, target_batch)
  oracle = _oracle(loss_fn)
  grads = [oracle.checked_grad(params, b, n) for b, n in zip(source_batches, names)]
  total_g = jax.tree.map(lambda *xs: sum(xs), *grads)
  target_at = params if reference == 'theta0' else _axpy(-lr * steps, total_g, params)
  g_e = oracle.checked_grad(target_at, target_batch, 'target_batch')
  target_hvps = [oracle.hvp(params, g_e, b) for b in source_batches]
  total_u = jax.tree.map(lambda *xs: sum(xs), *target_hvps)
  vdot = optax.tree_utils.tree_vdot
  scores = np.array([float(vdot(u, total_g)) - float(vdot(total_u, g))
                     for g, u in zip(grads, target_hvps)])
  return np.argsort(-scores, kind='stable'), scores


def pairwise_matrix(loss_fn: LossFn, params: Params, source_batches: Sequence[Any], target_batch,
                    **bracket_kwargs) -> np.ndarray:
  """The antisymmetric [N, N] matrix σ_ij = bracket(source i, source j), for small N.

  Each entry is computed directly by `bracket` (two HVPs per unordered pair), so it is an
  independent check of `tournament`, and it allows the per-pair references of `bracket`.
  """
  _check_sources(source_batches, target_batch)
  n = len(source_batches)
  sigma = np.zeros((n, n))
  for i in range(n):
    for j in range(i + 1, n):
      sigma[i, j] = bracket(loss_fn, params, source_batches[i], source_batches[j], target_batch,
                            **bracket_kwargs)
      sigma[j, i] = -sigma[i, j]
  return sigma


def kemeny_order(sigma: np.ndarray) -> np.ndarray:
  """The order minimizing Σ_{i before j} σ_ij (the second-order order effect), by brute force."""
  n = sigma.shape[0]
  if n > 8:
    raise ValueError(f'kemeny_order is brute force over n! orders; n={n} > 8 sources')
  cost = lambda p: sum(sigma[p[a], p[b]] for a in range(n) for b in range(a + 1, n))
  return np.array(min(itertools.permutations(range(n)), key=cost))


# ----------------------------------------------------------------------------- Adam-aware bracket


class AdamHyper(NamedTuple):
  lr: float
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8


def adam_moments(opt_state) -> optax.ScaleByAdamState:
  """The `ScaleByAdamState` (count, mu, nu) inside an optax optimizer state (e.g. `optax.adam`)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(
      s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  if len(found) != 1:
    raise ValueError(f'opt_state must hold exactly one optax ScaleByAdamState, found {len(found)}')
  return found[0]


def _adam_phase(hyper: AdamHyper, state, grad: Params, offset: Params, steps: int):
  """`steps` Adam steps on the frozen gradient `grad + offset`: (displacement, final state)."""
  # eps_root keeps the jvp finite where v = 0 (parameters no example touches, e.g. unused
  # embedding rows): d√v/dv is infinite there and 0 · inf is NaN. 1e-30 does not change the map.
  scale = optax.scale_by_adam(hyper.b1, hyper.b2, hyper.eps, eps_root=1e-30)

  def step(carry, _):
    disp, st = carry
    update, st = scale.update(jax.tree.map(jnp.add, grad, offset), st)
    return (_axpy(-hyper.lr, update, disp), st), None

  zeros = jax.tree.map(jnp.zeros_like, grad)
  return jax.lax.scan(step, (zeros, state), length=steps)[0]


@functools.partial(jax.jit, static_argnames=('hyper', 'steps'))
def _adam_order(hyper: AdamHyper, steps: int, state, g_first: Params, g_second: Params):
  """Phase displacements of `steps` frozen-gradient Adam steps on each of two sources."""
  zeros = jax.tree.map(jnp.zeros_like, g_first)
  disp1, mid_state = _adam_phase(hyper, state, g_first, zeros, steps)
  return disp1, _adam_phase(hyper, mid_state, g_second, zeros, steps)[0]


@functools.partial(jax.jit, static_argnames=('hyper', 'steps'))
def _adam_order_response(hyper: AdamHyper, steps: int, state, g_first: Params, g_second: Params,
                         off_first: Params, off_second: Params) -> Params:
  """Total displacement of the two phases, to first order in constant gradient offsets."""

  def total(o1, o2):
    disp1, mid_state = _adam_phase(hyper, state, g_first, o1, steps)
    return jax.tree.map(jnp.add, disp1, _adam_phase(hyper, mid_state, g_second, o2, steps)[0])

  zeros = jax.tree.map(jnp.zeros_like, g_first)
  primal, tangent = jax.jvp(total, (zeros, zeros), (off_first, off_second))
  return jax.tree.map(jnp.add, primal, tangent)


def adam_bracket(loss_fn: LossFn, params: Params, opt_state, batch_a, batch_b, batch_target, *,
                 hyper: AdamHyper, steps: int = 1) -> float:
  """Predicted L_E(θ_AB) − L_E(θ_BA) under Adam from `opt_state`; negative means "train A first".

  Derivation. Adam acts on the augmented state s = (θ, m, v, t). Run `steps` steps on A then on B
  (AB) or the reverse (BA) with each source's gradient linearized at θ0: g_X(θ) = g_X + H_X(θ − θ0).
  Unlike SGD, the zeroth-order gradients alone already separate the orders: the moments (m, v)
  that enter phase two differ (A-adapted vs B-adapted), so the displacements differ at O(η), not
  O(η²) — the bracket of the plain parameter fields misses the leading term. We therefore expand
  in η around the frozen-gradient rollout R (the real optax `scale_by_adam` map iterated on g_A,
  g_B from the real (m, v, t)) and keep the O(η²) curvature feedback as a first-order response:
    Δ^AB = R_AB + J_R · (H_A Δ1^A / 2,  H_B (Δ1^A + Δ2^AB / 2)),
  where Δ1, Δ2 are the zeroth-order phase displacements and each phase's gradient offset is
  evaluated at its midpoint (one HVP per phase term, J_R by jax.jvp through the Adam map, so the
  δm and δv responses are exact). With x = Δ^AB, y = Δ^BA,
    L_E(θ0 + x) − L_E(θ0 + y) = ⟨∇L_E(θ0 + (x + y)/2), x − y⟩ + O(|x − y|·|x + y|²),
  one more target gradient at the midpoint. Neglected: within-phase curvature beyond the
  midpoint rule, and third-order terms (so the prediction degrades as η·steps grows).
  Cost: 3 gradients, 6 HVPs and 8·steps elementwise Adam updates (jitted per `hyper`, `steps`).
  """
  _check_batches([batch_a, batch_b, batch_target], ('batch_a', 'batch_b', 'batch_target'))
  if hyper.lr <= 0:
    raise ValueError(f'hyper.lr must be > 0, got {hyper.lr}')
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  state = adam_moments(opt_state)
  oracle = _oracle(loss_fn)
  g_a = oracle.checked_grad(params, batch_a, 'batch_a')
  g_b = oracle.checked_grad(params, batch_b, 'batch_b')

  def endpoint(g1, g2, batch1, batch2):
    disp1, disp2 = _adam_order(hyper, steps, state, g1, g2)
    off1 = jax.tree.map(lambda x: 0.5 * x, oracle.hvp(params, disp1, batch1))
    off2 = _axpy(0.5, oracle.hvp(params, disp2, batch2), oracle.hvp(params, disp1, batch2))
    return _adam_order_response(hyper, steps, state, g1, g2, off1, off2)

  x = endpoint(g_a, g_b, batch_a, batch_b)
  y = endpoint(g_b, g_a, batch_b, batch_a)
  midpoint = jax.tree.map(lambda p, xi, yi: p + 0.5 * (xi + yi), params, x, y)
  g_e = oracle.checked_grad(midpoint, batch_target, 'batch_target')
  return float(optax.tree_utils.tree_vdot(g_e, jax.tree.map(jnp.subtract, x, y)))
