import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from curriculum import commutator


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def mlp_loss(params, batch):
  h = jnp.tanh(batch['x'] @ params['w1'] + params['b1'])
  return jnp.mean((h @ params['w2'] - batch['y'])**2)


def mlp_params(key, d_in=3, d_hidden=4):
  k1, k2, k3 = jax.random.split(key, 3)
  return {'w1': jax.random.normal(k1, (d_in, d_hidden)), 'b1': jax.random.normal(k2, (d_hidden,)),
          'w2': jax.random.normal(k3, (d_hidden,))}


def mlp_batches(key, n, size=16, d_in=3):
  keys = jax.random.split(key, n)
  return [{'x': jax.random.normal(k, (size, d_in)),
           'y': jnp.sin(jax.random.normal(jax.random.fold_in(k, 1), (size,)) + i)}
          for i, k in enumerate(keys)]


def test_hvp_matches_dense_hessian_on_a_dict_pytree():
  params = mlp_params(jax.random.key(0))
  batch = mlp_batches(jax.random.key(1), 1)[0]
  v = mlp_params(jax.random.key(2))
  flat, unravel = ravel_pytree(params)
  dense = jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat)
  got = ravel_pytree(commutator.hvp(mlp_loss, params, v, batch))[0]
  np.testing.assert_allclose(got, dense @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12)


def test_hvp_on_nnx_state_matches_dense_hessian():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.random.normal(jax.random.key(1), (8, 3))

  def loss(p, x):
    return jnp.mean(jnp.cos(nnx.merge(graphdef, p)(x)))

  v = jax.tree.map(lambda a: jnp.ones_like(a) * 0.3, params)
  got = commutator.hvp(loss, params, v, x)
  assert jax.tree.structure(got) == jax.tree.structure(params)
  flat, unravel = ravel_pytree(params)
  dense = jax.hessian(lambda f: loss(unravel(f), x))(flat)
  np.testing.assert_allclose(ravel_pytree(got)[0], dense @ ravel_pytree(v)[0], rtol=1e-10)


def quadratic_loss(params, batch):
  theta = params['theta']
  return 0.5 * theta @ batch['q'] @ theta - batch['b'] @ theta


def quadratic_sources(key, n, d=4):
  out = []
  for k in jax.random.split(key, n):
    a = jax.random.normal(k, (d, d))
    out.append({'q': a @ a.T / d + jnp.eye(d), 'b': jax.random.normal(jax.random.fold_in(k, 1), (d,))})
  return out


def sgd_two_phases(loss, params, first, second, lr, steps):
  grad = jax.grad(loss)
  for batch in [first] * steps + [second] * steps:
    params = jax.tree.map(lambda p, g: p - lr * g, params, grad(params, batch))
  return params


def measured_order_effect(params, a, b, target, lr, steps=1):
  l_ab = quadratic_loss(sgd_two_phases(quadratic_loss, params, a, b, lr, steps), target)
  l_ba = quadratic_loss(sgd_two_phases(quadratic_loss, params, b, a, lr, steps), target)
  return float(l_ab - l_ba)


def test_bracket_is_exact_for_quadratic_sources_and_a_linear_target():
  a, b = quadratic_sources(jax.random.key(0), 2)
  target = {'q': jnp.zeros((4, 4)), 'b': jnp.arange(4.0) - 1.5}  # H_E = 0: the identity is exact
  params = {'theta': jnp.array([0.3, -0.2, 0.5, 1.0])}
  lr = 0.1
  sigma = commutator.bracket(quadratic_loss, params, a, b, target)
  assert lr**2 * sigma == pytest.approx(measured_order_effect(params, a, b, target, lr), rel=1e-10)
  assert sigma == pytest.approx(-commutator.bracket(quadratic_loss, params, b, a, target))


def test_trotter_reference_removes_the_third_order_error():
  a, b, target = quadratic_sources(jax.random.key(3), 3)
  params = {'theta': jnp.array([0.3, -0.2, 0.5, 1.0])}

  def errors(lr):
    measured = measured_order_effect(params, a, b, target, lr)
    return [abs(lr**2 * commutator.bracket(quadratic_loss, params, a, b, target, reference=r,
                                           lr=lr) - measured) for r in ('theta0', 'trotter')]

  (theta0_big, trotter_big), (theta0_small, trotter_small) = errors(0.02), errors(0.01)
  assert theta0_big / theta0_small == pytest.approx(8, rel=0.1)  # O(η³)
  assert trotter_big / trotter_small == pytest.approx(16, rel=0.1)  # O(η⁴)
  assert trotter_small < 0.05 * theta0_small


def test_tournament_scores_are_negated_row_sums_of_the_pairwise_matrix():
  params = mlp_params(jax.random.key(0))
  *sources, target = mlp_batches(jax.random.key(1), 5)
  order, scores = commutator.tournament(mlp_loss, params, sources, target)
  sigma = commutator.pairwise_matrix(mlp_loss, params, sources, target)
  np.testing.assert_allclose(sigma, -sigma.T)
  np.testing.assert_allclose(scores, -sigma.sum(axis=1), rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(order, np.argsort(-scores))
  assert np.ptp(scores) > 0


def test_kemeny_order_minimizes_the_pairwise_cost():
  sigma = np.array([[0., 1., -2.], [-1., 0., 3.], [2., -3., 0.]])
  # Costs Σ_{i before j} σ_ij: 012: 2, 021: -4, 102: 0, 120: 4, 201: 0, 210: -2.
  np.testing.assert_array_equal(commutator.kemeny_order(sigma), [0, 2, 1])


def adam_two_phases(loss, params, opt_state, tx, first, second, steps):
  grad = jax.grad(loss)
  for batch in [first] * steps + [second] * steps:
    updates, opt_state = tx.update(grad(params, batch), opt_state)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('steps', [1, 5])
def test_adam_bracket_predicts_the_measured_adam_order_effect(steps):
  a, b, target = quadratic_sources(jax.random.key(5), 3)
  params = {'theta': jnp.array([0.3, -0.2, 0.5, 1.0])}
  hyper = commutator.AdamHyper(lr=1e-3)
  tx = optax.adam(hyper.lr, hyper.b1, hyper.b2, hyper.eps)
  opt_state = tx.init(params)
  # A real optimizer state: a few warm-up steps on the mixture of the three losses.
  warm = {'q': (a['q'] + b['q']) / 2, 'b': (a['b'] + b['b'] + target['b']) / 3}
  params, opt_state = adam_warmup(params, opt_state, tx, warm, 20)
  measured = [quadratic_loss(adam_two_phases(quadratic_loss, params, opt_state, tx, x, y, steps),
                             target) for x, y in ((a, b), (b, a))]
  measured = float(measured[0] - measured[1])
  predicted = commutator.adam_bracket(quadratic_loss, params, opt_state, a, b, target, hyper=hyper,
                                      steps=steps)
  assert predicted == pytest.approx(measured, rel=0.02)


def adam_warmup(params, opt_state, tx, batch, steps):
  for _ in range(steps):
    updates, opt_state = tx.update(jax.grad(quadratic_loss)(params, batch), opt_state)
    params = optax.apply_updates(params, updates)
  return params, opt_state


def test_adam_moments_finds_the_state_inside_a_chain():
  params = {'theta': jnp.zeros(3)}
  state = optax.adamw(1e-3).init(params)
  assert isinstance(commutator.adam_moments(state), optax.ScaleByAdamState)
  with pytest.raises(ValueError, match='ScaleByAdamState'):
    commutator.adam_moments(optax.sgd(0.1).init(params))


def test_empty_source_list_is_rejected():
  params = mlp_params(jax.random.key(0))
  target = mlp_batches(jax.random.key(1), 1)[0]
  with pytest.raises(ValueError, match='source_batches is empty'):
    commutator.tournament(mlp_loss, params, [], target)


def test_mismatched_source_structure_names_the_source():
  params = mlp_params(jax.random.key(0))
  sources = mlp_batches(jax.random.key(1), 3)
  sources[2] = {'x': sources[2]['x']}
  with pytest.raises(ValueError, match=r'source_batches\[2\] has tree structure'):
    commutator.tournament(mlp_loss, params, sources[:3], sources[0])
  sources = mlp_batches(jax.random.key(1), 3)
  sources[1]['x'] = sources[1]['x'][:, :2]
  with pytest.raises(ValueError, match=r'source_batches\[1\] has leaves'):
    commutator.tournament(mlp_loss, params, sources, sources[0])


def test_non_finite_gradient_names_the_source():
  params = mlp_params(jax.random.key(0))
  sources = mlp_batches(jax.random.key(1), 4)
  sources[2]['y'] = sources[2]['y'].at[0].set(jnp.nan)
  with pytest.raises(ValueError, match=r'source_batches\[2\]: the loss gradient is not finite'):
    commutator.tournament(mlp_loss, params, sources[:3], sources[3])


def test_bracket_rejects_unknown_reference_and_missing_lr():
  params = mlp_params(jax.random.key(0))
  a, b, e = mlp_batches(jax.random.key(1), 3)
  with pytest.raises(ValueError, match='reference'):
    commutator.bracket(mlp_loss, params, a, b, e, reference='theta1')
  with pytest.raises(ValueError, match='lr > 0'):
    commutator.bracket(mlp_loss, params, a, b, e, reference='trotter')


def test_trotter_tournament_of_two_sources_is_the_trotter_bracket():
  params = mlp_params(jax.random.key(0))
  a, b, target = mlp_batches(jax.random.key(1), 3)
  _, scores = commutator.tournament(mlp_loss, params, [a, b], target, reference='trotter', lr=0.1,
                                    steps=3)
  sigma = commutator.bracket(mlp_loss, params, a, b, target, reference='trotter', lr=0.1, steps=3)
  np.testing.assert_allclose(scores, [-sigma, sigma], rtol=1e-9)


@pytest.mark.slow
def test_quick_experiment_writes_the_summary(tmp_path):
  import json
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, os.path.join(repo, 'experiments', 'commutator.py'), '--quick',
                  '--out', str(tmp_path)], check=True, cwd=repo)
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['headline']['value'] >= 0.9  # k = 1 is deep in the bracket's local regime
  assert summary['adam_aware_accuracy_k5'] > summary['plain_accuracy_adam_k5']
  assert 0 <= summary['tournament_percentile'] <= 100
  assert {p.name for p in tmp_path.glob('*.png')} >= {'accuracy_vs_k.png',
                                                        'scatter_predicted_vs_measured.png'}
