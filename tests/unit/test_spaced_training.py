import numpy as np
import pytest

from configs import spaced_arith
from data import arithmetic
from training import spaced


def problems(n=8):
  questions = [f'{12345 + i}+54321=' for i in range(n)]
  answers = [str(12345 + i + 54321) for i in range(n)]
  prompts, targets = arithmetic.encode_problems(questions, answers, 13, 8)
  return dict(question=np.array(questions), prompts=prompts, answers=targets,
              difficulty=np.full(n, 5, np.int32))


def test_a_model_that_solves_nothing_is_rejected_before_reduction():
  config = spaced_arith.get_config('quick')
  config.train.eval_batch_size = 8
  graphdef, params = spaced.build_model(config)  # untrained: no 6-digit sum comes out right
  with pytest.raises(ValueError, match='solves no train problem'):
    spaced.reference_difficulty(graphdef, params, problems(), config)


def test_unknown_pool_and_curriculum_kind_are_rejected():
  config = spaced_arith.get_config('quick')
  config.curriculum.pool = 'everything'
  with pytest.raises(ValueError, match='curriculum.pool'):
    spaced.select_pool(problems(), np.full(8, 0.5), config, seed=0)
  config.curriculum.kind = 'ordered'
  with pytest.raises(ValueError, match='curriculum.kind'):
    spaced.make_curriculum(np.zeros(8, np.int32), config)
