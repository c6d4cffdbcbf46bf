"""The multimodal preset: balanced batches, pipeline stages over balanced microbatches, main.py
end to end, exact resume (8 fake devices)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import multimodal as preset
from data import multimodal as mm
from parallel import pipeline
from parallel.mesh import make_mesh
from parallel.sharding import use_rules
from training import multimodal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ('tiny', 'tiny_pipeline')


def tiny(tmp_path, variant='tiny', **train):
  c = preset.get_config(variant)
  c.data.data_dir = str(tmp_path / 'tfds')
  c.optim.decay_steps = 4  # one learning-rate schedule for the split and the whole run
  c.train.update(**train)
  return c


def balanced_batches(config, source, num_shards, microbatches=1):
  vision = multimodal.vision_config(config)
  cost = multimodal.flop_cost_model(vision, multimodal.state_lib.decoder_config(config))
  return multimodal.BalancedBatches(source, config, num_shards, cost, vision.tokens_per_image,
                                    microbatches)


def test_balanced_batches_place_every_sample_of_a_step_once():
  config = preset.get_config('tiny')
  source = list(mm.generate_examples(40, skew=1.0, seed=0))
  batches = balanced_batches(config, source, 8)
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


def test_each_pipeline_microbatch_is_one_balanced_bin_per_shard():
  shards, micro, slots = 4, 3, 2  # two rows per shard and microbatch: oversized samples' bins
  batches = balanced_batches(preset.get_config('tiny'), [], shards, micro)
  row_bins = batches.row_bins(slots * shards * micro)
  # [M, rows / M] as the pipeline splits the batch, the second axis block-sharded over the shards.
  per_shard = pipeline.split_microbatches(row_bins, micro).reshape(micro, shards, slots)
  balanced = per_shard < batches.num_bins
  np.testing.assert_array_equal(balanced.sum(-1), 1)
  np.testing.assert_array_equal(np.sort(per_shard[balanced]), np.arange(batches.num_bins))
  assert sorted(row_bins.tolist()) == list(range(len(row_bins)))


@pytest.fixture(scope='module')
def balanced_step():
  """tiny_pipeline's model, one step's balanced microbatch rows, and the scan's loss and grads."""
  config = preset.get_config('tiny_pipeline')
  stages, shards = config.parallel.stage, config.parallel.data
  micro = multimodal.microbatches(config, stages)
  source = list(mm.generate_examples(config.train.batch_size, skew=1.0, seed=0))
  batch, info = balanced_batches(config, source, shards, micro)(0)
  assert info['rows'] == shards * micro
  batch = jax.tree.map(jnp.asarray, batch)
  model, _ = multimodal.build(config, jax.random.key(0))
  scanned = nnx.clone(model)
  scanned.decoder.stack_runner = None
  return config, model, batch, nnx.jit(multimodal.caption_value_and_grad)(scanned, batch)


@pytest.mark.parametrize('schedule', ['gpipe', '1f1b'])
def test_pipelined_decoder_matches_the_scan_on_balanced_microbatches(balanced_step, schedule):
  """Stage 2 x data 4, bubbles NaN-filled: loss and every gradient as without stages."""
  config, model, batch, ((loss, _), grads) = balanced_step
  piped = nnx.clone(model)
  runner = piped.decoder.stack_runner
  piped.decoder.stack_runner = dataclasses.replace(runner, cfg=dataclasses.replace(
      runner.cfg, schedule=schedule, pollute_bubbles=True))
  mesh = make_mesh({'stage': config.parallel.stage, 'data': config.parallel.data})
  with jax.set_mesh(mesh), use_rules(config.parallel.rules):
    (piped_loss, _), piped_grads = nnx.jit(multimodal.caption_value_and_grad)(piped, batch)
  np.testing.assert_allclose(piped_loss, loss, atol=1e-5, rtol=0)
  close = lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=1e-5, rtol=0)
  jax.tree.map(close, piped_grads, grads)


def test_fewer_samples_than_microbatch_rows_are_refused_by_name(tmp_path):
  c = tiny(tmp_path, 'tiny_pipeline', batch_size=8)  # 4 shards x 4 microbatches need 16 rows
  with pytest.raises(ValueError, match='train.batch_size'):
    multimodal.run(c, str(tmp_path / 'w'))


@pytest.mark.slow
@pytest.mark.parametrize('variant', VARIANTS)
def test_main_trains_the_multimodal_preset(tmp_path, variant):
  r = subprocess.run([sys.executable, 'main.py', '--config', f'configs/multimodal.py:{variant}',
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
@pytest.mark.parametrize('variant', VARIANTS)
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, variant):
  devices = jax.devices()
  whole = multimodal.run(tiny(tmp_path, variant, steps=4), str(tmp_path / 'whole'), devices)
  multimodal.run(tiny(tmp_path, variant, steps=2), str(tmp_path / 'split'), devices)
  resumed = multimodal.run(tiny(tmp_path, variant, steps=4), str(tmp_path / 'split'), devices)
  assert resumed['step'] == whole['step'] == 4
  assert resumed['loss'] == whole['loss'] and resumed['grad_norm'] == whole['grad_norm']
