"""The trainer's `ordered` curriculum follows `curriculum.order` over the pool's scores."""

import jax
import numpy as np
import pytest

from curriculum import ordering
from data import pool as pool_lib
from tests import helpers
from training import curricula


def _pool(n=64, seed=0):
  rng = np.random.default_rng(seed)
  return pool_lib.from_tokens(rng.integers(0, 256, (n, 9)), score=rng.standard_normal(n))


def _first_batches(curriculum, count):
  state, out = curriculum.init(jax.random.key(0)), []
  for _ in range(count):
    idx, state = curriculum.next_batch(state)
    out.append(np.asarray(idx))
  return np.concatenate(out)


@pytest.mark.parametrize('order, args', [('saw', {}), ('stair', {'window': 16}),
                                         ('fold', {'layers': 3}), ('random', {})])
def test_ordered_curriculum_reads_the_configured_order(order, args):
  c = helpers.tiny_config(curriculum__kind='ordered', curriculum__order=order,
                          curriculum__seed=3)
  c.curriculum.order_args = args
  pool = _pool()
  got = _first_batches(curricula.build(c, pool), 64 // c.train.batch_size)
  expected = ordering.permutation_from_config(c.curriculum, np.asarray(pool.score), 3)
  np.testing.assert_array_equal(got, expected)


def test_ordered_without_order_keeps_corpus_order():
  c = helpers.tiny_config(curriculum__kind='ordered')
  got = _first_batches(curricula.build(c, _pool()), 2)
  np.testing.assert_array_equal(got, np.arange(2 * c.train.batch_size))


def test_bad_order_names_the_key():
  c = helpers.tiny_config(curriculum__kind='ordered', curriculum__order='sawtooth')
  with pytest.raises(ValueError, match='curriculum.order'):
    curricula.build(c, _pool())


@pytest.mark.slow
def test_pool_load_attaches_ngram_scores():
  c = helpers.tiny_config(data__score='ngram')
  pool = pool_lib.load(c.data, 'train')
  assert pool.score.shape == (pool.size,) and np.std(pool.score) > 0.1
  assert np.all(np.asarray(pool_lib.load(c.data, 'validation').score) == 0)


@pytest.mark.parametrize('arg', [None, 'stair', 'sort', 'random', 'saw_jit', 'fold_jit'])
def test_data_organization_presets(arg):
  from configs import base, data_organization
  c = data_organization.get_config(arg)
  base.validate(c, 1)
  perm = ordering.permutation_from_config(c.curriculum, np.arange(100.0), c.curriculum.seed)
  assert sorted(perm) == list(range(100))
  assert c.train.steps * c.train.batch_size <= data_organization.POOL_WINDOWS


def test_data_organization_preset_rejects_unknown_order():
  from configs import data_organization
  with pytest.raises(ValueError, match='unknown order'):
    data_organization.get_config('sawtooth')
