"""Streaming rows from ArrayRecord through grain, for pools too large to keep on device.

The curriculum still decides the order: the train step returns the next step's indices (computed
on device from the curriculum state one step ahead), and the host reads exactly those rows. The
stream itself is stateless, so the checkpoint needs only the pending indices to resume exactly.
"""

import grain
import numpy as np

from data import lm
from data.pool import corpora


class RecordStream:
  """Random access by pool index over the configured corpora, concatenated in config order."""

  def __init__(self, config_data, split: str):
    self._datasets = [grain.MapDataset.source(lm.data_source(c, config_data.seq_len, split,
                                                             config_data.data_dir))
                      for c in corpora(config_data)]
    self._starts = np.cumsum([0] + [len(d) for d in self._datasets])
    self.source = np.repeat(np.arange(len(self._datasets), dtype=np.int32), np.diff(self._starts))

  def __len__(self) -> int:
    return int(self._starts[-1])

  def read(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    idx = np.asarray(idx)
    if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f'stream index out of range [0, {len(self)}): {idx.min()}..{idx.max()}')
    source = np.searchsorted(self._starts, idx, side='right') - 1
    rows = [self._datasets[s][int(i - self._starts[s])]['tokens'] for s, i in zip(source, idx)]
    return {'tokens': np.stack(rows).astype(np.int32), 'source': source.astype(np.int32)}
