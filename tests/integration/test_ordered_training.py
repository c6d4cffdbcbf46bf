"""The trainer runs an n-gram-scored SAW pass on 8 fake devices and draws the rows in SAW order."""

import jax
import numpy as np
import pytest

from curriculum import ordering
from tests.helpers import losses, tiny_config, train


@pytest.mark.slow
def test_trainer_follows_the_saw_order_of_ngram_scores(tmp_path):
  config = tiny_config(curriculum__kind='ordered', curriculum__order='saw', data__score='ngram',
                       train__steps=4, train__log_every=1)
  trainer = train(config, tmp_path)
  assert len(losses(tmp_path)) == 4 and np.isfinite(losses(tmp_path)).all()
  expected = ordering.saw(np.asarray(trainer.pool.score))
  state = trainer.curriculum.init(jax.random.key(0))
  for step in range(4):
    idx, state = trainer.curriculum.next_batch(state)
    batch = config.train.batch_size
    np.testing.assert_array_equal(idx, expected[step * batch:(step + 1) * batch])
