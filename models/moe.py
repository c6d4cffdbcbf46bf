"""Mixture-of-experts FFN: float32 top-k router, dropless sort/segment dispatch, load-balance loss.

Tokens are flattened to N rows and each of their k expert assignments becomes one row of a list
sorted by expert id, so every expert's tokens form one contiguous segment. The dropless path runs
the expert SwiGLU over those segments with `lax.ragged_dot` (no token is ever dropped); the
capacity path scatters the first `capacity` rows of each segment into an [experts, capacity, d]
buffer (GShard-style, overflow dropped) and runs a batched einsum. Expert parameters carry the
`expert` logical axis, which the sharding rules map to the `expert` mesh axis.

Routing is split from the expert computation (`route`, `experts`) so that a recomputation can
replay cached expert ids while the gate softmax, and with it the router gradient, is recomputed.
"""

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from models.transformer import DTYPES, Block, DecoderConfig, param
from parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class MoEConfig(DecoderConfig):
  num_experts: int = 8
  top_k: int = 2
  capacity_factor: float = 0.0  # 0: dropless; > 0: each expert takes ceil(cf * N * k / E) rows

  def __post_init__(self):
    super().__post_init__()
    if self.num_experts < 1:
      raise ValueError(f'model.num_experts must be >= 1, got {self.num_experts}')
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f'model.top_k={self.top_k} must be in [1, model.num_experts='
                       f'{self.num_experts}]')
    if self.capacity_factor < 0:
      raise ValueError(f'model.capacity_factor must be >= 0 (0 = dropless), got '
                       f'{self.capacity_factor}')


class Routing(NamedTuple):
  expert_ids: jax.Array  # int32 [N, k]
  gates: jax.Array  # float32 [N, k], renormalized over the chosen experts
  aux: jax.Array  # scalar load-balance loss; the trainer weighs it by optim.aux_loss_coef


def check_expert_mesh(num_experts: int):
  """Expert parallelism needs whole experts per device along the current mesh's `expert` axis."""
  mesh = jax.sharding.get_abstract_mesh()
  size = 1 if mesh.empty else dict(mesh.shape).get('expert', 1)
  if num_experts % size:
    raise ValueError(f'model.num_experts={num_experts} is not divisible by the expert mesh axis '
                     f'(parallel.expert={size})')


def load_balance_loss(probs: jax.Array, expert_ids: jax.Array) -> jax.Array:
  """Switch Transformer loss E * sum_e f_e * P_e; f_e (dispatch fraction) carries no gradient."""
  num_experts = probs.shape[-1]
  counts = jnp.zeros((num_experts,), jnp.float32).at[expert_ids.ravel()].add(1.0)
  fraction = counts / expert_ids.size
  return num_experts * jnp.sum(fraction * jnp.mean(probs, axis=0))


class MoE(nnx.Module):
  """Top-k routed SwiGLU experts: `__call__(x [B, T, d]) -> (y [B, T, d], aux)`."""

  def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
    d, f, e = cfg.d_model, cfg.mlp_dim, cfg.num_experts
    pd, s = DTYPES[cfg.param_dtype], cfg.init_scale
    self.router = param(rngs, (d, e), ('embed', None), s, jnp.float32)
    self.w_gate = param(rngs, (e, d, f), ('expert', 'embed', 'mlp'), s, pd)
    self.w_up = param(rngs, (e, d, f), ('expert', 'embed', 'mlp'), s, pd)
    self.w_down = param(rngs, (e, f, d), ('expert', 'mlp', 'embed'),
                        s / math.sqrt(2 * cfg.num_layers), pd)
    self.cfg = cfg

  def route(self, x: jax.Array, expert_ids: Optional[jax.Array] = None) -> Routing:
    """Routes x [N, d] in float32; given `expert_ids` (a replay), only the gates are recomputed."""
    logits = x.astype(jnp.float32) @ self.router[...].astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    if expert_ids is None:
      _, expert_ids = jax.lax.top_k(probs, self.cfg.top_k)
    chosen = jnp.take_along_axis(probs, expert_ids, axis=-1)
    gates = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
    aux = load_balance_loss(probs, expert_ids)
    return Routing(expert_ids.astype(jnp.int32), gates, aux)

  def experts(self, x: jax.Array, routing: Routing) -> jax.Array:
    """Weighted sum of the chosen experts' outputs for x [N, d] -> [N, d]."""
    check_expert_mesh(self.cfg.num_experts)
    n, k, e = x.shape[0], self.cfg.top_k, self.cfg.num_experts
    flat_ids = routing.expert_ids.ravel()
    order = jnp.argsort(flat_ids, stable=True)
    token_of_row = order // k
    rows = jnp.take(x, token_of_row, axis=0)
    group_sizes = jnp.bincount(flat_ids, length=e).astype(jnp.int32)
    if self.cfg.capacity_factor > 0:
      out, kept = self._capacity_ffn(rows, flat_ids[order], group_sizes)
    else:
      out, kept = self._dropless_ffn(rows, group_sizes), None
    weights = routing.gates.ravel()[order].astype(out.dtype)
    if kept is not None:
      weights = jnp.where(kept, weights, 0)
    return jax.ops.segment_sum(out * weights[:, None], token_of_row, num_segments=n)

  def _weights(self):
    dt = DTYPES[self.cfg.dtype]
    return (self.w_gate[...].astype(dt), self.w_up[...].astype(dt), self.w_down[...].astype(dt))

  def _dropless_ffn(self, rows, group_sizes):
    w_gate, w_up, w_down = self._weights()
    h = jax.nn.silu(jax.lax.ragged_dot(rows, w_gate, group_sizes)) * jax.lax.ragged_dot(
        rows, w_up, group_sizes)
    return jax.lax.ragged_dot(h, w_down, group_sizes)

  def _capacity_ffn(self, rows, sorted_ids, group_sizes):
    e = self.cfg.num_experts
    capacity = math.ceil(self.cfg.capacity_factor * rows.shape[0] / e)
    starts = jnp.cumsum(group_sizes) - group_sizes
    slot = jnp.arange(rows.shape[0]) - starts[sorted_ids]
    kept = slot < capacity
    # Overflow rows go to an extra slot that is sliced away, so each row has a unique target.
    slot = jnp.where(kept, slot, capacity)
    buffer = jnp.zeros((e, capacity + 1, rows.shape[-1]), rows.dtype)
    buffer = buffer.at[sorted_ids, slot].set(rows)[:, :capacity]
    buffer = constrain(buffer, ('act_expert', None, 'act_embed'))
    w_gate, w_up, w_down = self._weights()
    h = jax.nn.silu(jnp.einsum('ecd,edf->ecf', buffer, w_gate)) * jnp.einsum(
        'ecd,edf->ecf', buffer, w_up)
    out = jnp.einsum('ecf,efd->ecd', h, w_down)
    out = jnp.pad(out, ((0, 0), (0, 1), (0, 0)))
    return out[sorted_ids, slot], kept

  def __call__(self, x: jax.Array, expert_ids: Optional[jax.Array] = None):
    flat = x.reshape(-1, x.shape[-1])
    routing = self.route(flat, expert_ids)
    return self.experts(flat, routing).reshape(x.shape), routing.aux


class MoEBlock(Block):
  """The decoder's pre-norm block with the MoE in place of SwiGLU; returns `(x, aux)`."""

  def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs, ffn_factory=MoE)

  def __call__(self, x, positions):
    h = self.attn_norm(x)
    x = x + self.attn(h, h, positions)
    x = constrain(x, ('act_batch', 'act_len', 'act_embed'))
    y, aux = self.ffn(self.ffn_norm(x))
    return constrain(x + y, ('act_batch', 'act_len', 'act_embed')), aux
