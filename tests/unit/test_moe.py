import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import moe
from models.transformer import Decoder

CFG = moe.MoEConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=2, mlp_dim=48,
                    num_experts=4, top_k=2, init_scale=0.2)


def per_token_reference(layer: moe.MoE, x: np.ndarray) -> np.ndarray:
  """Each token through its top-k experts one at a time, in float64 numpy."""
  router = np.asarray(layer.router[...], np.float64)
  w_gate, w_up, w_down = (np.asarray(w[...], np.float64)
                          for w in (layer.w_gate, layer.w_up, layer.w_down))
  out = np.zeros_like(x, np.float64)
  for i, token in enumerate(x.astype(np.float64)):
    logits = token @ router
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    chosen = np.argsort(-probs, kind='stable')[:layer.cfg.top_k]
    for e in chosen:
      gate = token @ w_gate[e]
      hidden = gate / (1 + np.exp(-gate)) * (token @ w_up[e])
      out[i] += probs[e] / probs[chosen].sum() * (hidden @ w_down[e])
  return out


def test_dropless_matches_per_token_loop():
  layer = moe.MoE(CFG, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 16, CFG.d_model))
  y, aux = layer(x)
  want = per_token_reference(layer, np.asarray(x).reshape(-1, CFG.d_model))
  np.testing.assert_allclose(np.asarray(y).reshape(-1, CFG.d_model), want, rtol=1e-4, atol=1e-5)
  assert float(aux) > 0


def test_capacity_mode_drops_only_overflow():
  x = jax.random.normal(jax.random.key(2), (1, 64, CFG.d_model))
  dropless = moe.MoE(CFG, nnx.Rngs(0))
  roomy = moe.MoE(dataclasses.replace(CFG, capacity_factor=float(CFG.num_experts)), nnx.Rngs(0))
  tight = moe.MoE(dataclasses.replace(CFG, capacity_factor=0.25), nnx.Rngs(0))
  np.testing.assert_allclose(roomy(x)[0], dropless(x)[0], rtol=1e-5, atol=1e-6)
  # With a quarter of the average load per expert most assignments are dropped: rows of zeros.
  dropped_tokens = np.sum(np.all(np.asarray(tight(x)[0]) == 0, axis=-1))
  assert dropped_tokens > 0


def test_replayed_expert_ids_route_identically_and_give_router_gradients():
  layer = moe.MoE(CFG, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (32, CFG.d_model))
  ids = layer.route(x).expert_ids
  np.testing.assert_array_equal(layer.route(x + 1e-3, ids).expert_ids, ids)

  graphdef, state = nnx.split(layer)

  def loss(state):
    replay = nnx.merge(graphdef, state)
    r = replay.route(x, ids)
    return jnp.sum(replay.experts(x, r) ** 2) + r.aux

  grad = jax.grad(loss)(state)
  assert float(jnp.abs(grad['router'][...]).max()) > 0


def test_load_balance_loss_is_one_when_uniform():
  probs = jnp.full((8, 4), 0.25)
  ids = jnp.array([[0, 1], [2, 3]] * 4)
  np.testing.assert_allclose(moe.load_balance_loss(probs, ids), 1.0)


def test_moe_decoder_returns_aux_summed_over_layers():
  model = Decoder(CFG, nnx.Rngs(0), block_factory=moe.MoEBlock)
  logits, aux = model(jnp.zeros((2, 8), jnp.int32))
  assert logits.shape == (2, 8, CFG.vocab_size)
  # Identical tokens route identically, so each layer's loss is E * sum f_e P_e over one token.
  assert float(aux) > 0


@pytest.mark.parametrize('kwargs,key', [(dict(num_experts=0), 'model.num_experts'),
                                        (dict(top_k=5), 'model.top_k'),
                                        (dict(capacity_factor=-1.0), 'model.capacity_factor')])
def test_bad_moe_config_names_the_key(kwargs, key):
  with pytest.raises(ValueError, match=key):
    dataclasses.replace(CFG, **kwargs)


def test_experts_must_divide_expert_mesh_axis():
  mesh = jax.make_mesh((8,), ('expert',), axis_types=(jax.sharding.AxisType.Auto,))
  layer = moe.MoE(dataclasses.replace(CFG, num_experts=6), nnx.Rngs(0))
  with jax.set_mesh(mesh), pytest.raises(ValueError, match='model.num_experts=6'):
    layer(jnp.ones((1, 4, CFG.d_model)))
