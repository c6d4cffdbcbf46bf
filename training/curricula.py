"""Builds the configured curriculum over a pool; each kind's own module holds its logic."""

import numpy as np

from curriculum import api, ordering


def build(config, pool) -> api.Curriculum:
  c, batch = config.curriculum, config.train.batch_size
  if c.kind == 'uniform':
    return api.uniform(pool.size, batch)
  if c.kind == 'ordered':
    if c.get('order'):  # a static order of the pool's scores (STR, SAW, ...), one pass
      return api.ordered(ordering.permutation_from_config(c, np.asarray(pool.score), c.seed,
                                                          pool.size), batch)
    # Without a scored order, one pass in corpus order (the natural reading order).
    return api.ordered(np.arange(pool.size), batch)
  if c.kind in ('phased', 'tournament'):  # tournament: training/planning.py sets the order
    source = np.asarray(pool.source)
    order = list(c.source_order) or list(range(int(source.max()) + 1))
    return api.phased(source, order, c.steps_per_source, batch)
  raise ValueError(f'curriculum.kind={c.kind!r} is unknown')
