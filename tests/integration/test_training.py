"""The trainer end to end on 8 fake CPU devices: sharding parity, exact resume, restore onto
another mesh, the transfer guard, streaming, and non-finite losses."""

import jax
import numpy as np
import pytest

from tests.helpers import leaves, losses, tiny_config, train
from training import loop


def test_sharded_loss_equals_single_device(tmp_path):
  single = tiny_config(train__steps=5, train__log_every=1)
  single.parallel.data = 1
  one = train(single, tmp_path / 'one', devices=jax.devices()[:1])
  mesh_cfg = tiny_config(train__steps=5, train__log_every=1)
  mesh_cfg.parallel.update(data=2, fsdp=2, tensor=2)
  eight = train(mesh_cfg, tmp_path / 'eight')
  np.testing.assert_allclose(losses(tmp_path / 'eight'), losses(tmp_path / 'one'), rtol=1e-5)
  wq = eight.final_state[0]['layers']['attn']['wq'][...]
  assert wq.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor', None)
  assert len({str(s.index) for s in wq.addressable_shards}) == 4  # really split, not replicated
  for a, b in zip(leaves(one.final_state[0]), leaves(eight.final_state[0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_resumed_run_is_bitwise_identical(tmp_path):
  def config(steps):
    return tiny_config(train__steps=steps, train__log_every=1, checkpoint__every=3,
                       optim__decay_steps=6)

  full = train(config(6), tmp_path / 'full')
  train(config(3), tmp_path / 'resumed')
  resumed = train(config(6), tmp_path / 'resumed')
  assert losses(tmp_path / 'full') == losses(tmp_path / 'resumed')
  for a, b in zip(leaves(full.final_state), leaves(resumed.final_state)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(leaves(full.final_cstate), leaves(resumed.final_cstate)):
    np.testing.assert_array_equal(a, b)


def test_stream_mode_trains_on_the_same_batches_and_resumes(tmp_path):
  pool = train(tiny_config(train__steps=4, train__log_every=1, optim__decay_steps=4),
               tmp_path / 'pool')
  stream_cfg = lambda steps: tiny_config(train__steps=steps, train__log_every=1,
                                         checkpoint__every=2, optim__decay_steps=4,
                                         data__mode='stream')
  train(stream_cfg(2), tmp_path / 'stream')
  train(stream_cfg(4), tmp_path / 'stream')
  assert losses(tmp_path / 'stream') == losses(tmp_path / 'pool')
  del pool


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  cfg8 = tiny_config(train__steps=4, checkpoint__every=4, optim__decay_steps=8)
  cfg8.parallel.update(data=1, fsdp=8)
  eight = train(cfg8, tmp_path)
  cfg4 = tiny_config(train__steps=4, checkpoint__every=4, optim__decay_steps=8)
  cfg4.parallel.update(data=2, fsdp=2)
  trainer = loop.Trainer(cfg4, str(tmp_path), devices=jax.devices()[:4])
  step, state, _, _ = trainer.initial_state()
  assert step == 4
  assert state[0]['embed'][...].sharding.mesh.size == 4
  for a, b in zip(leaves(eight.final_state), leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_steps_between_log_points_run_under_the_transfer_guard(tmp_path, monkeypatch):
  entered = []
  real_guard = jax.transfer_guard

  def recording_guard(level):
    entered.append(level)
    return real_guard(level)

  monkeypatch.setattr(loop.jax, 'transfer_guard', recording_guard)
  train(tiny_config(train__steps=4, train__log_every=2), tmp_path)
  assert entered == ['disallow', 'disallow']
  # The guard is real: an implicit host-to-device transfer inside it fails.
  with pytest.raises(Exception, match='[Dd]isallowed'):
    with real_guard('disallow'):
      jax.jit(lambda x: x + 1)(np.ones(3))


def test_non_finite_losses_skip_updates_then_stop(tmp_path):
  config = tiny_config(train__steps=20, train__log_every=1, train__max_nonfinite=3,
                       optim__lr=1e30, optim__grad_clip=1e30, optim__warmup_steps=0)
  with pytest.raises(FloatingPointError, match='non-finite for 3 steps in a row'):
    train(config, tmp_path)
  rows = [r for r in losses(tmp_path)]
  assert len(rows) < 20
