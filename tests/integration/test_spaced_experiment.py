"""The reduced SPaCe reproduction runs end to end and writes its summary and plots."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_spaced_experiment_quick(tmp_path):
  subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'spaced.py'), '--quick',
                  '--out', str(tmp_path / 'out'), '--workdir', str(tmp_path / 'work')],
                 check=True, cwd=ROOT, timeout=1800)
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert set(summary['arms']) == {'uniform_full', 'uniform_reduced', 'random_bandit', 'spaced',
                                  'bandit_full'}
  assert summary['headline']['seeds'] == 3 and summary['headline']['target'] == 0.8
  assert summary['arms']['spaced']['unique_samples'][0] <= 20  # K * l of the quick preset
  for name in ('accuracy_vs_steps.png', 'cluster_selection_spaced.png'):
    assert (tmp_path / 'out' / name).stat().st_size > 0
