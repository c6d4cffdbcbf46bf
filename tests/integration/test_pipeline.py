"""Pipeline schedules against the sequential scan of the same stacked decoder, on 8 fake devices.

Every pipelined run fills its bubbles with NaN, so a single bubble value reaching the loss, the
per-example stats or any gradient makes the comparison fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.transformer import Decoder, DecoderConfig
from parallel import pipeline
from parallel.mesh import make_mesh
from parallel.sharding import use_rules

B, T = 16, 8
RULES = [('act_batch', 'data')]


@pytest.fixture(scope='module')
def decoder():
  cfg = DecoderConfig(vocab_size=32, num_layers=4, d_model=32, num_heads=2, mlp_dim=64, max_len=T)
  model = Decoder(cfg, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, cfg.vocab_size)
  return model, tokens[:, :-1], tokens[:, 1:]


def token_losses(logits, targets):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


@pytest.fixture(scope='module')
def sequential(decoder):
  """Mean token loss, per-example losses and gradients with the model's own scan."""
  model, inputs, targets = decoder
  graphdef, layers, rest = nnx.split(model, nnx.PathContains('layers'), ...)

  def loss_fn(layers, rest):
    losses = token_losses(nnx.merge(graphdef, layers, rest)(inputs)[0], targets)
    return losses.mean(), losses.mean(-1)

  return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(layers, rest)


def pipelined(model, inputs, targets, cfg: pipeline.PipelineConfig):
  """The same loss through `pipeline.loss_and_grads`: embedding outside, head inside the schedule."""
  graphdef, layers, rest = nnx.split(model, nnx.PathContains('layers'), ...)
  layer_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), layers)
  without_layers = lambda rest: nnx.merge(graphdef, layer_shapes, rest)
  layer_fn = pipeline.nnx_layer_fn(nnx.split(model.layers)[0])

  def head_fn(rest, y, targets):
    m = without_layers(rest)
    losses = token_losses(m.logits(m.final_norm(y)), targets)
    return losses.sum() / (B * T), losses.mean(-1)  # this part's share of the batch mean

  @jax.jit
  def step(layers, rest):
    x, embed_pullback = jax.vjp(lambda rest: without_layers(rest).embed_tokens(inputs), rest)
    positions = jnp.broadcast_to(jnp.arange(T), inputs.shape)
    stats, (d_layers, d_head, dx) = pipeline.loss_and_grads(layer_fn, head_fn, cfg, layers, rest, x,
                                                            positions, targets)
    return stats, (d_layers, jax.tree.map(jnp.add, d_head, embed_pullback(dx)[0]))

  mesh = make_mesh({'stage': cfg.stages, 'data': -1})
  with jax.set_mesh(mesh), use_rules(RULES):
    return step(layers, rest)


def assert_trees_close(actual, expected, atol):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=0)


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
  (loss, per_example), grads = sequential
  stats, pipe_grads = pipelined(*decoder, cfg)
  np.testing.assert_allclose(stats.loss, loss, atol=1e-5, rtol=0)
  np.testing.assert_allclose(stats.head_stats, per_example, atol=1e-5, rtol=0)
  assert_trees_close(pipe_grads, grads, atol=1e-5)
  # Each stage worked exactly once per microbatch and repeat (twice for 1F1B: forward and
  # backward); every other tick was a NaN-filled bubble.
  work = (2 if schedule == '1f1b' else 1) * repeats * microbatches
  np.testing.assert_array_equal(stats.useful_ticks, [work] * stages)
  assert cfg.ticks > work


def test_circular_and_plain_stack_runners_match_the_scan(decoder):
  model, inputs, _ = decoder
  expected, _ = jax.jit(lambda m: m(inputs))(model)
  mesh = make_mesh({'stage': 2, 'data': -1})
  for schedule, repeats in (('gpipe', 1), ('circular', 2)):
    cfg = pipeline.PipelineConfig(stages=0, schedule=schedule, microbatches=2, repeats=repeats,
                                  pollute_bubbles=True)  # stages from the mesh
    model.stack_runner = pipeline.StackRunner(cfg)
    with jax.set_mesh(mesh), use_rules(RULES):
      logits, _ = jax.jit(lambda m: m(inputs))(model)
    model.stack_runner = None
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('kwargs, key', [
    (dict(stages=4, schedule='1f1b', microbatches=2), 'pipeline.microbatches'),
    (dict(stages=4, schedule='circular', microbatches=2, repeats=2), 'pipeline.microbatches'),
    (dict(stages=2, schedule='zero-bubble'), 'pipeline.schedule'),
    (dict(stages=2, schedule='gpipe', repeats=2), 'pipeline.repeats'),
    (dict(stages=0), 'parallel.stage'),
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
