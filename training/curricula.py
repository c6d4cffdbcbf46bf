"""Builds the configured curriculum over a pool; each kind's own module holds its logic."""

import numpy as np

from curriculum import api


def build(config, pool) -> api.Curriculum:
  c, batch = config.curriculum, config.train.batch_size
  if c.kind == 'uniform':
    return api.uniform(pool.size, batch)
  if c.kind == 'ordered':
    # Without a scored order, one pass in corpus order (the natural reading order).
    return api.ordered(np.arange(pool.size), batch)
  if c.kind == 'phased':
    source = np.asarray(pool.source)
    order = list(c.source_order) or list(range(int(source.max()) + 1))
    return api.phased(source, order, c.steps_per_source, batch)
  raise ValueError(f'curriculum.kind={c.kind!r} is unknown')
