import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from curriculum import api
from data import arithmetic, text
from models.transformer import Decoder, DecoderConfig
from parallel.mesh import make_mesh
from training import grpo

CFG = DecoderConfig(vocab_size=264, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_len=32)


def tiny_model(seed=0):
  return nnx.split(Decoder(CFG, nnx.Rngs(seed)))


def tok(strings, length):
  out = np.full((len(strings), length), text.PAD, np.int32)
  for i, s in enumerate(strings):
    out[i, :len(s)] = text.encode(s)
  return out


def test_verify_hand_cases():
  answers = tok(['15\n', '7\n'], 5)
  completions = np.stack([tok(['15\n99', '150\n', '15x\n', '\n15\n'], 5),
                          tok(['7\n\n\n\n', '77777', '07\n', '7\n'], 5)])
  correct, parsed = grpo.verify(jnp.asarray(completions), jnp.asarray(answers))
  np.testing.assert_array_equal(correct, [[1, 0, 0, 0], [1, 0, 0, 1]])
  np.testing.assert_array_equal(parsed, [[1, 1, 0, 0], [1, 0, 1, 1]])
  np.testing.assert_array_equal(grpo.completion_mask(jnp.asarray(completions[0])),
                                [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0],
                                 [1, 0, 0, 0, 0]])


def test_group_advantages_hand_cases():
  adv = grpo.group_advantages(jnp.array([[1., 0., 0., 1.], [1., 1., 1., 1.], [1., 0., 0., 0.]]))
  # mean 0.5, std 0.5; no spread gives no signal; mean 0.25, std sqrt(3)/4.
  s = np.sqrt(3) / 4
  np.testing.assert_allclose(adv, [[1, -1, -1, 1], [0, 0, 0, 0],
                                   [0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s]], rtol=1e-5)


def test_policy_loss_gradient_hand_computed():
  # One sequence, two valid tokens and one masked; ratio 1.1 (inside clip) and 1.5 (clipped).
  old = jnp.log(jnp.array([0.5, 0.2, 0.3]))
  logp = old + jnp.log(jnp.array([1.1, 1.5, 1.0]))
  mask = jnp.array([1., 1., 0.])
  grad = jax.grad(lambda lp: grpo.policy_loss(lp, old, old, jnp.float32(2.0), mask, 0.2, 0.0))(logp)
  # d/dlogp of -ratio * A / n_valid where unclipped, 0 where the clip is active.
  np.testing.assert_allclose(grad, [-1.1 * 2.0 / 2, 0, 0], rtol=1e-5)
  # k3 KL: d/dlogp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp).
  grad_kl = jax.grad(lambda lp: grpo.policy_loss(lp, lp, old, jnp.float32(0.0), mask, 0.2, 0.5))(
      logp)
  np.testing.assert_allclose(grad_kl, 0.5 * (1 - jnp.exp(old - logp)) * mask / 2, rtol=1e-5)


def reference_loss(graphdef, params, prompts, completions, old_logp, adv, clip_eps, temperature):
  """The GRPO objective from full-vocabulary logits, one sequence and one token at a time."""
  model = nnx.merge(graphdef, params)
  num_prompts, group, plen = completions.shape[0], completions.shape[1], prompts.shape[1]
  seqs = jnp.concatenate([jnp.repeat(prompts, group, axis=0), completions.reshape(-1, 4)], axis=1)
  logits = model(seqs)[0].reshape(num_prompts, group, seqs.shape[1], -1)
  total = 0.0
  for b in range(num_prompts):
    for g in range(group):
      end = [i for i, t in enumerate(completions[b, g].tolist()) if t == ord('\n')]
      n_valid = end[0] + 1 if end else completions.shape[2]
      seq_loss = 0.0
      for t in range(n_valid):
        z = logits[b, g, plen - 1 + t, :256] / temperature
        lp = z[completions[b, g, t]] - jax.scipy.special.logsumexp(z)
        ratio = jnp.exp(lp - old_logp[b, g, t])
        clipped = jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps)
        seq_loss -= jnp.minimum(ratio * adv[b, g], clipped * adv[b, g])
      total += seq_loss / n_valid
  return total / (num_prompts * group)


def test_grpo_loss_gradient_matches_per_token_reference():
  graphdef, params = tiny_model()
  prompts = jnp.asarray(arithmetic.encode_problems(['1+2=', '3*4='], ['3', '12'], 6, 4)[0])
  completions = jnp.asarray(np.stack([tok(['3\n44', '12\n\n', '1111'], 4),
                                     tok(['12\n7', '9\n12', '\n123'], 4)]))
  rng = np.random.default_rng(0)
  old_logp = jnp.asarray(rng.normal(-5.5, 0.3, completions.shape), jnp.float32)
  adv = grpo.group_advantages(jnp.array([[1., 0., 0.], [1., 0., 1.]]))
  temperature, clip_eps = 0.7, 0.2

  def ours(p):
    flat = completions.reshape(-1, 4)
    logp = grpo.completion_logprobs(graphdef, p, jnp.repeat(prompts, 3, axis=0), flat,
                                    temperature).reshape(completions.shape)
    return jnp.mean(grpo.policy_loss(logp, old_logp, old_logp, adv,
                                     grpo.completion_mask(completions), clip_eps, 0.0))

  loss, grads = jax.jit(jax.value_and_grad(ours))(params)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: reference_loss(
      graphdef, p, prompts, np.asarray(completions), old_logp, adv, clip_eps, temperature)))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_sampling_is_deterministic_per_key_and_greedy_matches_a_growing_sequence():
  graphdef, params = tiny_model()
  prompts = jnp.asarray(arithmetic.encode_problems(['1+2=', '33*4='], ['3', '13'], 7, 3)[0])
  draw = lambda key, temp: grpo.sample(graphdef, params, prompts, jax.random.key(key), 4, 3, temp)
  np.testing.assert_array_equal(draw(0, 1.0), draw(0, 1.0))
  assert not np.array_equal(draw(0, 1.0), draw(1, 1.0))
  greedy = draw(0, 0.0)
  model = nnx.merge(graphdef, params)
  seq = prompts
  for _ in range(3):
    logits, _ = model(seq)
    seq = jnp.concatenate([seq, jnp.argmax(logits[:, -1, :256], -1)[:, None]], axis=1)
  np.testing.assert_array_equal(greedy, np.repeat(seq[:, None, 7:], 4, axis=1))


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match='grpo.group_size'):
    grpo.GRPOConfig(group_size=1)
  with pytest.raises(ValueError, match='grpo.temperature'):
    grpo.GRPOConfig(temperature=0.0)
  with pytest.raises(ValueError, match='grpo.updates_per_batch'):
    grpo.GRPOConfig(updates_per_batch=0)


@pytest.mark.slow
def test_grpo_step_learns_the_rewarded_answers_and_feeds_the_curriculum():
  graphdef, params = tiny_model()
  prompts, answers = arithmetic.encode_problems(['1+1=', '2+2='], ['2', '4'], 6, 3)
  pool = (jnp.asarray(prompts), jnp.asarray(answers))
  cfg = grpo.GRPOConfig(group_size=16, answer_len=3)
  cur = api.uniform(2, 2)
  tx = optax.adam(3e-3)
  step = grpo.make_grpo_step(graphdef, tx, cur, cfg, make_mesh({'data': 1}, jax.devices()[:1]))
  # A warm-up on the answers so that groups have mixed rewards (a few solved, most not).
  sft = grpo.make_sft_step(graphdef, tx)
  opt = tx.init(params)
  for _ in range(25):
    params, opt, _ = sft(params, opt, *pool)
  ref = jax.tree.map(jnp.copy, params)
  cstate, opt = cur.init(jax.random.key(0)), tx.init(params)
  rewards = []
  for t in range(40):
    params, opt, cstate, m = step(params, opt, cstate, ref, pool, jax.random.key(t))
    rewards.append(float(m['reward']))
  assert m['solve_rate'].shape == (2,) and m['idx'].shape == (2,)
  assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2
