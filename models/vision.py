"""Small ViT encoder over 8x8 digit images and the projector into the decoder width.

An image is cut into (image_size / patch_size)^2 patches; each patch is one encoder token. The
blocks are the decoder's Block with bidirectional attention inside each image, stacked by
`make_stack` and run by the same `scan_stack`. Their stacked axis is named
'encoder_layers', not the decoder's 'layers': no sharding rule maps it, so the encoder stays whole
on every pipeline stage (`parallel.stage` splits the decoder's layers only). A pixel shuffle
(InternVL-style) folds each `shuffle` x `shuffle` block of patches into one token, so the decoder
sees fewer tokens per image than the encoder runs; a two-layer projector maps them to the decoder
width. Those tokens are what `models.multimodal` places before the text.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from models.transformer import (DTYPES, Attention, Block, DecoderConfig, RMSNorm, check_numerics,
                                make_stack, param, scan_stack)
from parallel.sharding import constrain

PIXEL_MAX = 16.0  # load_digits pixels are 0..16


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 8
  patch_size: int = 2
  shuffle: int = 2  # patches per side folded into one output token
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  mlp_dim: int = 128
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'
  init_scale: float = 0.02

  def __post_init__(self):
    for name in ('image_size', 'patch_size', 'shuffle', 'num_layers', 'd_model', 'num_heads',
                 'mlp_dim'):
      if getattr(self, name) < 1:
        raise ValueError(f'vision.{name} must be >= 1, got {getattr(self, name)}')
    if self.image_size % self.patch_size:
      raise ValueError(f'vision.patch_size={self.patch_size} does not divide '
                       f'vision.image_size={self.image_size}')
    if self.patches_per_side % self.shuffle:
      raise ValueError(f'vision.shuffle={self.shuffle} does not divide the '
                       f'{self.patches_per_side} patches per side')
    if self.d_model % self.num_heads:
      raise ValueError(f'vision.d_model={self.d_model} is not divisible by '
                       f'vision.num_heads={self.num_heads}')
    check_numerics(self, 'vision')

  @property
  def patches_per_side(self) -> int:
    return self.image_size // self.patch_size

  @property
  def tokens_per_image(self) -> int:
    """Tokens each image contributes to the decoder sequence (after the pixel shuffle)."""
    return (self.patches_per_side // self.shuffle) ** 2

  def block_config(self) -> DecoderConfig:
    """The settings the shared Block reads (vocab and RoPE unused)."""
    return DecoderConfig(vocab_size=1, num_layers=self.num_layers, d_model=self.d_model,
                         num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                         max_len=self.patches_per_side ** 2, dtype=self.dtype,
                         param_dtype=self.param_dtype, remat=self.remat,
                         init_scale=self.init_scale)


def encoder_block(cfg: DecoderConfig, rngs: nnx.Rngs) -> Block:
  """Pre-norm ViT block: the decoder's Block with attention bidirectional over the patches of
  one image and no RoPE (positions enter once, as learned embeddings)."""
  return Block(cfg, rngs, attention_factory=functools.partial(Attention, causal=False,
                                                              use_rope=False))


class VisionEncoder(nnx.Module):
  """Images [N, H, W] (uint8 or float, 0..16) -> image tokens [N, tokens_per_image, out_dim]."""

  def __init__(self, cfg: VisionConfig, out_dim: int, rngs: nnx.Rngs):
    if out_dim < 1:
      raise ValueError(f'out_dim must be >= 1, got {out_dim}')
    self.cfg = cfg
    block_cfg = cfg.block_config()
    pd, d = DTYPES[cfg.param_dtype], cfg.d_model
    patch_pixels = cfg.patch_size ** 2
    self.patch_embed = param(rngs, (patch_pixels, d), ('patch', 'embed'), patch_pixels ** -0.5, pd)
    self.pos_embed = param(rngs, (cfg.patches_per_side ** 2, d), ('patch_pos', 'embed'),
                           cfg.init_scale, pd)
    self.layers = make_stack(block_cfg, rngs, encoder_block, axis_name='encoder_layers')
    self.final_norm = RMSNorm(d, pd)
    folded = d * cfg.shuffle ** 2
    self.proj_in = param(rngs, (folded, out_dim), ('embed', 'mlp'), folded ** -0.5, pd)
    self.proj_out = param(rngs, (out_dim, out_dim), ('mlp', 'embed'), out_dim ** -0.5, pd)

  def patches(self, images):
    """[N, H, W] -> [N, patches_per_side^2, patch_size^2], row-major over patches."""
    n, p, g = images.shape[0], self.cfg.patch_size, self.cfg.patches_per_side
    x = images.astype(DTYPES[self.cfg.dtype]) / PIXEL_MAX
    return x.reshape(n, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(n, g * g, p * p)

  def pixel_shuffle(self, x):
    """[N, g*g, d] -> [N, (g/s)^2, s*s*d]: each s x s block of patches becomes one token."""
    n, d, g, s = x.shape[0], x.shape[-1], self.cfg.patches_per_side, self.cfg.shuffle
    x = x.reshape(n, g // s, s, g // s, s, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (g // s) ** 2, s * s * d)

  def __call__(self, images):
    dt = DTYPES[self.cfg.dtype]
    if images.shape[1:] != (self.cfg.image_size,) * 2:
      raise ValueError(f'images must be [N, {self.cfg.image_size}, {self.cfg.image_size}], '
                       f'got {images.shape}')
    x = self.patches(images) @ self.patch_embed[...].astype(dt) + self.pos_embed[...].astype(dt)
    x = constrain(x, ('act_batch', 'act_len', 'act_embed'))
    graphdef, state = nnx.split(self.layers)
    positions = jnp.zeros(x.shape[:2], jnp.int32)
    x, _ = scan_stack(graphdef, state, x, positions, self.cfg.remat)
    x = self.pixel_shuffle(self.final_norm(x))
    x = jax.nn.gelu(x @ self.proj_in[...].astype(dt))
    return x @ self.proj_out[...].astype(dt)
