"""The multimodal preset: balanced batches, main.py end to end, exact resume (8 fake devices)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import multimodal as preset
from data import multimodal as mm
from training import multimodal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(tmp_path, **train):
  c = preset.get_config('tiny')
  c.data.data_dir = str(tmp_path / 'tfds')
  c.optim.decay_steps = 4  # one learning-rate schedule for the split and the whole run
  c.train.update(**train)
  return c


def test_balanced_batches_place_every_sample_of_a_step_once():
  config = preset.get_config('tiny')
  source = list(mm.generate_examples(40, skew=1.0, seed=0))
  vision = multimodal.vision_config(config)
  cost = multimodal.flop_cost_model(vision, multimodal.state_lib.decoder_config(config))
  batches = multimodal.BalancedBatches(source, config, 8, cost, vision.tokens_per_image)
  first = batches.indices(0)
  np.testing.assert_array_equal(first, batches.indices(0))  # a function of the step alone
  epoch = np.concatenate([batches.indices(s) for s in range(5)])[:40]  # 5 x 16 > 40
  assert sorted(epoch.tolist()) == list(range(40))
  batch, info = batches(1)
  assert info['rows'] % 8 == 0 and batch['tokens'].shape == (info['rows'], info['shape'][1])
  segments = sum(len(set(row[row >= 0].tolist())) for row in batch['segment_ids'])
  assert segments == config.train.batch_size
  captions = sum(len(mm.text.encode(source[i]['caption'])) for i in batches.indices(1))
  assert batch['weights'].sum() == captions


def test_pipeline_stages_are_refused_by_name(tmp_path):
  c = tiny(tmp_path)
  c.parallel.update(data=4, stage=2)
  with pytest.raises(ValueError, match='parallel.stage'):
    multimodal.run(c, str(tmp_path / 'w'))


@pytest.mark.slow
def test_main_trains_the_multimodal_preset(tmp_path):
  r = subprocess.run([sys.executable, 'main.py', '--config', 'configs/multimodal.py:tiny',
                      '--workdir', str(tmp_path / 'w'), f'--config.data.data_dir={tmp_path}/tfds'],
                     cwd=ROOT, capture_output=True, text=True, timeout=1800,
                     env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in open(tmp_path / 'w' / 'metrics.jsonl')]
  assert [row['step'] for row in rows] == [2, 4]
  assert all(np.isfinite(row['loss']) and 0 <= row['balance/padding_waste'] < 1 for row in rows)
  assert sorted(os.listdir(tmp_path / 'w' / 'checkpoints')) == ['2', '4']
  assert (tmp_path / 'w' / 'loss.png').exists()


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
  devices = jax.devices()
  whole = multimodal.run(tiny(tmp_path, steps=4), str(tmp_path / 'whole'), devices)
  multimodal.run(tiny(tmp_path, steps=2), str(tmp_path / 'split'), devices)
  resumed = multimodal.run(tiny(tmp_path, steps=4), str(tmp_path / 'split'), devices)
  assert resumed['step'] == whole['step'] == 4
  assert resumed['loss'] == whole['loss'] and resumed['grad_norm'] == whole['grad_norm']
