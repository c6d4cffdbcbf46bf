"""Shared test set-up: tiny configs and short training runs."""

import jax
import numpy as np

from configs import default
from training import loop


def tiny_config(**overrides):
  """configs/default.py:tiny with `section.key=value` overrides, unlocked for tests."""
  c = default.get_config('tiny')
  c.train.progress = False
  for dotted, value in overrides.items():
    section, key = dotted.split('__')
    c[section][key] = value
  return c


def train(config, workdir, devices=None):
  trainer = loop.Trainer(config, str(workdir), devices)
  trainer.run()
  return trainer


def losses(workdir):
  from training.metrics import read_jsonl
  return [r['loss'] for r in read_jsonl(f'{workdir}/metrics.jsonl')]


def leaves(tree):
  """Host copies of every array leaf; typed PRNG keys as their raw key data."""
  def host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))
  return [host(x) for x in jax.tree.leaves(tree)]
