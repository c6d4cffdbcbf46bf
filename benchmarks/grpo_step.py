"""Step time of GRPO with the SPaCe bandit vs uniform sampling, measured side by side.

Prints one JSON line `bandit_vs_uniform`: median step time with the bandit / with the uniform
curriculum, the same model, pool and rollouts (target <= 1.02: choosing the data costs nothing
next to sampling and the update).

    python benchmarks/grpo_step.py [--quick]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from configs import spaced_arith
from curriculum import api, spaced
from data import arithmetic
from parallel.mesh import make_mesh
from training import grpo
from training.spaced import build_model


def pool_of(num: int, prompt_len: int, answer_len: int):
  rng = np.random.default_rng(0)
  problems = [arithmetic.make_problem(rng, int(rng.integers(1, 6))) for _ in range(num)]
  return tuple(jnp.asarray(a) for a in arithmetic.encode_problems(
      [p[1] for p in problems], [p[2] for p in problems], prompt_len, answer_len))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  config = spaced_arith.get_config()
  steps, batch, group = (8, 4, 4) if args.quick else (30, 8, 8)
  k, per = config.reduction.num_clusters, config.reduction.per_cluster
  graphdef, params = build_model(config)
  pool = pool_of(k * per, config.data.prompt_len, config.grpo.answer_len)
  cfg = grpo.GRPOConfig(group_size=group, answer_len=config.grpo.answer_len)
  tx = optax.adam(1e-4)
  mesh = make_mesh({'data': -1})
  curricula = {'uniform': api.uniform(k * per, batch),
               'bandit': spaced.cluster_bandit(np.repeat(np.arange(k), per), batch)}
  runners = {}
  for name, cur in curricula.items():
    step = grpo.make_grpo_step(graphdef, tx, cur, cfg, mesh)
    state = [jax.tree.map(jnp.copy, params), tx.init(params), cur.init(jax.random.key(0))]
    runners[name] = (step, state)
  times = {name: [] for name in curricula}
  for t in range(steps + 1):  # the first call of each compiles and is not timed
    for name, (step, state) in runners.items():
      start = time.perf_counter()
      new_params, opt_state, cstate, metrics = step(*state, params, pool, jax.random.key(t))
      jax.block_until_ready(metrics['loss'])
      state[:] = [new_params, opt_state, cstate]
      if t:
        times[name].append(time.perf_counter() - start)
  bandit, uniform = float(np.median(times['bandit'])), float(np.median(times['uniform']))
  print(json.dumps(dict(name='bandit_vs_uniform', ratio=bandit / uniform, baseline='uniform',
                        target=1.02, bandit_step_s=bandit, uniform_step_s=uniform, steps=steps,
                        batch=batch, group=group, device=jax.devices()[0].device_kind)))


if __name__ == '__main__':
  main()
