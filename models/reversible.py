"""RevFFN: a two-stream reversible stack over pretrained decoder blocks (METHODS.md section 4).

The hidden state [B, T, d] splits along features into two float32 streams X1, X2 of width d/2.
Each layer couples them as

  Y1 = X1 + F(X1, X2),  F = P_down_a Attn(q = Norm(P_up_a X1), kv = Norm(P_up_a X2))
  Y2 = X2 + G(Y1),      G = P_down_m FFN(Norm(P_up_m Y1))   (the MoE, or SwiGLU for a dense model)

where the projection adapters P_up (d/2 -> d) and P_down (d -> d/2) let the pretrained full-width
attention, norms, router and experts run unchanged. With `coupling='explicit'` (the default,
MEFT/RevNet-style additive coupling) the queries come from X2 as well, so F does not depend on X1
and the inverse is exact: X2 = Y2 - G(Y1), X1 = Y1 - F(X2). With `coupling='implicit'` (the
paper's cross-stream attention) X1 is recovered by the fixed-point iteration X1 <- Y1 - F(X1, X2),
which must converge within `fixed_point_max_iters` to `fixed_point_tol` or the step fails.

One `jax.custom_vjp` wraps the whole scanned stack: the forward keeps only the last outputs and the
expert ids each layer chose (int32, k per token); the backward walks the layers in reverse with
`lax.scan(reverse=True)`, reconstructs each layer's inputs and chains the VJPs, taking the inverse
value and the pullback from the same `jax.vjp`. Replayed expert ids make the recomputation route
exactly as the forward did; the gate softmax is recomputed, so the router receives its gradient,
load-balance loss included. Activation memory is then one layer's internals, flat in depth.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.moe import MoEBlock, MoEConfig
from models.transformer import DTYPES, Block, Decoder, DecoderConfig

COUPLINGS = ('explicit', 'implicit')
BACKPROPS = ('reversible', 'autodiff', 'remat')
ADAPTER_NAMES = ('attn_up', 'attn_down', 'ffn_up', 'ffn_down')


@dataclasses.dataclass(frozen=True)
class ReversibleConfig:
  coupling: str = 'explicit'  # explicit: exact inverse; implicit: queries from X1, fixed point
  backprop: str = 'reversible'  # reversible (custom_vjp) | autodiff | remat: same function
  fixed_point_tol: float = 1e-6  # max |change| / max |X1| at which the iteration stops
  fixed_point_max_iters: int = 50

  def __post_init__(self):
    if self.coupling not in COUPLINGS:
      raise ValueError(f'reversible.coupling={self.coupling!r}; choose one of {COUPLINGS}')
    if self.backprop not in BACKPROPS:
      raise ValueError(f'reversible.backprop={self.backprop!r}; choose one of {BACKPROPS}')
    if self.fixed_point_tol <= 0 or self.fixed_point_max_iters < 1:
      raise ValueError('reversible.fixed_point_tol must be > 0 and '
                       'reversible.fixed_point_max_iters >= 1, got '
                       f'{self.fixed_point_tol}, {self.fixed_point_max_iters}')


class Adapter(nnx.Param):
  """A projection adapter: the only parameters stage 1 of the conversion trains."""


def stream_width(cfg: DecoderConfig) -> int:
  if cfg.d_model % 2:
    raise ValueError(f'model.d_model={cfg.d_model} cannot split into two reversible streams of '
                     'width d/2: it must be even')
  return cfg.d_model // 2


def placement(rows: int, cols: int, offset: int) -> jax.Array:
  """A 0/1 matrix copying a width-min(rows, cols) block to or from features [offset, offset+w)."""
  eye = np.zeros((rows, cols), np.float32)
  width = min(rows, cols)
  if rows < cols:
    eye[:, offset:offset + width] = np.eye(width)
  else:
    eye[offset:offset + width, :] = np.eye(width)
  return jnp.asarray(eye)


class RevBlock(nnx.Module):
  """A pretrained block (dense or MoE) re-wired as one reversible coupling layer.

  The adapters start as placements: P_up_a writes a stream into the upper half of the features,
  P_down_a reads the lower half of the attention output into X1, P_up_m writes Y1 into the lower
  half and P_down_m reads the upper half of the FFN output into X2, so the embedding's two halves
  keep their meaning. Stage 1 of the conversion trains them to recover the pretrained function.
  """

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, rev: ReversibleConfig):
    half, d = stream_width(cfg), cfg.d_model
    self.block = MoEBlock(cfg, rngs) if isinstance(cfg, MoEConfig) else Block(cfg, rngs)
    self.attn_up = Adapter(placement(half, d, half), out_sharding=('stream', 'embed'))
    self.attn_down = Adapter(placement(d, half, 0), out_sharding=('embed', 'stream'))
    self.ffn_up = Adapter(placement(half, d, 0), out_sharding=('stream', 'embed'))
    self.ffn_down = Adapter(placement(d, half, half), out_sharding=('embed', 'stream'))
    self.cfg, self.rev = cfg, rev

  def _project(self, x, adapter):
    dt = DTYPES[self.cfg.dtype]
    return x.astype(dt) @ adapter[...].astype(dt)

  def attention_branch(self, x1, x2, positions):
    """F(X1, X2) in float32; X1 is ignored by the explicit coupling."""
    norm = self.block.attn_norm
    kv = norm(self._project(x2, self.attn_up))
    q = kv if self.rev.coupling == 'explicit' else norm(self._project(x1, self.attn_up))
    return self._project(self.block.attn(q, kv, positions), self.attn_down).astype(jnp.float32)

  def ffn_branch(self, y1, expert_ids=None):
    """G(Y1) in float32, its aux loss, and the expert ids [N, k] used ([N, 0] for a dense FFN)."""
    h = self.block.ffn_norm(self._project(y1, self.ffn_up))
    if isinstance(self.cfg, MoEConfig):
      flat = h.reshape(-1, h.shape[-1])
      routing = self.block.ffn.route(flat, expert_ids)
      out = self.block.ffn.experts(flat, routing).reshape(h.shape)
      aux, expert_ids = routing.aux, routing.expert_ids
    else:
      out, aux = self.block.ffn(h), jnp.zeros((), jnp.float32)
      expert_ids = jnp.zeros((y1.shape[0] * y1.shape[1], 0), jnp.int32)
    return self._project(out, self.ffn_down).astype(jnp.float32), aux, expert_ids


def forward_layer(graphdef, layer_state, x1, x2, positions):
  block = nnx.merge(graphdef, layer_state)
  y1 = x1 + block.attention_branch(x1, x2, positions)
  g, aux, expert_ids = block.ffn_branch(y1)
  return y1, x2 + g, aux, expert_ids


def _forward_scan(graphdef, stacked_state, x1, x2, positions, remat=False):
  """The stack as an ordinary scan: the autodiff (and, with `remat`, checkpointed) reference."""

  def body(carry, layer_state):
    x1, x2 = carry
    y1, y2, aux, expert_ids = forward_layer(graphdef, layer_state, x1, x2, positions)
    return (y1, y2), (aux, expert_ids)

  if remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
  (y1, y2), (aux, expert_ids) = jax.lax.scan(body, (x1, x2), stacked_state)
  return y1, y2, jnp.sum(aux), expert_ids


class FixedPointError(RuntimeError):
  pass


def _raise_not_converged(residual, iters):
  raise FixedPointError(
      f'reversible: the implicit inverse X1 <- Y1 - F(X1, X2) did not converge: relative residual '
      f'{float(residual):.3e} after {int(iters)} iterations (reversible.fixed_point_tol, '
      'reversible.fixed_point_max_iters); refusing to return wrong gradients')


def _fixed_point(step, x0, rev: ReversibleConfig):
  """x = step(x) from x0; NaN and a host-side error if the cap is hit before the tolerance."""

  def cond(carry):
    i, _, residual = carry
    return (i < rev.fixed_point_max_iters) & (residual > rev.fixed_point_tol)

  def body(carry):
    i, x, _ = carry
    new = step(x)
    residual = jnp.max(jnp.abs(new - x)) / jnp.maximum(jnp.max(jnp.abs(new)), 1e-30)
    return i + 1, new, residual

  iters, x, residual = jax.lax.while_loop(cond, body, (0, x0, jnp.float32(jnp.inf)))
  converged = residual <= rev.fixed_point_tol
  # The callback only runs on failure, so a converging step never talks to the host.
  jax.lax.cond(converged, lambda: None,
               lambda: jax.debug.callback(_raise_not_converged, residual, iters))
  return jnp.where(converged, x, jnp.nan)


def invert_ffn(graphdef, layer_state, y1, y2, expert_ids):
  """X2 = Y2 - G(Y1) with the pullback of G at Y1 (cotangents (dY2, d aux) -> (dparams, dY1))."""

  def g(p, y1):
    out, aux, _ = nnx.merge(graphdef, p).ffn_branch(y1, expert_ids)
    return out, aux

  (g_val, _), g_pullback = jax.vjp(g, layer_state, y1)
  return y2 - g_val, g_pullback


def invert_attention(graphdef, rev, layer_state, y1, x2, positions):
  """X1 from Y1 = X1 + F(X1, X2) with the pullback of F at (X1, X2)."""

  def f(p, x1, x2):
    return nnx.merge(graphdef, p).attention_branch(x1, x2, positions)

  x1_guess = y1  # the explicit coupling ignores it
  if rev.coupling == 'implicit':
    x1_guess = _fixed_point(lambda x1: y1 - f(layer_state, x1, x2), y1, rev)
  f_val, f_pullback = jax.vjp(f, layer_state, x1_guess, x2)
  return y1 - f_val, f_pullback


def invert_layer(graphdef, rev, layer_state, y1, y2, expert_ids, positions):
  """A layer's inputs (X1, X2) from its outputs and the expert ids its forward chose."""
  x2, _ = invert_ffn(graphdef, layer_state, y1, y2, expert_ids)
  x1, _ = invert_attention(graphdef, rev, layer_state, y1, x2, positions)
  return x1, x2


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _reversible_scan(graphdef, rev, stacked_state, x1, x2, positions):
  y1, y2, aux, _ = _forward_scan(graphdef, stacked_state, x1, x2, positions)
  return y1, y2, aux


def _reversible_fwd(graphdef, rev, stacked_state, x1, x2, positions):
  y1, y2, aux, expert_ids = _forward_scan(graphdef, stacked_state, x1, x2, positions)
  return (y1, y2, aux), (stacked_state, y1, y2, expert_ids, positions)


def _reversible_bwd(graphdef, rev, residuals, cotangents):
  stacked_state, y1, y2, expert_ids, positions = residuals
  a1, a2, a_aux = cotangents

  def body(carry, layer):
    y1, y2, a1, a2 = carry
    layer_state, layer_ids = layer
    # G's backward runs before F's recompute, so only one branch's internals are live at a time.
    x2, g_pullback = invert_ffn(graphdef, layer_state, y1, y2, layer_ids)
    # The stack's aux output is the sum over layers, so every layer's aux gets the same cotangent.
    dp_g, dy1 = g_pullback((a2, a_aux))
    a1 = a1 + dy1
    x1, f_pullback = invert_attention(graphdef, rev, layer_state, y1, x2, positions)
    dp_f, dx1, dx2 = f_pullback(a1)
    grads = jax.tree.map(jnp.add, dp_f, dp_g)
    return (x1, x2, a1 + dx1, a2 + dx2), grads

  (_, _, a1, a2), grads = jax.lax.scan(body, (y1, y2, a1, a2), (stacked_state, expert_ids),
                                       reverse=True)
  return grads, a1, a2, None


_reversible_scan.defvjp(_reversible_fwd, _reversible_bwd)


def run_streams(graphdef, stacked_state, x1, x2, positions, rev: ReversibleConfig):
  """(Y1, Y2, summed aux) of the stack, differentiated as `rev.backprop` says."""
  if rev.backprop == 'reversible':
    return _reversible_scan(graphdef, rev, stacked_state, x1, x2, positions)
  y1, y2, aux, _ = _forward_scan(graphdef, stacked_state, x1, x2, positions,
                                 remat=rev.backprop == 'remat')
  return y1, y2, aux


def split_streams(x, cfg: DecoderConfig):
  half = stream_width(cfg)
  return x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)


class ReversibleDecoder(Decoder):
  """The decoder with `RevBlock` layers; `run_layers` splits the embedding into two float32
  streams, runs the reversible stack and joins the streams again before the final norm."""

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs,
               rev: ReversibleConfig = ReversibleConfig()):
    stream_width(cfg)
    super().__init__(cfg, rngs, block_factory=functools.partial(RevBlock, rev=rev))
    self.rev = rev

  def run_layers(self, x, positions):
    graphdef, state = nnx.split(self.layers)
    y1, y2, aux = run_streams(graphdef, state, *split_streams(x, self.cfg), positions, self.rev)
    return jnp.concatenate([y1, y2], axis=-1).astype(x.dtype), aux


def to_reversible(model: Decoder, rev: ReversibleConfig = ReversibleConfig()) -> ReversibleDecoder:
  """A `ReversibleDecoder` holding a copy of `model`'s trained weights and placement adapters."""
  converted = ReversibleDecoder(model.cfg, nnx.Rngs(0), rev)
  for name in ('embed', 'unembed'):
    getattr(converted, name)[...] = getattr(model, name)[...]
  nnx.update(converted.final_norm, nnx.state(model.final_norm))
  nnx.update(converted.layers.block, nnx.state(model.layers))
  return converted


def is_adapter_path(path) -> bool:
  return any(getattr(key, 'key', None) in ADAPTER_NAMES for key in path)


class TwoStageState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def two_stage(tx: optax.GradientTransformation, stage1_steps: int) -> optax.GradientTransformation:
  """RevFFN's schedule: for the first `stage1_steps` updates only the adapters move (the backbone's
  gradients and updates are zeroed, so its Adam moments stay empty); afterwards all parameters."""

  def freeze(updates, in_stage1):
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u if is_adapter_path(path) else jnp.where(in_stage1, 0, u).astype(u.dtype),
        updates)

  def init(params):
    return TwoStageState(jnp.zeros((), jnp.int32), tx.init(params))

  def update(updates, state, params=None):
    in_stage1 = state.count < stage1_steps
    updates, inner = tx.update(freeze(updates, in_stage1), state.inner, params)
    return freeze(updates, in_stage1), TwoStageState(state.count + 1, inner)

  return optax.GradientTransformation(init, update)
