"""Vision encoder + decoder LM: each sample's image tokens sit in the sequence before its text.

A batch is packed: each row of the decoder sequence holds one or more samples and its own image
buffer [I, H, W]; `image_slots` says which positions of the row take a projected patch token
instead of a text embedding (an index into the row's flattened [I * tokens_per_image] patch
tokens, -1 for text), so every row only reads its own images and rows shard freely on `data`.
The packing itself (which samples share a row, how rows and the image buffer are padded to
static shapes) is decided outside the model, by `parallel.balance` and `data.multimodal`.
With pipeline stages (the decoder's `stack_runner`) only the decoder's layers are split over the
'stage' mesh axis; the encoder's parameters stay whole on every stage (training/multimodal.py).
"""

import jax.numpy as jnp
from flax import nnx

from models.transformer import Decoder, DecoderConfig
from models.vision import VisionConfig, VisionEncoder
from parallel.sharding import constrain


class MultimodalModel(nnx.Module):

  def __init__(self, vision_cfg: VisionConfig, decoder_cfg: DecoderConfig, rngs: nnx.Rngs):
    self.encoder = VisionEncoder(vision_cfg, decoder_cfg.d_model, rngs)
    self.decoder = Decoder(decoder_cfg, rngs)

  @property
  def tokens_per_image(self) -> int:
    return self.encoder.cfg.tokens_per_image

  def embed(self, images, tokens, image_slots):
    """Images [B, I, H, W], tokens and image_slots [B, T] -> decoder inputs [B, T, d]: text embeddings with the image slots filled by patch tokens."""
    rows, per_row = images.shape[:2]
    patch_tokens = self.encoder(images.reshape(rows * per_row, *images.shape[2:]))
    flat = patch_tokens.reshape(rows, -1, patch_tokens.shape[-1])
    text = self.decoder.embed_tokens(tokens)
    slots = jnp.maximum(image_slots, 0)[..., None]
    picked = jnp.take_along_axis(flat, slots, axis=1).astype(text.dtype)
    x = jnp.where((image_slots >= 0)[..., None], picked, text)
    return constrain(x, ('act_batch', 'act_len', 'act_embed'))

  def __call__(self, images, tokens, image_slots, positions):
    """Logits [B, T, vocab] (float32) and the decoder's auxiliary loss."""
    x, aux = self.decoder.run_layers(self.embed(images, tokens, image_slots), positions)
    return self.decoder.logits(self.decoder.final_norm(x)), aux
