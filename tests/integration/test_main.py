"""main.py end to end, and every bad input of the foundation: one clear line, non-zero exit."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import tiny_config, train
from training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main_py(*args, timeout=600):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_main_trains_the_tiny_preset(tmp_path):
  r = main_py('--config', 'configs/default.py:tiny', '--workdir', str(tmp_path))
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [row['step'] for row in rows] == [2, 4, 6, 8]
  assert all('loss' in row for row in rows) and 'eval/loss' in rows[-1]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '8']
  assert (tmp_path / 'loss.png').exists() and (tmp_path / 'tensorboard').is_dir()


@pytest.mark.parametrize('args,message', [
    (['--config', 'configs/nope.py'], 'nope.py'),
    (['--config', 'configs/default.py:tiny', '--config.model.num_layerz=2'], 'num_layerz'),
    (['--config', 'configs/default.py:tiny', '--config.model.num_layers=-1'], 'model.num_layers'),
    (['--config', 'configs/default.py:tiny', '--config.parallel.tensor=3'], 'parallel'),
    (['--config', 'configs/default.py:tiny', '--config.curriculum.kind=magic'],
     'curriculum.kind'),
])
def test_bad_config_is_one_line_naming_the_problem(tmp_path, args, message):
  r = main_py(*args, '--workdir', str(tmp_path / 'w'))
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert message in last and 'Traceback' not in r.stderr, r.stderr[-1500:]


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
  f = tmp_path / 'file'
  f.write_text('x')
  with pytest.raises(ValueError, match='is a file'):
    loop.prepare_workdir(str(f))
  with pytest.raises(ValueError, match='not writable'):
    loop.prepare_workdir('/proc/paceline-run')


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  config = tiny_config(train__steps=4, checkpoint__every=2, optim__decay_steps=6)
  train(config, tmp_path)
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '4' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as fh:
        fh.write(b'garbage')
  trainer = loop.Trainer(tiny_config(train__steps=6, checkpoint__every=2, optim__decay_steps=6),
                         str(tmp_path))
  step, *_ = trainer.initial_state()
  assert step == 2
  assert 'checkpoint step 4 is incomplete or corrupted' in capsys.readouterr().out


def test_incompatible_config_on_resume_names_the_key(tmp_path):
  train(tiny_config(train__steps=2, checkpoint__every=2), tmp_path)
  changed = tiny_config(train__steps=4, model__d_model=96, optim__lr=1e-3)
  with pytest.raises(ValueError, match='model.d_model, optim.lr'):
    loop.Trainer(changed, str(tmp_path)).initial_state()
  # Steps, logging and the mesh may change: this resumes.
  more = tiny_config(train__steps=4, train__log_every=1)
  more.parallel.update(data=2, fsdp=4)
  assert loop.Trainer(more, str(tmp_path)).initial_state()[0] == 2


def test_sigterm_saves_and_the_rerun_resumes(tmp_path):
  args = [sys.executable, 'main.py', '--config', 'configs/default.py:tiny', '--workdir',
          str(tmp_path), '--config.train.steps=100000', '--config.train.log_every=1',
          '--config.checkpoint.every=100000']
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and (not metrics.exists() or
                                    len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  saved = int(re.search(r'SIGTERM: saved step (\d+)', out).group(1))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [str(saved)]
  r = main_py(*args[2:-3], f'--config.train.steps={saved + 2}', '--config.train.log_every=1')
  assert r.returncode == 0, r.stderr[-2000:]
  steps = [json.loads(line)['step'] for line in metrics.read_text().splitlines()]
  assert steps[-2:] == [saved + 1, saved + 2]
