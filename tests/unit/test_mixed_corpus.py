"""Mixed-quality corpus: layout, determinism, disjoint splits, degradations, score signal."""

import numpy as np
import pytest

from data import mixed, text


@pytest.fixture(scope='module')
def corpus():
  return mixed.build(600, seq_len=48, num_heldout=40, seed=1)


def test_layout_and_metadata(corpus):
  assert corpus.tokens.shape == (600, 49) and corpus.tokens.dtype == np.int32
  assert np.all(corpus.tokens[:, 0] == text.BOS) and corpus.tokens[:, 1:].max() < 256
  assert corpus.heldout.shape == (40, 49)
  assert np.bincount(corpus.source).tolist() == [300, 300]
  assert set(np.unique(corpus.level)) == set(range(mixed.NUM_LEVELS))
  np.testing.assert_array_equal(corpus.kind == 0, corpus.level == 0)
  assert np.isfinite(corpus.score).all() and corpus.score.shape == (600,)


def test_seeded(corpus):
  again = mixed.build(600, seq_len=48, num_heldout=40, seed=1)
  other = mixed.build(600, seq_len=48, num_heldout=40, seed=2)
  for a, b in zip(corpus, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(corpus.tokens, other.tokens)


def test_clean_rows_come_from_training_text_and_heldout_does_not(corpus):
  texts = mixed._texts()  # pylint: disable=protected-access
  train = ''.join(texts['train'].values()).encode()
  clean = corpus.tokens[corpus.level == 0][:20, 1:]
  assert all(bytes(row.astype(np.uint8)) in train for row in clean)
  assert not any(bytes(row.astype(np.uint8)) in train for row in corpus.heldout[:, 1:])
  assert bytes(corpus.heldout[0, 1:].astype(np.uint8)) in ''.join(texts['heldout'].values()).encode()


def test_degradations_keep_length_and_grow_with_level():
  rng = np.random.default_rng(0)
  chunk = np.frombuffer(b'to be or not to be that is the question whether tis nobler', np.uint8)
  chunks = np.tile(chunk, (12, 1))
  kind = np.repeat([1, 2, 3], 4)
  level = np.tile(np.arange(4), 3)
  out = mixed.degrade(chunks, kind, level, rng)
  assert out.shape == chunks.shape
  changed = (out != chunks).mean(axis=1).reshape(3, 4)
  assert np.all(changed[:, 0] == 0)  # level 0 leaves the text alone
  assert np.all(np.diff(changed[[0, 2]], axis=1) > 0)  # noise and boilerplate grow with level
  shuffled = out[kind == 2]
  for row in shuffled:  # same words, same spaces
    assert sorted(bytes(row).split(b' ')) == sorted(bytes(chunk).split(b' '))


def test_score_carries_the_level(corpus):
  means = [corpus.score[corpus.level == lv].mean() for lv in range(mixed.NUM_LEVELS)]
  assert means == sorted(means, reverse=True)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_examples': 1}, 'num_examples'),
    ({'num_examples': 10**7}, 'num_examples'),
    ({'num_examples': 10, 'seq_len': 0}, 'seq_len'),
    ({'num_examples': 10, 'clean_fraction': 1.5}, 'clean_fraction'),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mixed.build(**kwargs)
