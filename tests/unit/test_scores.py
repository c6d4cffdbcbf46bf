"""Byte n-gram scores: normalization, parity with a per-token dictionary reference, signal, cache."""

import collections
import math

import numpy as np
import pytest

from data import scores, text

REFERENCE = text.encode('the cat sat on the mat. the dog sat on the log. a cat and a dog.\n' * 3)


def reference_logprob(reference: np.ndarray, row: np.ndarray, order: int) -> list[float]:
  """Interpolated Kneser-Ney, one token at a time from dictionaries of tuples."""
  bos = (text.BOS,) * (order - 1)
  ref = bos + tuple(int(t) for t in reference)
  top = collections.Counter(ref[i - order + 1:i + 1] for i in range(order - 1, len(ref)))
  counts = {order: top}
  for k in range(order - 1, 0, -1):
    counts[k] = collections.Counter(g[1:] for g in counts[k + 1])  # distinct left extensions
  def discount(c):
    n1 = sum(v == 1 for v in c.values())
    n2 = sum(v == 2 for v in c.values())
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95) if n1 + n2 else 0.5
  out, seq = [], bos + tuple(int(t) for t in row)
  for i in range(order - 1, len(seq)):
    p = 1 / 256
    for k in range(1, order + 1):
      gram, d = seq[i - k + 1:i + 1], discount(counts[k])
      siblings = {g: c for g, c in counts[k].items() if g[:-1] == gram[:-1]}
      total = sum(siblings.values())
      if total:
        p = (max(counts[k][gram] - d, 0) + d * len(siblings) * p) / total
    out.append(math.log(p))
  return out


@pytest.mark.parametrize('order', [1, 3, 4])
def test_matches_per_token_reference(order):
  lm = scores.fit_ngram(REFERENCE, order)
  row = text.encode('the cat and the log sat. xyz')
  got = scores.token_logprobs(lm, row[None])[0]
  np.testing.assert_allclose(got, reference_logprob(REFERENCE, row, order), rtol=1e-10)


@pytest.mark.parametrize('context', ['', 'th', 'the c', 'zq'])
def test_conditional_distribution_sums_to_one(context):
  lm = scores.fit_ngram(REFERENCE, 4)
  rows = np.stack([np.append(text.encode(context), b) for b in range(256)])
  logp = scores.token_logprobs(lm, rows)[:, -1]
  assert math.isclose(np.exp(logp).sum(), 1.0, rel_tol=1e-9)


def test_rows_do_not_share_context():
  lm = scores.fit_ngram(REFERENCE, 3)
  a, b = text.encode('the cat'), text.encode('sat on')
  together = scores.token_logprobs(lm, np.stack([a, np.append(b, [0])]))[1, :-1]
  alone = scores.token_logprobs(lm, b[None])[0]
  np.testing.assert_array_equal(together, alone)


def test_noise_lowers_the_score_and_pad_is_ignored():
  lm = scores.fit_ngram(REFERENCE, 4)
  clean = text.encode('the dog sat on the mat.')
  noisy = clean.copy()
  noisy[::3] = text.encode('#')[0]
  padded = np.append(clean, [text.PAD] * 5)
  got = scores.ngram_score(lm, np.stack([padded, np.append(noisy, [text.PAD] * 5)]))
  assert got[0] > got[1]
  assert math.isclose(got[0], scores.ngram_score(lm, clean[None])[0])
  np.testing.assert_array_equal(scores.token_logprobs(lm, padded[None])[0, -5:], 0.0)


def test_length_score_counts_non_pad_tokens():
  rows = np.array([[text.BOS, 65, 66, text.PAD], [text.BOS, 65, text.PAD, text.PAD]])
  np.testing.assert_array_equal(scores.length_score(rows), [3.0, 2.0])


def test_cache_is_keyed_by_inputs(tmp_path):
  calls = []
  def compute():
    calls.append(1)
    return np.arange(3.0)
  a, b = np.arange(4), np.arange(5)
  first = scores.cached(str(tmp_path), 'x', compute, a, order=2)
  again = scores.cached(str(tmp_path), 'x', compute, a, order=2)
  scores.cached(str(tmp_path), 'x', compute, b, order=2)
  scores.cached(str(tmp_path), 'x', compute, a, order=3)
  np.testing.assert_array_equal(first, again)
  assert len(calls) == 3
  assert len(list(tmp_path.glob('x-*.npy'))) == 3


def test_ngram_scores_cached(tmp_path):
  rows = np.stack([text.encode('the cat sat'), text.encode('zzz qqq xxx')])
  got = scores.ngram_scores(REFERENCE, rows, str(tmp_path), order=3)
  np.testing.assert_allclose(got, scores.ngram_score(scores.fit_ngram(REFERENCE, 3), rows))
  assert len(list(tmp_path.glob('ngram3-*.npy'))) == 1


@pytest.mark.parametrize('call, match', [
    (lambda: scores.fit_ngram(REFERENCE, 0), 'order'),
    (lambda: scores.fit_ngram(REFERENCE, 8), 'order'),
    (lambda: scores.fit_ngram(np.full(4, text.PAD), 2), 'reference_tokens'),
    (lambda: scores.ngram_score(scores.fit_ngram(REFERENCE, 2), np.array([[1.5]])), 'tokens'),
    (lambda: scores.length_score(np.array([[300]])), 'tokens'),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
