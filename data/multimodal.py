"""Skewed multimodal workload over digit images: generator, TFDS builder, row packing.

Each sample is a few 8x8 digit images (`sklearn.datasets.load_digits`), a text prompt of
log-normal length (a window of Shakespeare) and a caption that names the digits, so the model has
something to learn from the images. As in DFLOP's workload, samples are single images, multi-image
sets (2-8) or "videos" (10-32 frames of one digit); `skew` in [0, 1] moves the mix from all single
images with short, even prompts (0) to 60/30/10 single/multi/video with heavy-tailed prompts (1).

Decoder sequence of one sample: [image tokens][BOS][prompt][caption]; the loss is on the caption.
`pack_row` lays several samples into one static-shape row (positions restart per sample);
which samples share a row is the balancer's decision (`parallel.balance`).
"""

import dataclasses
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data import text

KINDS = ('single', 'multi', 'video')
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
NUM_TRAIN_IMAGES = 1500  # of load_digits' 1797; the rest are the test split's images
MULTI_IMAGES = (2, 8)
VIDEO_FRAMES = (10, 32)
PROMPT_MEDIAN = 24  # bytes
PROMPT_MAX = 384
PROMPT_PLAYS = ('macbeth', 'othello', 'king-lear')


def mixture(skew: float) -> tuple[np.ndarray, float]:
  """(probabilities of KINDS, log-normal sigma of the prompt length) at a skew level."""
  if not 0.0 <= skew <= 1.0:
    raise ValueError(f'skew must be in [0, 1], got {skew}')
  return np.array([1 - 0.4 * skew, 0.3 * skew, 0.1 * skew]), 0.3 + 0.7 * skew


def digit_images(split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, 8, 8] (0..16) and int32 labels of one split."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int32)
  if split == 'train':
    return images[:NUM_TRAIN_IMAGES], labels[:NUM_TRAIN_IMAGES]
  if split == 'test':
    return images[NUM_TRAIN_IMAGES:], labels[NUM_TRAIN_IMAGES:]
  raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def caption(kind: int, labels: np.ndarray) -> str:
  names = [DIGIT_NAMES[d] for d in labels]
  if KINDS[kind] == 'video':
    return f' a video of a {names[0]}.'
  return ' ' + ' '.join(names) + '.'


def generate_examples(num: int, skew: float, seed: int, split: str = 'train') -> Iterator[dict]:
  """`num` samples of the mix; deterministic in (num, skew, seed, split)."""
  if num < 1:
    raise ValueError(f'num must be >= 1, got {num}')
  probs, sigma = mixture(skew)
  images, labels = digit_images(split)
  by_class = [np.flatnonzero(labels == d) for d in range(10)]
  plays = text.shakespeare_plays()
  corpus = '\n'.join(plays[p] for p in PROMPT_PLAYS).encode('utf-8')
  rng = np.random.default_rng(seed)
  for i in range(num):
    kind = int(rng.choice(len(KINDS), p=probs))
    if KINDS[kind] == 'video':
      frames = rng.integers(VIDEO_FRAMES[0], VIDEO_FRAMES[1] + 1)
      idx = rng.choice(by_class[rng.integers(10)], size=frames)
    else:
      count = 1 if KINDS[kind] == 'single' else rng.integers(MULTI_IMAGES[0], MULTI_IMAGES[1] + 1)
      idx = rng.integers(len(images), size=count)
    length = int(np.clip(rng.lognormal(np.log(PROMPT_MEDIAN), sigma), 4, PROMPT_MAX))
    start = int(rng.integers(len(corpus) - length))
    yield {
        'id': i,
        'kind': kind,
        'images': images[idx],
        'labels': labels[idx],
        'prompt': corpus[start:start + length].decode('utf-8', errors='ignore'),
        'caption': caption(kind, labels[idx]),
    }


@dataclasses.dataclass
class DigitStoriesConfig(tfds.core.BuilderConfig):
  skew: float = 1.0
  num_train: int = 4096
  num_test: int = 512


class DigitStories(tfds.core.GeneratorBasedBuilder):
  """The skewed digit workload as ArrayRecord (Tensor features only: no Image, no TensorFlow)."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      DigitStoriesConfig(name='uniform', skew=0.0),
      DigitStoriesConfig(name='mild', skew=0.5),
      DigitStoriesConfig(name='dflop', skew=1.0),
      DigitStoriesConfig(name='dflop_tiny', skew=1.0, num_train=96, num_test=16),  # for tests
  ]
  DEFAULT_CONFIG_NAME = 'dflop'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'id': np.int64,
        'kind': tfds.features.ClassLabel(names=KINDS),
        'images': tfds.features.Tensor(shape=(None, 8, 8), dtype=np.uint8),
        'labels': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'prompt': tfds.features.Text(),
        'caption': tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated from installed packages
    cfg = self.builder_config
    return {'train': self._generate_examples(cfg.num_train, 'train', seed=0),
            'test': self._generate_examples(cfg.num_test, 'test', seed=1)}

  def _generate_examples(self, num, split, seed):
    for example in generate_examples(num, self.builder_config.skew, seed, split):
      yield example['id'], example


def load(data_dir: str, config: str = 'dflop', split: str = 'train'):
  """Prepares the builder once under `data_dir` and returns a random-access ArrayRecord source."""
  builder = DigitStories(config=config, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()
  return builder.as_data_source(split=split)


def _as_text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else value


def sample_sequence(example: dict, tokens_per_image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Tokens, image slots and caption mask of one sample: [image tokens][BOS][prompt][caption]."""
  num_image_tokens = len(example['images']) * tokens_per_image
  prompt = text.encode(_as_text(example['prompt']))
  cap = text.encode(_as_text(example['caption']))
  tokens = np.concatenate([np.full(num_image_tokens, text.PAD, np.int32), [text.BOS], prompt, cap])
  slots = np.full(len(tokens), -1, np.int32)
  slots[:num_image_tokens] = np.arange(num_image_tokens)
  is_caption = np.zeros(len(tokens), bool)
  is_caption[len(tokens) - len(cap):] = True
  return tokens.astype(np.int32), slots, is_caption


def sample_sizes(examples: Sequence[dict], tokens_per_image: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-sample encoder load (images) and decoder load (sequence tokens), the balancer's inputs."""
  images = np.array([len(e['images']) for e in examples], np.int64)
  tokens = np.array([len(e['images']) * tokens_per_image + 1 + len(text.encode(_as_text(e['prompt'])))
                     + len(text.encode(_as_text(e['caption']))) for e in examples], np.int64)
  return images, tokens


def pack_row(examples: Sequence[dict], num_images: int, num_tokens: int,
             tokens_per_image: int) -> dict[str, np.ndarray]:
  """Samples laid end to end in one row of static shape (num_images, num_tokens).

  Returns images [num_images, 8, 8], tokens / image_slots / positions / targets / segment_ids
  [num_tokens] and loss weights [num_tokens] (1 where the target is a caption byte). Padding has
  segment id -1, weight 0 and slot -1.
  """
  row = {
      'images': np.zeros((num_images, 8, 8), np.uint8),
      'tokens': np.full(num_tokens, text.PAD, np.int32),
      'image_slots': np.full(num_tokens, -1, np.int32),
      'positions': np.zeros(num_tokens, np.int32),
      'targets': np.full(num_tokens, text.PAD, np.int32),
      'weights': np.zeros(num_tokens, np.float32),
      'segment_ids': np.full(num_tokens, -1, np.int32),
  }
  image_at, token_at = 0, 0
  for segment, example in enumerate(examples):
    tokens, slots, is_caption = sample_sequence(example, tokens_per_image)
    n, k = len(tokens), len(example['images'])
    if image_at + k > num_images or token_at + n > num_tokens:
      raise ValueError(f'samples need more than the row shape (num_images={num_images}, '
                       f'num_tokens={num_tokens})')
    span = slice(token_at, token_at + n)
    row['images'][image_at:image_at + k] = example['images']
    row['tokens'][span] = tokens
    row['image_slots'][span] = np.where(slots >= 0, slots + image_at * tokens_per_image, -1)
    row['positions'][span] = np.arange(n)
    row['targets'][token_at:token_at + n - 1] = tokens[1:]
    row['weights'][token_at:token_at + n - 1] = is_caption[1:]
    row['segment_ids'][span] = segment
    image_at, token_at = image_at + k, token_at + n
  return row


def pack_rows(rows: Sequence[Sequence[dict]], num_images: int, num_tokens: int,
              tokens_per_image: int) -> dict[str, np.ndarray]:
  """`pack_row` for each row, stacked on a leading batch axis."""
  packed = [pack_row(r, num_images, num_tokens, tokens_per_image) for r in rows]
  return {k: np.stack([p[k] for p in packed]) for k in packed[0]}
