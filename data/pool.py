"""The example pool: fixed-length token rows plus per-example metadata that curricula read.

A `Pool` is a pytree of arrays. Small pools live on device and are gathered inside the jitted step
(`gather`); the streaming path (`data/stream.py`) reads the same rows by index from ArrayRecord.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from data import lm


class Pool(NamedTuple):
  tokens: jax.Array  # int32 [N, seq_len + 1]
  source: jax.Array  # int32 [N], which corpus (index into the config's corpus list)
  score: jax.Array  # float32 [N], e.g. quality or difficulty; 0 where none is attached
  cluster: jax.Array  # int32 [N], e.g. SPaCe cluster; -1 where none

  @property
  def size(self) -> int:
    return self.tokens.shape[0]

  def gather(self, idx: jax.Array) -> dict:
    return {'tokens': jnp.take(self.tokens, idx, axis=0), 'source': jnp.take(self.source, idx)}

  def metadata(self) -> dict:
    return {'source': self.source, 'score': self.score, 'cluster': self.cluster}


def from_tokens(tokens: np.ndarray, source: np.ndarray | None = None, score=None,
                cluster=None) -> Pool:
  n = len(tokens)
  source = np.zeros(n, np.int32) if source is None else np.asarray(source, np.int32)
  score = np.zeros(n, np.float32) if score is None else np.asarray(score, np.float32)
  cluster = np.full(n, -1, np.int32) if cluster is None else np.asarray(cluster, np.int32)
  for name, arr in (('source', source), ('score', score), ('cluster', cluster)):
    if arr.shape != (n,):
      raise ValueError(f'pool {name} has shape {arr.shape}, expected ({n},)')
  if not np.isfinite(score).all():
    raise ValueError('pool score has non-finite values')
  return Pool(np.asarray(tokens, np.int32), source, score, cluster)


def corpora(config_data) -> list[str]:
  return config_data.corpus.split(',')


def load(config_data, split: str) -> Pool:
  """The pool of `split` for the configured corpora; rows of corpus i have source i."""
  parts = [lm.read_split(c, config_data.seq_len, split, config_data.data_dir)
           for c in corpora(config_data)]
  tokens = np.concatenate([p['tokens'] for p in parts])
  source = np.concatenate([np.full(len(p['tokens']), i, np.int32) for i, p in enumerate(parts)])
  return from_tokens(tokens, source)
