import numpy as np
import pytest

from data import lm, pool, text


def test_byte_tokenizer_round_trips_unicode():
  s = "O, wonder! How many goodly creatures — ‘brave new world’"
  assert text.decode(text.encode(s)) == s
  assert text.decode([72, 105, text.PAD, text.BOS]) == 'Hi'


def test_windows_cover_every_byte_once_as_a_target():
  tokens = np.arange(23)
  w = lm.windows(tokens, 5)
  assert w.shape == (4, 6)
  np.testing.assert_array_equal(w[:, 1:].ravel(), np.arange(1, 21))
  np.testing.assert_array_equal(w[1:, 0], w[:-1, -1])


def test_corpora_are_read_offline():
  plays = text.shakespeare_plays()
  assert len(plays) == 38 and set(text.HELDOUT_PLAYS) <= set(plays)
  assert 'To be, or not to be' in plays['hamlet']
  books = text.kjv_books()
  assert len(books) == 66 and books['1-01'].startswith('1:1 In the beginning')


def test_builder_keeps_corpus_order_and_holds_out_plays(tmp_path):
  train = lm.read_split('shakespeare', 512, 'train', str(tmp_path))
  val = lm.read_split('shakespeare', 512, 'validation', str(tmp_path))
  np.testing.assert_array_equal(train['id'], np.arange(len(train['id'])))
  first = ''.join(text.decode(r[:-1]) for r in train['tokens'][:3])
  assert first.startswith("# A Midsummer Night's Dream")
  plays = text.shakespeare_plays()
  heldout_bytes = sum(len(plays[p].encode()) for p in text.HELDOUT_PLAYS)
  assert abs(val['tokens'].shape[0] * 512 - heldout_bytes) < 3 * 512


def test_pool_metadata_is_checked():
  tokens = np.zeros((4, 9), np.int32)
  p = pool.from_tokens(tokens, source=[0, 0, 1, 1])
  assert p.size == 4 and (np.asarray(p.cluster) == -1).all()
  with pytest.raises(ValueError, match='pool score has shape'):
    pool.from_tokens(tokens, score=np.zeros(3))
  with pytest.raises(ValueError, match='non-finite'):
    pool.from_tokens(tokens, score=[0, np.nan, 0, 0])
