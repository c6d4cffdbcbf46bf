"""RevFFN through the trainer (main.py's path) and the reduced experiment."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import moe, revffn
from tests import helpers
from training import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_revffn(steps):
  c = revffn.get_config('tiny')
  c.train.update(progress=False, steps=steps, log_every=1)
  c.checkpoint.every = 3
  c.optim.decay_steps = 6
  return c


@pytest.mark.slow
def test_revffn_resume_is_exact_across_the_stage_boundary(tmp_path):
  full = helpers.train(tiny_revffn(6), tmp_path / 'full')  # stage 1 is steps 1-4
  helpers.train(tiny_revffn(3), tmp_path / 'resumed')
  resumed = helpers.train(tiny_revffn(6), tmp_path / 'resumed')
  assert helpers.losses(tmp_path / 'full') == helpers.losses(tmp_path / 'resumed')
  for a, b in zip(helpers.leaves(full.final_state), helpers.leaves(resumed.final_state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_quick_experiment_writes_summary(tmp_path):
  subprocess.run([sys.executable, 'experiments/revffn.py', '--quick', '--out', str(tmp_path)],
                 cwd=REPO, check=True, timeout=900)
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert set(summary['arms']) == {'plain', 'remat', 'reversible'}
  assert np.isfinite(summary['headline']['value'])
  errors = summary['reconstruction']['float32']['relative_error_per_layer']
  assert max(errors) < 1e-4
  assert (tmp_path / 'revffn.png').exists()


@pytest.mark.slow
def test_revffn_run_starts_from_a_trained_moe_run(tmp_path):
  moe_config = moe.get_config('tiny')
  moe_config.train.update(progress=False, steps=4)
  moe_run = helpers.train(moe_config, tmp_path / 'moe')
  config = tiny_revffn(4)
  config.reversible.init_from = str(tmp_path / 'moe')
  trainer = loop.Trainer(config, str(tmp_path / 'revffn'))
  step, state, _, _ = trainer.initial_state()
  assert step == 0
  moe_model = moe_run.final_state[0]
  np.testing.assert_array_equal(state[0]['embed'][...], moe_model['embed'][...])
  np.testing.assert_array_equal(state[0]['layers']['block']['ffn']['w_up'][...],
                                moe_model['layers']['ffn']['w_up'][...])
  trainer.run()
  assert np.isfinite(helpers.losses(tmp_path / 'revffn')[-1])
