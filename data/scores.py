"""Per-example scores for ordering a corpus: a character n-gram LM log-probability and length.

The n-gram model is the KenLM analogue of the data-organization paper's quality scores: an
interpolated Kneser-Ney model over bytes, fitted on a clean reference split, that scores each
example by its mean per-byte log-probability (higher = more like the reference). Everything is
vectorized numpy: an n-gram is an int64 key (oldest token most significant), counts come from
`np.unique`, lookups from `np.searchsorted`.

Scores are cached as `.npy` files beside the dataset, keyed by a hash of every input.
"""

import hashlib
import os
from typing import Callable, NamedTuple, Optional

import numpy as np

from data.text import BOS, PAD, VOCAB

NUM_BYTES = 256  # only byte targets are counted and scored; PAD and BOS are never predicted


class NgramLM(NamedTuple):
  """Interpolated Kneser-Ney byte n-gram model; entry k-1 of each tuple holds order k."""

  grams: tuple[np.ndarray, ...]  # sorted unique n-gram keys
  counts: tuple[np.ndarray, ...]  # raw counts (highest order) or continuation counts (lower)
  contexts: tuple[np.ndarray, ...]  # sorted unique context keys (the gram key // VOCAB)
  context_totals: tuple[np.ndarray, ...]  # sum of counts over the grams of each context
  context_types: tuple[np.ndarray, ...]  # number of distinct grams of each context
  discounts: tuple[float, ...]

  @property
  def order(self) -> int:
    return len(self.grams)


def _rows(tokens) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim == 1:
    tokens = tokens[None]
  if tokens.ndim != 2 or tokens.dtype.kind not in 'iu':
    raise ValueError(f'tokens must be an integer array [examples, length], got '
                     f'{tokens.dtype} {tokens.shape}')
  if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB):
    raise ValueError(f'tokens must lie in [0, {VOCAB}), got [{tokens.min()}, {tokens.max()}]')
  return tokens.astype(np.int64)


def _gram_keys(tokens: np.ndarray, order: int) -> np.ndarray:
  """Keys [examples, length] of the `order`-grams ending at each position; a row's left edge is
  padded with BOS so that contexts never cross rows. Every lower-order gram and context is a
  function of this key: the k-gram is `key % VOCAB**k`, its context that // VOCAB."""
  padded = np.concatenate([np.full((tokens.shape[0], order - 1), BOS, np.int64), tokens], axis=1)
  width = tokens.shape[1]
  key = np.zeros(tokens.shape, np.int64)
  for age in range(order):  # the token `age` positions back is digit `age` of the key
    start = order - 1 - age
    key += padded[:, start:start + width] * VOCAB ** age
  return key


def _discount(counts: np.ndarray) -> float:
  """The usual Kneser-Ney estimate n1 / (n1 + 2 n2) from the count-of-counts, kept inside (0, 1)."""
  n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
  return float(np.clip(n1 / (n1 + 2 * n2), 0.05, 0.95)) if n1 + n2 else 0.5


def fit_ngram(reference_tokens, order: int = 5) -> NgramLM:
  """Fits the model on reference rows [examples, length] (or one 1-D stream) of token ids."""
  if not 1 <= order <= 7:  # VOCAB**7 still fits an int64 key
    raise ValueError(f'order must be in [1, 7], got {order}')
  tokens = _rows(reference_tokens)
  is_byte = tokens < NUM_BYTES
  if not is_byte.any():
    raise ValueError('reference_tokens holds no byte tokens to fit on')
  highest, counts = np.unique(_gram_keys(tokens, order)[is_byte], return_counts=True)
  grams, gram_counts = [highest], [counts]
  for k in range(order - 1, 0, -1):
    # Continuation count of a k-gram: the number of distinct tokens seen right before it.
    suffix, continuations = np.unique(grams[0] % VOCAB ** k, return_counts=True)
    grams.insert(0, suffix)
    gram_counts.insert(0, continuations)
  contexts, totals, types = [], [], []
  for g, c in zip(grams, gram_counts):
    ctx, first, num = np.unique(g // VOCAB, return_index=True, return_counts=True)
    contexts.append(ctx)
    totals.append(np.add.reduceat(c, first) if c.size else c)
    types.append(num)
  return NgramLM(tuple(grams), tuple(gram_counts), tuple(contexts), tuple(totals), tuple(types),
                 tuple(_discount(c) for c in gram_counts))


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
  pos = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
  return np.where(sorted_keys[pos] == queries, values[pos], 0)


def token_logprobs(lm: NgramLM, tokens) -> np.ndarray:
  """Natural-log probability [examples, length] of each token given the ones before it in its row;
  0 at PAD and BOS positions."""
  tokens = _rows(tokens)
  is_byte = tokens < NUM_BYTES
  # Real text repeats its n-grams: score each distinct one once (lookups in sorted order are also
  # far more cache-friendly than random ones).
  distinct, inverse = np.unique(_gram_keys(tokens, lm.order)[is_byte], return_inverse=True)
  prob = np.full(distinct.shape, 1.0 / NUM_BYTES)
  for k in range(lm.order):
    gram = distinct % VOCAB ** (k + 1)
    count = _lookup(lm.grams[k], lm.counts[k], gram)
    total = _lookup(lm.contexts[k], lm.context_totals[k], gram // VOCAB)
    types = _lookup(lm.contexts[k], lm.context_types[k], gram // VOCAB)
    d = lm.discounts[k]
    interpolated = (np.maximum(count - d, 0) + d * types * prob) / np.maximum(total, 1)
    prob = np.where(total > 0, interpolated, prob)  # unseen context: back off entirely
  out = np.zeros(tokens.shape)
  out[is_byte] = np.log(prob)[inverse]
  return out


def ngram_score(lm: NgramLM, tokens) -> np.ndarray:
  """Mean per-byte log-probability of each row (higher = closer to the reference text)."""
  tokens = _rows(tokens)
  num = np.maximum(np.sum(tokens < NUM_BYTES, axis=1), 1)
  return token_logprobs(lm, tokens).sum(axis=1) / num


def length_score(tokens) -> np.ndarray:
  """Number of non-PAD tokens of each row."""
  return np.sum(_rows(tokens) != PAD, axis=1).astype(np.float64)


def fingerprint(*arrays: np.ndarray, **params) -> str:
  """A short hash of the arrays' bytes, dtypes and shapes and of the keyword parameters."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  h.update(repr(sorted(params.items())).encode())
  return h.hexdigest()[:16]


def cached(cache_dir: Optional[str], name: str, compute: Callable[[], np.ndarray],
           *arrays: np.ndarray, **params) -> np.ndarray:
  """`compute()`, stored as `<cache_dir>/<name>-<hash of arrays and params>.npy` on first use
  (computed every time when `cache_dir` is None)."""
  if cache_dir is None:
    return np.asarray(compute())
  path = os.path.join(cache_dir, f'{name}-{fingerprint(*arrays, **params)}.npy')
  if os.path.exists(path):
    return np.load(path)
  values = np.asarray(compute())
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp.npy'  # rename is atomic: readers never see half a file
  np.save(tmp, values)
  os.replace(tmp, path)
  return values


def ngram_scores(reference_tokens, tokens, cache_dir: Optional[str],
                 order: int = 5) -> np.ndarray:
  """`ngram_score` of `tokens` under a model fitted on `reference_tokens`, cached in `cache_dir`."""
  return cached(cache_dir, f'ngram{order}',
                lambda: ngram_score(fit_ngram(reference_tokens, order), tokens),
                np.asarray(reference_tokens), np.asarray(tokens), order=order)


SCORE_KINDS = ('none', 'length', 'ngram')


def pool_scores(kind: str, tokens, reference_tokens=None, cache_dir: Optional[str] = None,
                order: int = 5) -> np.ndarray:
  """The `data.score` of each row of a pool: zeros, its length, or its n-gram score under a model
  fitted on `reference_tokens`."""
  if kind == 'none':
    return np.zeros(len(tokens))
  if kind == 'length':
    return length_score(tokens)
  if kind == 'ngram':
    if reference_tokens is None:
      raise ValueError('data.score=ngram needs reference_tokens to fit the n-gram model on')
    return ngram_scores(reference_tokens, tokens, cache_dir, order)
  raise ValueError(f'data.score={kind!r} is unknown; choose one of {list(SCORE_KINDS)}')
