"""Reference-model loss score: parity with a per-example numpy loss, padding, cache."""

import jax
import numpy as np
import pytest
from flax import nnx

from data.text import PAD
from models import transformer
from training import scoring


@pytest.fixture(scope='module')
def model():
  cfg = transformer.DecoderConfig(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=16)
  return transformer.Decoder(cfg, nnx.Rngs(params=jax.random.key(0)))


@pytest.fixture(scope='module')
def tokens():
  rows = np.random.default_rng(0).integers(0, 256, (10, 9)).astype(np.int32)
  rows[3, 5:] = PAD  # a short row: its PAD targets must not count
  return rows


def per_example_reference(model, tokens):
  """All rows in one forward pass, the loss of each row taken in numpy."""
  logits, _ = model(tokens[:, :-1])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
  out = []
  for row_logp, targets in zip(logp, tokens[:, 1:]):
    keep = targets != PAD
    out.append(-row_logp[np.arange(len(targets)), targets][keep].mean())
  return np.array(out)


def test_matches_per_example_loss(model, tokens):
  got = scoring.reference_loss(model, tokens, batch_size=4)  # 10 rows: the last batch is padded
  np.testing.assert_allclose(got, per_example_reference(model, tokens), rtol=1e-5)


def test_cached_by_tokens_and_weights(model, tokens, tmp_path):
  first = scoring.reference_loss_scores(model, tokens, str(tmp_path), batch_size=8)
  again = scoring.reference_loss_scores(model, tokens, str(tmp_path), batch_size=8)
  np.testing.assert_array_equal(first, again)
  other = transformer.Decoder(model.cfg, nnx.Rngs(params=jax.random.key(1)))
  scoring.reference_loss_scores(other, tokens, str(tmp_path), batch_size=8)
  assert len(list(tmp_path.glob('refloss-*.npy'))) == 2


@pytest.mark.parametrize('rows, batch_size, match', [
    (np.zeros((4, 1), np.int32), 2, 'tokens'),
    (np.zeros(4, np.int32), 2, 'tokens'),
    (np.zeros((4, 5), np.int32), 0, 'batch_size'),
])
def test_bad_input(model, rows, batch_size, match):
  with pytest.raises(ValueError, match=match):
    scoring.reference_loss(model, rows, batch_size)
