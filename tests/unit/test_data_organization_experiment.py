"""The reduced data-organization experiment runs end to end and writes its summary and plots."""

import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), '..', '..', 'experiments', 'data_organization.py')


@pytest.mark.slow
def test_quick_experiment_writes_summary_and_plots(tmp_path):
  spec = importlib.util.spec_from_file_location('data_organization_experiment', SCRIPT)
  experiment = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(experiment)
  experiment.main(['--quick', '--out', str(tmp_path)])
  with open(tmp_path / 'summary.json', encoding='utf-8') as f:
    summary = json.load(f)
  assert set(summary['headline']) >= {'metric', 'value', 'target', 'seeds', 'std'}
  assert set(summary['arms']) == {'random', 'cl', 'fo3', 'zig3', 'seg_l10_h10', 'stair', 'saw',
                                  'stair_jit', 'saw_jit'}
  assert summary['arms']['random']['final_loss_minus_random']['mean'] == 0.0
  for name in ('loss_curves.png', 'score_vs_position.png', 'guidelines.png'):
    assert (tmp_path / name).stat().st_size > 10_000
