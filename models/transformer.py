"""Decoder-only LM: RMSNorm, RoPE, causal attention, SwiGLU, with stacked layers run by scan.

Every parameter carries logical axis names (`embed, mlp, heads, kv, vocab, layers`); the sharding
rules in the config map them to mesh axes. The layers are created once with `nnx.vmap`, so their
parameters have a leading `layers` axis. `Decoder.__call__` runs that stack with `lax.scan` over
`nnx.split` state; the same stacked state is what pipeline stages and the reversible stack consume
(`stack_runner`).
"""

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from parallel.sharding import constrain

# Parameters keep logical names as metadata; the trainer maps them to the mesh itself. Eager
# sharding would try to place variables at creation time using the logical names as mesh axes.
nnx.use_eager_sharding(False)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_numerics(config, section: str):
  """The dtype, param_dtype and remat choices of a model config, errors naming `section.key`."""
  for name, table in (('dtype', DTYPES), ('param_dtype', DTYPES), ('remat', REMAT_POLICIES)):
    if getattr(config, name) not in table:
      raise ValueError(f'{section}.{name}={getattr(config, name)!r}; choose one of {sorted(table)}')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int = 264
  num_layers: int = 4
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  max_len: int = 256
  rope_base: float = 10000.0
  dtype: str = 'float32'  # compute dtype; parameters stay float32 (or float64 for x64 studies)
  param_dtype: str = 'float32'
  remat: str = 'none'  # none | full | dots
  init_scale: float = 0.02

  def __post_init__(self):
    for name in ('vocab_size', 'num_layers', 'd_model', 'num_heads', 'mlp_dim', 'max_len'):
      if getattr(self, name) < 1:
        raise ValueError(f'model.{name} must be >= 1, got {getattr(self, name)}')
    if self.d_model % self.num_heads:
      raise ValueError(f'model.d_model={self.d_model} is not divisible by '
                       f'model.num_heads={self.num_heads}')
    if (self.d_model // self.num_heads) % 2:
      raise ValueError('model.d_model / model.num_heads must be even for RoPE')
    check_numerics(self, 'model')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def param(rngs: nnx.Rngs, shape, axes, scale: float, dtype) -> nnx.Param:
  value = scale * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, out_sharding=axes)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, param_dtype, eps: float = 1e-6):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=('embed',))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary embedding on [..., T, H, D] with positions [..., T]."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None, None].astype(jnp.float32) * freq
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention; the decoder's is causal with RoPE, an image encoder's is neither."""

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, causal: bool = True, use_rope: bool = True):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.head_dim
    pd, s = DTYPES[cfg.param_dtype], cfg.init_scale
    self.wq = param(rngs, (d, h, k), ('embed', 'heads', 'kv'), s, pd)
    self.wk = param(rngs, (d, h, k), ('embed', 'heads', 'kv'), s, pd)
    self.wv = param(rngs, (d, h, k), ('embed', 'heads', 'kv'), s, pd)
    self.wo = param(rngs, (h, k, d), ('heads', 'kv', 'embed'), s / math.sqrt(2 * cfg.num_layers), pd)
    self.cfg, self.causal, self.use_rope = cfg, causal, use_rope

  def __call__(self, x_q, x_kv, positions):
    """Queries from `x_q`, keys and values from `x_kv` (the same for a decoder)."""
    dt = DTYPES[self.cfg.dtype]
    q = jnp.einsum('btd,dhk->bthk', x_q, self.wq[...].astype(dt))
    k = jnp.einsum('btd,dhk->bthk', x_kv, self.wk[...].astype(dt))
    v = jnp.einsum('btd,dhk->bthk', x_kv, self.wv[...].astype(dt))
    if self.use_rope:
      q, k = rope(q, positions, self.cfg.rope_base), rope(k, positions, self.cfg.rope_base)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return jnp.einsum('bthk,hkd->btd', out, self.wo[...].astype(dt))


class SwiGLU(nnx.Module):

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.mlp_dim
    pd, s = DTYPES[cfg.param_dtype], cfg.init_scale
    self.w_gate = param(rngs, (d, f), ('embed', 'mlp'), s, pd)
    self.w_up = param(rngs, (d, f), ('embed', 'mlp'), s, pd)
    self.w_down = param(rngs, (f, d), ('mlp', 'embed'), s / math.sqrt(2 * cfg.num_layers), pd)
    self.dtype = DTYPES[cfg.dtype]

  def __call__(self, x):
    dt = self.dtype
    h = jax.nn.silu(x @ self.w_gate[...].astype(dt)) * (x @ self.w_up[...].astype(dt))
    h = constrain(h, ('act_batch', 'act_len', 'act_mlp'))
    return h @ self.w_down[...].astype(dt)


class Block(nnx.Module):
  """Pre-norm residual block. `ffn` is SwiGLU for the dense decoder (an MoE layer elsewhere);
  `attn` is causal attention with RoPE (bidirectional in the vision encoder)."""

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, ffn_factory: Optional[Callable] = None,
               attention_factory: Callable = Attention):
    pd = DTYPES[cfg.param_dtype]
    self.attn_norm = RMSNorm(cfg.d_model, pd)
    self.attn = attention_factory(cfg, rngs)
    self.ffn_norm = RMSNorm(cfg.d_model, pd)
    self.ffn = (ffn_factory or SwiGLU)(cfg, rngs)

  def __call__(self, x, positions):
    h = self.attn_norm(x)
    x = x + self.attn(h, h, positions)
    x = constrain(x, ('act_batch', 'act_len', 'act_embed'))
    x = x + self.ffn(self.ffn_norm(x))
    return constrain(x, ('act_batch', 'act_len', 'act_embed'))


def make_stack(cfg: DecoderConfig, rngs: nnx.Rngs, block_factory: Callable,
               axis_name: str = 'layers') -> nnx.Module:
  """`num_layers` blocks created at once, parameters stacked on a leading `axis_name` axis."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axis_name})
  def create(rngs):
    return block_factory(cfg, rngs)

  return create(rngs)


def scan_stack(graphdef, stacked_state, x, positions, remat: str = 'none'):
  """Runs the stacked blocks in sequence: the reference every other stack runner must match.

  Blocks may return `(x, aux)` (MoE load-balance loss); aux values are summed over layers.
  """

  def body(carry, layer_state):
    x, aux = carry
    out = nnx.merge(graphdef, layer_state)(x, positions)
    if isinstance(out, tuple):
      out, layer_aux = out
      aux = aux + layer_aux
    return (out, aux), None

  policy = REMAT_POLICIES[remat]
  if policy is not None:
    body = jax.checkpoint(body, policy=policy, prevent_cse=False)
  (x, aux), _ = jax.lax.scan(body, (x, jnp.zeros((), jnp.float32)), stacked_state)
  return x, aux


class Decoder(nnx.Module):
  """Byte-level decoder LM. `stack_runner(graphdef, state, x, positions) -> (x, aux)` runs the
  layers; the default is `scan_stack`, pipeline stages and the reversible stack plug in here."""

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, block_factory: Callable = Block):
    self.cfg = cfg
    pd = DTYPES[cfg.param_dtype]
    self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'), 1.0, pd)
    self.layers = make_stack(cfg, rngs, block_factory)
    self.final_norm = RMSNorm(cfg.d_model, pd)
    self.unembed = param(rngs, (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                         1.0 / math.sqrt(cfg.d_model), pd)
    self.stack_runner: Optional[Callable] = None

  def embed_tokens(self, tokens):
    # Gathering rows of a sharded table makes GSPMD replicate it anyway, with a warning and an
    # extra copy; all-gathering it first (as FSDP does for every weight) is the clean path.
    table = constrain(self.embed[...], (None, None))
    x = jnp.take(table, tokens, axis=0).astype(DTYPES[self.cfg.dtype])
    return constrain(x, ('act_batch', 'act_len', 'act_embed'))

  def run_layers(self, x, positions):
    graphdef, state = nnx.split(self.layers)
    if self.stack_runner is not None:
      return self.stack_runner(graphdef, state, x, positions)
    return scan_stack(graphdef, state, x, positions, self.cfg.remat)

  def hidden(self, tokens, positions=None):
    """Final normalized hidden states [B, T, d] and the summed auxiliary loss."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    x, aux = self.run_layers(self.embed_tokens(tokens), positions)
    return self.final_norm(x), aux

  def logits(self, h):
    logits = h @ self.unembed[...].astype(h.dtype)
    return constrain(logits.astype(jnp.float32), ('act_batch', 'act_len', 'act_vocab'))

  def __call__(self, tokens, positions=None):
    h, aux = self.hidden(tokens, positions)
    return self.logits(h), aux


def num_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def flops_per_token(cfg: DecoderConfig, seq_len: int, causal: bool = True) -> float:
  """Training FLOPs per token (forward + backward = 3 x forward), MaxText's convention when
  `causal` (attention scores halved); `causal=False` is Levanter/Megatron's full-attention count."""
  d, f, L = cfg.d_model, cfg.mlp_dim, cfg.num_layers
  matmul_params = L * (4 * d * d + 3 * d * f) + d * cfg.vocab_size
  attention = L * 2 * 2 * seq_len * d * (0.5 if causal else 1.0)  # QK^T and AV per token
  return 3 * (2 * matmul_params + attention)
