"""A mixed-quality byte corpus: clean Shakespeare and KJV mixed with degraded copies.

Examples are fixed-length byte chunks, `[BOS] + seq_len bytes` (so `tokens` is [N, T+1] int32, the
pool layout). A chunk is clean (level 0) or degraded at level 1..3 by one of three corruptions:

- `noise`: a fraction of the bytes replaced by random printable characters;
- `shuffle`: a fraction of the words permuted among themselves (characters stay fluent);
- `boilerplate`: a span overwritten with repeated web boilerplate.

The texts split three ways, disjoint: the training chunks; a clean `reference` stream that the
n-gram scorer is fitted on (the "high-quality reference set" of quality scoring); and clean
held-out chunks for evaluation (Shakespeare's `HELDOUT_PLAYS` and held-out KJV books).
"""

from typing import NamedTuple, Optional

import numpy as np

from data import scores as scores_lib
from data import text

KINDS = ('clean', 'noise', 'shuffle', 'boilerplate')
SOURCES = ('shakespeare', 'kjv')
NUM_LEVELS = 4  # 0 = clean, 3 = worst
NOISE_RATE = (0.0, 0.04, 0.12, 0.3)  # fraction of bytes replaced
SHUFFLE_RATE = (0.0, 0.25, 0.6, 1.0)  # fraction of words permuted
BOILERPLATE_RATE = (0.0, 0.25, 0.5, 0.85)  # fraction of the chunk overwritten
BOILERPLATE = (b'Click here to subscribe to our newsletter! Copyright (c) 2024 All rights '
               b'reserved. Share on Facebook | Twitter | Email. Cookies help us deliver our '
               b'services. Read more >> ')

REFERENCE_PLAYS = ('macbeth', 'othello', 'king-lear')
REFERENCE_BOOKS = ('1-19', '2-05')  # Psalms, Acts
HELDOUT_BOOKS = ('1-20', '2-04', '2-27')  # Proverbs, John, Revelation


class MixedCorpus(NamedTuple):
  tokens: np.ndarray  # int32 [N, T+1]: BOS, then seq_len bytes
  source: np.ndarray  # int32 [N], index into SOURCES
  level: np.ndarray  # int32 [N], 0 clean .. NUM_LEVELS-1 most degraded
  kind: np.ndarray  # int32 [N], index into KINDS (0 iff level 0)
  score: np.ndarray  # float64 [N], n-gram mean log-probability under the reference model
  heldout: np.ndarray  # int32 [M, T+1], clean chunks of held-out text
  heldout_source: np.ndarray  # int32 [M]
  reference: np.ndarray  # int32 [R], clean bytes the scorer is fitted on


def _texts() -> dict[str, dict[str, str]]:
  """{split: {source: text}} for the train / reference / heldout splits."""
  plays, books = text.shakespeare_plays(), text.kjv_books()
  split_of = {**{p: 'heldout' for p in text.HELDOUT_PLAYS}, **{p: 'reference' for p in REFERENCE_PLAYS},
              **{b: 'heldout' for b in HELDOUT_BOOKS}, **{b: 'reference' for b in REFERENCE_BOOKS}}
  out = {s: {src: [] for src in SOURCES} for s in ('train', 'reference', 'heldout')}
  for source, docs in zip(SOURCES, (plays, books)):
    for name, body in docs.items():
      out[split_of.get(name, 'train')][source].append(body)
  return {s: {src: ''.join(v) for src, v in d.items()} for s, d in out.items()}


def _chunks(body: str, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` distinct non-overlapping byte chunks [count, seq_len], in random order."""
  data = np.frombuffer(body.encode('utf-8'), np.uint8)
  available = data.size // seq_len
  if count > available:
    raise ValueError(f'num_examples asks for {count} chunks of {seq_len} bytes from a text of '
                     f'{available}; lower num_examples or seq_len')
  starts = rng.choice(available, count, replace=False) * seq_len
  return data[starts[:, None] + np.arange(seq_len)]


def _add_noise(chunks: np.ndarray, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  hit = rng.random(chunks.shape) < rate[:, None]
  return np.where(hit, rng.integers(32, 127, chunks.shape), chunks).astype(np.uint8)


def _shuffle_words(chunk: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Permutes a fraction of the space-separated words; the length and the spaces are unchanged."""
  words = bytes(chunk).split(b' ')
  chosen = np.flatnonzero(rng.random(len(words)) < rate)
  picked = [words[i] for i in chosen]
  for i, j in zip(chosen, rng.permutation(len(chosen))):
    words[i] = picked[j]
  return np.frombuffer(b' '.join(words), np.uint8)


def _add_boilerplate(chunks: np.ndarray, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  n, seq_len = chunks.shape
  span = np.round(rate * seq_len).astype(np.int64)
  start = rng.integers(0, seq_len - span + 1)
  phase = rng.integers(0, len(BOILERPLATE), n)  # where in the boilerplate the span begins
  pos = np.arange(seq_len) - start[:, None]
  inside = (pos >= 0) & (pos < span[:, None])
  tiled = np.frombuffer(BOILERPLATE, np.uint8)[(pos + phase[:, None]) % len(BOILERPLATE)]
  return np.where(inside, tiled, chunks)


def degrade(chunks: np.ndarray, kind: np.ndarray, level: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
  """Applies corruption `KINDS[kind[i]]` at `level[i]` to each byte chunk [N, seq_len]."""
  out = chunks.copy()
  for k, name in enumerate(KINDS[1:], start=1):
    rows = np.flatnonzero(kind == k)
    if name == 'noise':
      out[rows] = _add_noise(chunks[rows], np.take(NOISE_RATE, level[rows]), rng)
    elif name == 'shuffle':
      for r in rows:
        out[r] = _shuffle_words(chunks[r], SHUFFLE_RATE[level[r]], rng)
    else:
      out[rows] = _add_boilerplate(chunks[rows], np.take(BOILERPLATE_RATE, level[rows]), rng)
  return out


def _with_bos(chunks: np.ndarray) -> np.ndarray:
  return np.concatenate([np.full((chunks.shape[0], 1), text.BOS), chunks], axis=1).astype(np.int32)


def build(num_examples: int, seq_len: int = 128, clean_fraction: float = 0.25,
          num_heldout: int = 256, ngram_order: int = 5, seed: int = 0,
          cache_dir: Optional[str] = None) -> MixedCorpus:
  """`num_examples` chunks, half from each source; `clean_fraction` of them clean, the rest spread
  evenly over levels 1..3 and the three corruptions. Scores are cached in `cache_dir` if given."""
  if num_examples < 2:
    raise ValueError(f'num_examples must be >= 2, got {num_examples}')
  if seq_len < 1:
    raise ValueError(f'seq_len must be >= 1, got {seq_len}')
  if not 0 <= clean_fraction <= 1:
    raise ValueError(f'clean_fraction must be in [0, 1], got {clean_fraction}')
  rng = np.random.default_rng(seed)
  texts = _texts()
  per_source = (num_examples // 2, num_examples - num_examples // 2)
  clean = np.concatenate([_chunks(texts['train'][s], seq_len, c, rng)
                          for s, c in zip(SOURCES, per_source)])
  source = np.repeat(np.arange(len(SOURCES)), per_source).astype(np.int32)
  degraded = rng.random(num_examples) >= clean_fraction
  level = np.where(degraded, rng.integers(1, NUM_LEVELS, num_examples), 0).astype(np.int32)
  kind = np.where(degraded, rng.integers(1, len(KINDS), num_examples), 0).astype(np.int32)
  tokens = _with_bos(degrade(clean, kind, level, rng))
  # Interleave the sources so that an unordered pass is not one source after the other.
  mix = rng.permutation(num_examples)
  tokens, source, level, kind = tokens[mix], source[mix], level[mix], kind[mix]

  heldout_per_source = (num_heldout // 2, num_heldout - num_heldout // 2)
  heldout = _with_bos(np.concatenate([_chunks(texts['heldout'][s], seq_len, c, rng)
                                      for s, c in zip(SOURCES, heldout_per_source)]))
  heldout_source = np.repeat(np.arange(len(SOURCES)), heldout_per_source).astype(np.int32)
  reference = text.encode(''.join(texts['reference'][s] for s in SOURCES))
  score = scores_lib.ngram_scores(reference, tokens, cache_dir, ngram_order)
  return MixedCorpus(tokens, source, level, kind, score, heldout, heldout_source, reference)
