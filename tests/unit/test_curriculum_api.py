import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curriculum import api


def draw(cur, steps, key=0):
  state = cur.init(jax.random.key(key))
  nb = jax.jit(cur.next_batch)
  out = []
  for _ in range(steps):
    idx, state = nb(state)
    out.append(np.asarray(idx))
  return np.stack(out), state


def test_uniform_is_without_replacement_within_each_epoch():
  n, b = 10, 4
  idx, _ = draw(api.uniform(n, b), 10)  # 40 draws = 4 epochs
  flat = idx.ravel()
  for e in range(4):
    assert sorted(flat[e * n:(e + 1) * n]) == list(range(n))
  assert not np.array_equal(flat[:n], flat[n:2 * n])  # a fresh permutation each epoch


def test_uniform_is_deterministic_per_key_and_resumes_from_state():
  cur = api.uniform(13, 5)
  a, _ = draw(cur, 6, key=3)
  b, _ = draw(cur, 6, key=3)
  np.testing.assert_array_equal(a, b)
  first, state = draw(cur, 3, key=3)
  nb = jax.jit(cur.next_batch)
  rest = []
  for _ in range(3):
    i, state = nb(state)
    rest.append(np.asarray(i))
  np.testing.assert_array_equal(np.concatenate([first, rest]), a)


def test_ordered_follows_the_permutation_and_wraps():
  perm = np.array([3, 1, 4, 0, 2])
  idx, _ = draw(api.ordered(perm, 2), 4)
  np.testing.assert_array_equal(idx.ravel(), [3, 1, 4, 0, 2, 3, 1, 4])


def test_ordered_rejects_non_permutation():
  with pytest.raises(ValueError, match='permutation'):
    api.ordered([0, 0, 1], 1)


def test_phased_trains_each_source_for_its_steps_in_order():
  source = np.array([0, 0, 1, 1, 1, 2, 2])
  cur = api.phased(source, [2, 0, 1], steps_per_source=2, batch_size=3)
  idx, _ = draw(cur, 8)
  phases = source[idx]
  np.testing.assert_array_equal(phases[:, 0], [2, 2, 0, 0, 1, 1, 2, 2])
  assert (phases == phases[:, :1]).all()


def test_sizes_are_checked():
  with pytest.raises(ValueError, match='smaller than one batch'):
    api.uniform(3, 4)
  with pytest.raises(ValueError, match='no examples'):
    api.phased(np.array([0, 2]), [0, 1, 2], 1, 1)
