import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curriculum import spaced
from curriculum.api import Feedback


def blobs(num_clusters=10, per=30, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, 8)) * 10
  feats = np.concatenate([c + rng.normal(size=(per, 8)) for c in centers])
  truth = np.repeat(np.arange(num_clusters), per)
  difficulty = rng.uniform(0.1, 0.9, size=len(feats))
  return feats, difficulty, truth


def test_ngram_features_count_every_ngram_stably():
  f = spaced.char_ngram_features(['12+3=', '7*8='], orders=(1, 2), dim=64)
  assert f.shape == (2, 64)
  np.testing.assert_array_equal(f.sum(1), [5 + 4, 4 + 3])
  np.testing.assert_array_equal(f, spaced.char_ngram_features(['12+3=', '7*8='], (1, 2), 64))


def test_farthest_points_hand_computed():
  x = np.array([[0.], [1.], [2.], [10.]])
  # Nearest the centroid 1.1 is x=1, farthest from it x=10; x=0 and x=2 then tie at min distance
  # 1 and the first index wins.
  np.testing.assert_array_equal(spaced.farthest_points(x, np.array([1.1]), 3), [1, 3, 0])


def test_reduce_pool_keeps_l_diverse_items_of_each_cluster():
  feats, difficulty, truth = blobs()
  reduced = spaced.reduce_pool(feats, difficulty, num_clusters=10, per_cluster=5, num_components=8,
                               difficulty_weight=0.1)
  assert len(reduced.indices) == 50 and len(set(reduced.indices.tolist())) == 50
  np.testing.assert_array_equal(np.bincount(reduced.cluster), [5] * 10)
  # k-means recovers the blobs, and every kept item belongs to the cluster it is filed under.
  for k in range(10):
    kept = reduced.indices[reduced.cluster == k]
    assert len(set(truth[kept].tolist())) == 1
    np.testing.assert_array_equal(reduced.labels[kept], k)


def test_reduce_pool_rejects_bad_input():
  feats, difficulty, _ = blobs(num_clusters=2, per=10)
  with pytest.raises(ValueError, match='num_clusters \\* per_cluster'):
    spaced.reduce_pool(feats, difficulty, num_clusters=3, per_cluster=7)
  with pytest.raises(ValueError, match='solves no item'):
    spaced.reduce_pool(feats, np.zeros(20), num_clusters=2, per_cluster=3)
  with pytest.raises(ValueError, match='reward'):
    spaced.cluster_bandit(np.arange(4), 2, reward='ucb')


def feedback(correct):
  correct = jnp.asarray(correct, jnp.float32)
  return Feedback(loss=jnp.zeros(len(correct)), tokens=jnp.ones(len(correct)),
                  reward=correct.mean(1), correct=correct)


def test_bandit_update_matches_hand_computation():
  cluster = np.array([0, 0, 1, 1])
  cur = spaced.cluster_bandit(cluster, 2, reward='progress', ema_decay=0.5, progress_weight=2.0)
  state = cur.init(jax.random.key(0))
  idx, state = cur.next_batch(state)  # first K steps pull each cluster in order
  assert sorted(np.asarray(idx).tolist()) == [0, 1]
  state = cur.update(state, idx, feedback([[1, 0], [0, 0]]))  # solve rate 0.25
  np.testing.assert_allclose(state.solve_ema, [0.25, 0])
  np.testing.assert_allclose(state.reward_sum, [0.75, 0])  # (1 - 0.25) + 2 * 0 (first pull)
  np.testing.assert_array_equal(state.pulls, [1, 0])
  state = cur.update(state, jnp.array([1, 0]), feedback([[1, 1], [1, 0]]))  # solve rate 0.75
  np.testing.assert_allclose(state.solve_ema, [0.5, 0])  # 0.5 * 0.25 + 0.5 * 0.75
  np.testing.assert_allclose(state.progress, [0.25, 0])
  np.testing.assert_allclose(state.reward_sum, [0.75 + 0.5 + 2 * 0.25, 0])
  np.testing.assert_allclose(state.weight, [2, 0])

  negated = spaced.cluster_bandit(cluster, 2, reward='negated', discount=0.5)
  state = negated.update(negated.init(jax.random.key(0)), jnp.array([0, 2]),
                         feedback([[1, 1], [1, 0]]))
  np.testing.assert_allclose(state.reward_sum, [-1.0, -0.5])
  state = negated.update(state, jnp.array([3, 3]), feedback([[0, 0], [0, 0]]))
  np.testing.assert_allclose(state.reward_sum, [-0.5, -0.25])
  np.testing.assert_allclose(state.weight, [0.5, 1.5])

  variance = spaced.cluster_bandit(cluster, 2, reward='variance')
  state = variance.update(variance.init(jax.random.key(0)), jnp.array([2, 3]),
                          feedback([[1, 1], [1, 0]]))
  np.testing.assert_allclose(state.reward_sum, [0, 0.75 * 0.25])


def run_bandit(cur, solve_prob, steps, state=None, key=0):
  """Drives a bandit with clusters of fixed solve probability; returns the pulled arms."""
  state = cur.init(jax.random.key(key)) if state is None else state

  @jax.jit
  def step(state, t):
    idx, state = cur.next_batch(state)
    p = solve_prob[idx // 4]  # 4 rows per cluster
    correct = jax.random.bernoulli(jax.random.fold_in(jax.random.key(99), t), p[:, None],
                                   (idx.shape[0], 8)).astype(jnp.float32)
    return cur.update(state, idx, feedback(correct)), idx[0] // 4

  arms = []
  for t in range(steps):
    state, arm = step(state, state.step)
    arms.append(int(arm))
  return np.array(arms), state


def test_zero_solve_cluster_traps_negated_reward_but_not_progress():
  cluster = np.repeat(np.arange(4), 4)
  solve_prob = jnp.array([0.0, 0.3, 0.6, 0.9])
  arms_v1, _ = run_bandit(spaced.cluster_bandit(cluster, 4, reward='negated', sigma0=0.2),
                          solve_prob, 60)
  arms_lp, _ = run_bandit(spaced.cluster_bandit(cluster, 4, reward='progress', sigma0=0.2),
                          solve_prob, 60)
  assert np.mean(arms_v1[20:] == 0) > 0.8
  assert np.mean(arms_lp[20:] == 0) < 0.2


def test_bandit_resumes_exactly_from_saved_state():
  cluster = np.repeat(np.arange(4), 4)
  solve_prob = jnp.array([0.1, 0.3, 0.6, 0.9])
  cur = spaced.cluster_bandit(cluster, 3, reward='progress')
  full, full_state = run_bandit(cur, solve_prob, 20)
  first, mid = run_bandit(cur, solve_prob, 8)
  saved = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else
                       jnp.asarray(np.asarray(x)), mid)  # a host round trip, as a checkpoint does
  rest, end_state = run_bandit(cur, solve_prob, 12, state=saved)
  np.testing.assert_array_equal(np.concatenate([first, rest]), full)
  for a, b in zip(jax.tree.leaves(end_state), jax.tree.leaves(full_state)):
    if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      np.testing.assert_array_equal(a, b)
