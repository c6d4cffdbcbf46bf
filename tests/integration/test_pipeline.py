"""Pipeline schedules against the sequential scan of the same stacked decoder, on 8 fake devices.

The reference is the trainer's own loss (`training.step.lm_loss`, PAD targets masked) run by the
decoder's scan; the pipelined side is the trainer's 1F1B-capable path (`training.pipelined`).
Every pipelined run fills its bubbles with NaN, so a single bubble value reaching the loss, the
per-example losses or any gradient makes the comparison fail. The slow test trains with stages
through `main.py`'s trainer and resumes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.text import PAD
from models.transformer import Decoder, DecoderConfig, scan_stack
from parallel import pipeline
from parallel.mesh import make_mesh
from parallel.sharding import use_rules
from tests.helpers import losses, tiny_config, train
from training import pipelined
from training.step import lm_loss

B, T = 16, 8
RULES = [('act_batch', 'data')]


@pytest.fixture(scope='module')
def decoder():
  cfg = DecoderConfig(vocab_size=PAD + 1, num_layers=4, d_model=32, num_heads=2, mlp_dim=64,
                      max_len=T)
  tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, PAD)
  tokens = tokens.at[:3, -3:].set(PAD)  # masked targets, unequal token counts per example
  return Decoder(cfg, nnx.Rngs(0)), tokens


@pytest.fixture(scope='module')
def sequential(decoder):
  model, tokens = decoder
  grad_fn = nnx.value_and_grad(lambda m: lm_loss(m, tokens, 0.0), has_aux=True)
  return jax.jit(grad_fn)(model)


def pipelined_grads(model, tokens, cfg: pipeline.PipelineConfig):
  model = nnx.clone(model)
  model.stack_runner = pipeline.StackRunner(cfg)
  with jax.set_mesh(make_mesh({'stage': cfg.stages, 'data': -1})), use_rules(RULES):
    return jax.jit(lambda m: pipelined.lm_value_and_grad(m, tokens, 0.0))(model)


def assert_trees_close(actual, expected, atol):
  close = lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=0)
  jax.tree.map(close, actual, expected)  # also fails when the two trees differ in structure


@pytest.mark.parametrize('schedule, stages, repeats, microbatches, skip_bubbles', [
    ('gpipe', 4, 1, 8, True),
    ('circular', 2, 2, 4, False),
    ('1f1b', 4, 1, 8, True),
    pytest.param('circular', 2, 2, 4, True, marks=pytest.mark.slow),
    pytest.param('1f1b', 2, 1, 2, True, marks=pytest.mark.slow),
])
def test_loss_and_grads_match_sequential_scan(decoder, sequential, schedule, stages, repeats,
                                              microbatches, skip_bubbles):
  cfg = pipeline.PipelineConfig(stages=stages, schedule=schedule, microbatches=microbatches,
                                repeats=repeats, pollute_bubbles=True, skip_bubbles=skip_bubbles)
  (_, (loss, per_example, _)), grads = sequential
  (_, (pipe_loss, pipe_per_example, _)), pipe_grads = pipelined_grads(*decoder, cfg)
  np.testing.assert_allclose(pipe_loss, loss, atol=1e-5, rtol=0)
  np.testing.assert_allclose(pipe_per_example, per_example, atol=1e-5, rtol=0)
  assert_trees_close(pipe_grads, grads, atol=1e-5)


@pytest.mark.parametrize('schedule, repeats', [
    pytest.param('gpipe', 1, marks=pytest.mark.slow),
    ('circular', 2),
])
def test_forward_matches_scan_and_works_once_per_microbatch(decoder, schedule, repeats):
  model, tokens = decoder
  graphdef, layers = nnx.split(model.layers)
  x = model.embed_tokens(tokens[:, :-1])
  positions = jnp.broadcast_to(jnp.arange(T), x.shape[:2])
  expected, _ = scan_stack(graphdef, layers, x, positions)
  cfg = pipeline.PipelineConfig(stages=2, schedule=schedule, microbatches=4, repeats=repeats,
                                pollute_bubbles=True)
  with jax.set_mesh(make_mesh({'stage': 2, 'data': -1})), use_rules(RULES):
    run = jax.jit(lambda l, x: pipeline.forward(pipeline.nnx_layer_fn(graphdef), cfg, l, x,
                                                positions))
    y, _, useful_ticks = run(layers, x)
  np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)
  # Each stage worked once per microbatch and repeat; the other ticks were NaN-filled bubbles.
  np.testing.assert_array_equal(useful_ticks, [repeats * cfg.num_microbatches] * cfg.stages)
  assert cfg.ticks > repeats * cfg.num_microbatches


def test_stack_runner_in_the_decoder_matches_the_scan(decoder):
  """A 1f1b config evaluates with gpipe's forward; stages come from the active mesh."""
  model, tokens = decoder
  expected, _ = jax.jit(lambda m: m(tokens[:, :-1]))(model)
  model = nnx.clone(model)
  model.stack_runner = pipeline.StackRunner(
      pipeline.PipelineConfig(stages=0, schedule='1f1b', pollute_bubbles=True))
  with jax.set_mesh(make_mesh({'stage': 2, 'data': -1})), use_rules(RULES):
    logits, _ = jax.jit(lambda m: m(tokens[:, :-1]))(model)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('kwargs, key', [
    (dict(stages=4, schedule='1f1b', microbatches=2), 'pipeline.microbatches'),
    (dict(stages=4, schedule='circular', microbatches=2, repeats=2), 'pipeline.microbatches'),
    (dict(stages=2, schedule='zero-bubble'), 'pipeline.schedule'),
    (dict(stages=2, schedule='gpipe', repeats=2), 'pipeline.repeats'),
    (dict(stages=-1), 'parallel.stage'),
])
def test_bad_config_names_the_key(kwargs, key):
  with pytest.raises(ValueError, match=key):
    pipeline.PipelineConfig(**kwargs)


@pytest.mark.parametrize('num_layers, batch, stages, key', [
    (6, 8, 4, 'model.num_layers'),
    (4, 6, 4, 'pipeline.microbatches'),
    (4, 8, 2, 'pipeline.microbatches'),  # microbatches of 2 over data=4
    (4, 8, 4, 'parallel.stage'),  # the active mesh has stage=2
])
def test_bad_shapes_name_the_key(num_layers, batch, stages, key):
  cfg = pipeline.PipelineConfig(stages=stages)
  with jax.set_mesh(make_mesh({'stage': 2, 'data': -1})):
    with pytest.raises(ValueError, match=key):
      cfg.check(num_layers, batch)


@pytest.mark.slow
@pytest.mark.parametrize('schedule', ['gpipe', '1f1b'])
def test_trainer_with_stages_matches_data_parallel_and_resumes(tmp_path, schedule):
  def config(steps, **parallel):
    c = tiny_config(train__steps=steps, train__log_every=1, train__batch_size=16,
                    eval__batch_size=16, checkpoint__every=2, optim__decay_steps=4)
    c.parallel.update(parallel)
    c.pipeline.update(schedule=schedule, microbatches=2)
    return c

  train(config(4), tmp_path / 'data_parallel')
  train(config(4, stage=2, data=4), tmp_path / 'full')
  train(config(2, stage=2, data=4), tmp_path / 'resumed')
  train(config(4, stage=2, data=4), tmp_path / 'resumed')
  np.testing.assert_allclose(losses(tmp_path / 'full'), losses(tmp_path / 'data_parallel'),
                             rtol=1e-5)
  assert losses(tmp_path / 'resumed') == losses(tmp_path / 'full')
