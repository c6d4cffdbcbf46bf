"""Expert parallelism on 8 fake CPU devices gives the single-device loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import moe
from models.transformer import Decoder
from parallel.mesh import make_mesh
from parallel.sharding import tree_shardings, use_rules

RULES = [('expert', 'expert'), ('act_expert', 'expert'), ('act_batch', 'data'),
         ('embed', 'fsdp')]


def loss_and_grads(model, tokens):

  def loss(model):
    logits, aux = model(tokens)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]) + aux

  return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize('capacity_factor', [0.0, pytest.param(2.0, marks=pytest.mark.slow)])
def test_expert_parallel_equals_one_device(capacity_factor):
  cfg = moe.MoEConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=2, mlp_dim=32,
                      num_experts=8, top_k=2, capacity_factor=capacity_factor)
  model = Decoder(cfg, nnx.Rngs(0), block_factory=moe.MoEBlock)
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, cfg.vocab_size)
  want_loss, want_grads = nnx.jit(loss_and_grads)(model, tokens)

  mesh = make_mesh({'data': 2, 'expert': 4})
  graphdef, state = nnx.split(model)
  shardings = tree_shardings(nnx.get_partition_spec(state), mesh, RULES)
  assert shardings['layers']['ffn']['w_up'].spec[:2] == (None, 'expert')

  @jax.jit
  def step(state, tokens):
    return loss_and_grads(nnx.merge(graphdef, state), tokens)

  with jax.set_mesh(mesh), use_rules(RULES):
    loss, grads = step(jax.device_put(state, shardings), tokens)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
