"""GRPO data-parallel over 8 fake devices gives the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from curriculum import spaced
from data import arithmetic
from models.transformer import Decoder, DecoderConfig
from parallel.mesh import make_mesh
from training import grpo


def run(devices, steps=2):
  cfg = DecoderConfig(vocab_size=264, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_len=16)
  graphdef, params = nnx.split(Decoder(cfg, nnx.Rngs(0)))
  ref = nnx.split(Decoder(cfg, nnx.Rngs(1)))[1]
  questions = ['1+2=', '3*4=', '5+5=', '9*9=', '2+7=', '8+1=', '6*3=', '4+4=']
  answers = [str(eval(q[:-1])) for q in questions]
  pool = tuple(jnp.asarray(a) for a in arithmetic.encode_problems(questions, answers, 6, 4))
  curriculum = spaced.cluster_bandit(np.arange(8) % 2, batch_size=4, reward='progress')
  tx = optax.adam(3e-3)
  sft, opt = grpo.make_sft_step(graphdef, tx), tx.init(params)
  for _ in range(25):  # so that groups hold both right and wrong answers
    params, opt, _ = sft(params, opt, *pool)
  step = grpo.make_grpo_step(graphdef, tx, curriculum, grpo.GRPOConfig(group_size=4, answer_len=4,
                                                                       kl_coef=0.1, updates_per_batch=2),
                             make_mesh({'data': -1}, devices))
  opt, cstate = tx.init(params), curriculum.init(jax.random.key(0))
  for t in range(steps):
    params, opt, cstate, metrics = step(params, opt, cstate, ref, pool, jax.random.key(t))
  return params, cstate, metrics


def test_grpo_on_eight_devices_equals_one_device():
  assert len(jax.devices()) == 8
  params8, cstate8, m8 = run(jax.devices())
  params1, cstate1, m1 = run(jax.devices()[:1])
  assert 0 < m1['reward'] < 1
  for name in ('idx', 'solve_rate', 'reward', 'parsed'):
    np.testing.assert_array_equal(m8[name], m1[name])
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Adam magnifies reduction-order noise
  np.testing.assert_allclose(cstate8.reward_sum, cstate1.reward_sum, rtol=1e-6)
