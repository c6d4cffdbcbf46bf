import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from curriculum import commutator
from parallel.mesh import make_mesh


def loss(params, batch):
  h = jnp.tanh(batch['x'] @ params['w1'])
  return jnp.mean((h @ params['w2'] - batch['y'])**2)


def problem(num_sources=4, size=32, d_in=8, d_hidden=16):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {'w1': jax.random.normal(k1, (d_in, d_hidden)) / 3,
            'w2': jax.random.normal(k2, (d_hidden,)) / 4}
  batches = [{'x': jax.random.normal(k, (size, d_in)),
              'y': jnp.cos(i + jax.random.normal(jax.random.fold_in(k, 1), (size,)))}
             for i, k in enumerate(jax.random.split(k3, num_sources + 1))]
  return params, batches[:-1], batches[-1]


def shard(mesh, params, sources, target):
  """Hidden units split over 'fsdp' x 'tensor', examples over 'data'."""
  hidden = NamedSharding(mesh, P(None, ('fsdp', 'tensor')))
  params = {'w1': jax.device_put(params['w1'], hidden),
            'w2': jax.device_put(params['w2'], NamedSharding(mesh, P(('fsdp', 'tensor'))))}
  rows = lambda b: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(
      mesh, P('data', *(None,) * (x.ndim - 1)))), b)
  return params, [rows(b) for b in sources], rows(target)


def test_sharded_hvp_and_tournament_match_one_device():
  params, sources, target = problem()
  v = jax.tree.map(jnp.ones_like, params)
  want_hvp = commutator.hvp(loss, params, v, target)
  want_order, want_scores = commutator.tournament(loss, params, sources, target)

  mesh = make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  with jax.set_mesh(mesh):
    sharded = shard(mesh, params, sources, target)
    got_hvp = jax.jit(lambda p, v, b: commutator.hvp(loss, p, v, b))(sharded[0], v, sharded[2])
    got_order, got_scores = commutator.tournament(loss, *sharded)
  assert len(got_hvp['w1'].sharding.device_set) == 8
  for key in want_hvp:
    np.testing.assert_allclose(got_hvp[key], want_hvp[key], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(got_order, want_order)
