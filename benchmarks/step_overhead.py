"""Our train step vs a bare jax/optax step of the same model math; curriculum vs fixed batch.

`python benchmarks/step_overhead.py [--quick]`: one JSON line per case. Runs on the real devices
(no fake-device flag), the default preset unless --quick.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import median_times, report  # noqa: E402
from configs import default  # noqa: E402
from curriculum import api  # noqa: E402
from data.pool import from_tokens  # noqa: E402
from models.transformer import flops_per_token  # noqa: E402
from parallel.mesh import make_mesh  # noqa: E402
from training import metrics, state as state_lib, step as step_lib  # noqa: E402


def bare_step(config, graphdef, params):
  """Hand-written: plain cross-entropy, jax.grad over the parameter pytree, optax adamw."""
  tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip),
                   optax.adamw(state_lib.learning_rate(config), config.optim.b1, config.optim.b2,
                               config.optim.eps, weight_decay=config.optim.weight_decay))

  def loss_fn(p, tokens):
    logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(p, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  return step, tx.init(params)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  config = default.get_config('tiny' if args.quick else None)
  repeats = 10 if args.quick else 20
  b, t = config.train.batch_size, config.data.seq_len
  mesh = make_mesh({'data': 1}, jax.devices()[:1])
  rules = config.parallel.rules
  graphdef, state, shardings = state_lib.init_state(config, mesh, rules, jax.random.key(0))
  pool_tokens = jax.random.randint(jax.random.key(1), (8 * b, t + 1), 0, 256, jnp.int32)
  pool = jax.device_put(from_tokens(pool_tokens))
  curriculum = api.uniform(pool.size, b)
  cstate = curriculum.init(jax.random.key(2))
  c_shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.P()), cstate)
  ours = step_lib.jit_pool_step(graphdef, curriculum, 0.0, shardings, c_shardings, pool, mesh)
  fixed = jax.jit(step_lib.make_update(graphdef, curriculum, 0.0), donate_argnums=(0, 1))
  idx, batch = jnp.arange(b), pool.tokens[:b]

  carry = {'ours': (state, cstate), 'fixed': jax.tree.map(jnp.copy, (state, cstate))}

  def run_ours():
    s, c, m = ours(*carry['ours'], pool)
    carry['ours'] = (s, c)
    return m['loss']

  def run_fixed():
    s, c, m = fixed(*carry['fixed'], idx, batch)
    carry['fixed'] = (s, c)
    return m['loss']

  model_graphdef, params = nnx.split(state_lib.make_model(config, jax.random.key(0)), nnx.Param)
  bare, opt_state = bare_step(config, model_graphdef, params)
  bare_carry = [params, opt_state]

  def run_bare():
    bare_carry[0], bare_carry[1], loss = bare(*bare_carry, batch)
    return loss

  t_ours, t_fixed, t_bare = median_times([run_ours, run_fixed, run_bare], repeats)
  peak = metrics.measure_matmul_peak()
  fpt = flops_per_token(state_lib.decoder_config(config), t)
  tokens_per_s = b * t / t_ours
  common = {'preset': 'default:tiny' if args.quick else 'default', 'tokens_per_s': tokens_per_s,
            'mfu': tokens_per_s * fpt / peak, 'matmul_peak_flops': peak}
  report('step_vs_bare', t_ours / t_bare, 'bare jax.jit + optax step, same model, fixed batch',
         '<= 1.05', ours_s=t_ours, bare_s=t_bare, **common)
  report('curriculum_vs_fixed', t_ours / t_fixed, 'our step on a fixed batch (no curriculum)',
         '<= 1.02', ours_s=t_ours, fixed_s=t_fixed, **common)


if __name__ == '__main__':
  main()
