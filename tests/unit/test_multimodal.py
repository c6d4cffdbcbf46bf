import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data import multimodal as mm
from data import text
from models.multimodal import MultimodalModel
from models.transformer import DecoderConfig
from models.vision import VisionConfig

VISION = VisionConfig(num_layers=2, d_model=32, num_heads=2, mlp_dim=64)
DECODER = DecoderConfig(vocab_size=264, num_layers=2, d_model=64, num_heads=4, mlp_dim=128,
                        max_len=128)


@pytest.fixture(scope='module')
def examples():
  return list(mm.generate_examples(64, skew=1.0, seed=0))


@pytest.fixture(scope='module')
def model():
  return MultimodalModel(VISION, DECODER, nnx.Rngs(0))


def batch_of(examples, num_images=40, num_tokens=256):
  return mm.pack_rows([examples[:2], examples[2:4]], num_images, num_tokens,
                      VISION.tokens_per_image)


@nnx.jit
def _logits(model, images, tokens, image_slots, positions):
  return model(images, tokens, image_slots, positions)[0]


def forward(model, batch):
  keys = ('images', 'tokens', 'image_slots', 'positions')
  return _logits(model, *(jnp.asarray(batch[k]) for k in keys))


def test_every_parameter_has_logical_axis_names(model):
  for path, leaf in jax.tree.leaves_with_path(nnx.state(model, nnx.Param),
                                              is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names = leaf.get_metadata().get('out_sharding')
    assert names is not None and len(names) == leaf[...].ndim, path


def test_encoder_patches_tile_the_image_and_shuffle_folds_blocks(model):
  enc = model.encoder
  image = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8)
  patches = enc.patches(image) * 16.0  # undo the 0..16 pixel scaling
  np.testing.assert_array_equal(patches[0, 0], [0, 1, 8, 9])
  np.testing.assert_array_equal(patches[0, 1], [2, 3, 10, 11])
  index = jnp.arange(16, dtype=jnp.float32).reshape(1, 16, 1)  # patch ids, 4 per side
  np.testing.assert_array_equal(enc.pixel_shuffle(index)[0], [[0, 1, 4, 5], [2, 3, 6, 7],
                                                              [8, 9, 12, 13], [10, 11, 14, 15]])
  assert enc(jnp.zeros((3, 8, 8), jnp.uint8)).shape == (3, VISION.tokens_per_image, DECODER.d_model)


def test_images_reach_text_positions_and_image_slot_tokens_are_ignored(model, examples):
  batch = batch_of(examples)
  logits = forward(model, batch)
  assert logits.shape == (2, 256, DECODER.vocab_size) and np.all(np.isfinite(logits))
  changed = dict(batch, images=batch['images'].copy())
  changed['images'][0, 0] = 16 - changed['images'][0, 0]  # the first sample's first image
  delta = np.abs(np.asarray(forward(model, changed)) - np.asarray(logits)).max(-1)
  first_text = int(np.argmax(batch['image_slots'][0] < 0))
  assert delta[0, first_text:].max() > 1e-4  # the first row's text sees its image
  np.testing.assert_allclose(delta[1], 0, atol=1e-6)  # the other row has its own images
  relabeled = dict(batch, tokens=np.where(batch['image_slots'] >= 0, 7, batch['tokens']))
  np.testing.assert_allclose(forward(model, relabeled), logits, atol=1e-6)


def test_gradients_reach_the_encoder(model, examples):
  batch = {k: jnp.asarray(v) for k, v in batch_of(examples).items()}

  def loss(m):
    logits = m(batch['images'], batch['tokens'], batch['image_slots'], batch['positions'])[0]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['targets'][..., None], -1)[..., 0]
    return jnp.sum(nll * batch['weights']) / jnp.sum(batch['weights'])

  grads = nnx.jit(nnx.grad(loss))(model)
  assert float(jnp.abs(grads.encoder.patch_embed[...]).sum()) > 0
  assert float(jnp.abs(grads.encoder.layers.attn.wq[...]).sum()) > 0


def test_mixture_follows_skew():
  uniform = list(mm.generate_examples(200, skew=0.0, seed=0))
  assert {e['kind'] for e in uniform} == {0} and all(len(e['images']) == 1 for e in uniform)
  skewed = list(mm.generate_examples(2000, skew=1.0, seed=0))
  kinds = np.bincount([e['kind'] for e in skewed], minlength=3) / 2000
  np.testing.assert_allclose(kinds, [0.6, 0.3, 0.1], atol=0.04)
  video = [e for e in skewed if mm.KINDS[e['kind']] == 'video']
  assert all(10 <= len(e['images']) <= 32 and len(set(e['labels'])) == 1 for e in video)
  assert all(e['caption'] == f" a video of a {mm.DIGIT_NAMES[e['labels'][0]]}." for e in video)


def test_generation_is_deterministic(examples):
  again = list(mm.generate_examples(64, skew=1.0, seed=0))
  for a, b in zip(examples, again):
    np.testing.assert_array_equal(a['images'], b['images'])
    assert a['prompt'] == b['prompt'] and a['caption'] == b['caption']


def test_pack_row_lays_samples_end_to_end(examples):
  p = VISION.tokens_per_image
  row = mm.pack_row(examples[:3], 80, 1024, p)
  images, tokens = mm.sample_sizes(examples[:3], p)
  assert (row['segment_ids'] >= 0).sum() == tokens.sum()
  starts = np.concatenate([[0], np.cumsum(tokens)[:-1]])
  np.testing.assert_array_equal(row['positions'][starts], 0)
  # The second sample's first slot points at its own first image, after the first's images.
  assert row['image_slots'][starts[1]] == images[0] * p
  np.testing.assert_array_equal(row['images'][images[0]], examples[1]['images'][0])
  caption_bytes = sum(len(text.encode(e['caption'])) for e in examples[:3])
  assert row['weights'].sum() == caption_bytes
  targets = row['targets'][row['weights'] > 0]
  assert text.decode(targets) == ''.join(e['caption'] for e in examples[:3])


def test_pack_row_rejects_samples_that_do_not_fit(examples):
  with pytest.raises(ValueError, match='num_tokens'):
    mm.pack_row(examples[:3], 80, 8, VISION.tokens_per_image)


def test_bad_input_names_the_parameter():
  with pytest.raises(ValueError, match='skew'):
    mm.mixture(1.5)
  with pytest.raises(ValueError, match='patch_size'):
    VisionConfig(patch_size=3)
  with pytest.raises(ValueError, match='shuffle'):
    VisionConfig(patch_size=4, shuffle=4)
  with pytest.raises(ValueError, match='split'):
    mm.digit_images('validation')


def test_tfds_builder_writes_array_record(tmp_path):
  cfg = mm.DigitStoriesConfig(name='tiny', skew=1.0, num_train=12, num_test=4)
  builder = mm.DigitStories(config=cfg, data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare()
  source = builder.as_data_source(split='train')
  assert len(source) == 12
  ids = sorted(int(source[i]['id']) for i in range(12))
  assert ids == list(range(12))
  sample = source[0]
  assert sample['images'].dtype == np.uint8 and sample['images'].shape[1:] == (8, 8)
  assert len(sample['labels']) == len(sample['images'])
  assert isinstance(sample['caption'], bytes)
