import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import transformer

CFG = transformer.DecoderConfig(num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=32)


def model(cfg=CFG, seed=0):
  return transformer.Decoder(cfg, nnx.Rngs(seed))


def test_logits_shape_and_causality():
  m = model()
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
  logits, aux = m(tokens)
  assert logits.shape == (2, 16, CFG.vocab_size) and float(aux) == 0.0
  changed = tokens.at[:, 10:].set(7)
  np.testing.assert_allclose(m(changed)[0][:, :10], logits[:, :10], atol=1e-6)
  assert not np.allclose(m(changed)[0][:, 10:], logits[:, 10:])


def test_scan_stack_matches_an_explicit_layer_loop():
  m = model()
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 256)
  positions = jnp.broadcast_to(jnp.arange(8), tokens.shape)
  x = m.embed_tokens(tokens)
  graphdef, stacked = nnx.split(m.layers)
  expected = x
  for i in range(CFG.num_layers):
    layer = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
    expected = layer(expected, positions)
  got, _ = m.run_layers(x, positions)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_changes_memory_not_gradients(remat):
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 256)

  def grads(cfg):
    m = model(cfg)
    return nnx.grad(lambda m: m(tokens)[0].mean())(m)

  plain = grads(CFG)
  other = grads(dataclasses.replace(CFG, remat=remat))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(other)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_keeps_float32_parameters():
  m = model(dataclasses.replace(CFG, dtype='bfloat16'))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  logits, _ = m(jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_every_parameter_has_logical_axis_names():
  specs = nnx.get_partition_spec(nnx.state(model(), nnx.Param))
  for path, spec in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert all(name is not None for name in spec), path
  assert tuple(specs['layers']['ffn']['w_up'].value) == ('layers', 'embed', 'mlp')


def test_num_params_and_flops_per_token():
  d, f, L, v = CFG.d_model, CFG.mlp_dim, CFG.num_layers, CFG.vocab_size
  expected = 2 * v * d + d + L * (4 * d * d + 3 * d * f + 2 * d)
  assert transformer.num_params(model()) == expected
  causal = transformer.flops_per_token(CFG, 16)
  full = transformer.flops_per_token(CFG, 16, causal=False)
  assert full > causal > 6 * (L * (4 * d * d + 3 * d * f) + d * v)


@pytest.mark.parametrize('field,value,match', [
    ('num_layers', 0, 'model.num_layers'), ('num_heads', 3, 'num_heads'),
    ('remat', 'sometimes', 'model.remat'), ('dtype', 'float8', 'model.dtype')])
def test_bad_model_config_names_the_key(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **{field: value})
