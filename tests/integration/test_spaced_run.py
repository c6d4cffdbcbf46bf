"""`main.py --config configs/spaced_arith.py` end to end, and exact resumption of its RL stage."""

import json
import os
import subprocess
import sys

import pytest

from configs import spaced_arith
from training import spaced

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick(tmp_path, steps: int):
  config = spaced_arith.get_config('quick')
  config.data.data_dir = str(tmp_path / 'data')
  config.train.update(steps=steps, eval_every=3, log_every=1)
  config.checkpoint.every = 3
  return config


@pytest.mark.slow
def test_main_runs_warm_up_reduction_and_rl(tmp_path):
  workdir = tmp_path / 'w'
  r = subprocess.run([sys.executable, 'main.py', '--config', 'configs/spaced_arith.py:quick',
                      '--workdir', str(workdir), f'--config.data.data_dir={tmp_path}/data'],
                     cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [row['step'] for row in rows] == [5, 10]
  assert all(0 <= row['reward'] <= 1 and 'sampled' in row['eval'] for row in rows)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '5']


@pytest.mark.slow
def test_resumed_rl_matches_an_uninterrupted_run(tmp_path):
  whole = spaced.run_spaced(quick(tmp_path, 5), str(tmp_path / 'whole'))
  spaced.run_spaced(quick(tmp_path, 3), str(tmp_path / 'split'))
  resumed = spaced.run_spaced(quick(tmp_path, 5), str(tmp_path / 'split'))
  assert [r['step'] for r in resumed] == [4, 5]
  for a, b in zip(whole[-2:], resumed):
    assert a['rows'] == b['rows'] and a['loss'] == b['loss'] and a.get('eval') == b.get('eval')
  logged = [json.loads(line)['step'] for line in open(tmp_path / 'split' / 'metrics.jsonl')]
  assert logged == [1, 2, 3, 4, 5]
  os.remove(tmp_path / 'split' / 'rl_pool.npz')
  with pytest.raises(FileNotFoundError, match='rl_pool.npz'):
    spaced.run_spaced(quick(tmp_path, 6), str(tmp_path / 'split'))

