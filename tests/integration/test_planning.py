"""The tournament curriculum's planner on a tiny decoder over an 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from curriculum import api, commutator
from data import pool as pool_lib
from parallel.mesh import make_mesh
from parallel.sharding import use_rules
from training import planning, state as state_lib


def tiny_config(**curriculum):
  config = default.get_config('tiny')
  config.model.update(num_layers=1, d_model=32, mlp_dim=64, max_len=16)
  config.data.seq_len = 16
  config.curriculum.update(dict(dict(kind='tournament', steps_per_source=2, plan_batch_size=8,
                                     replan_every=2), **curriculum))
  return config


@pytest.fixture(scope='module')
def planned():
  """(planner, state, fresh phased state); one planner, so the tests share its compiled loss."""
  config = tiny_config()
  mesh = make_mesh({'data': 4, 'tensor': 2})
  rules = tuple(tuple(r) for r in config.parallel.rules)
  rng = np.random.default_rng(0)
  # Three sources with different byte statistics, so their gradients differ.
  tokens = np.concatenate([rng.integers(lo, lo + 40, (24, config.data.seq_len + 1))
                           for lo in (0, 60, 120)])
  source = np.repeat(np.arange(3), 24)
  pool = pool_lib.from_tokens(tokens, source)
  eval_pool = pool_lib.from_tokens(rng.integers(0, 160, (24, config.data.seq_len + 1)))
  graphdef, state, _ = state_lib.init_state(config, mesh, rules, jax.random.key(0))
  planner = planning.make_planner(config, graphdef, pool, None, eval_pool, mesh, rules)
  cur = api.phased(source, [0, 1, 2], config.curriculum.steps_per_source,
                   config.train.batch_size)
  return planner, state, cur.init(jax.random.key(1))


def test_first_plan_is_the_tournament_order_of_the_planner_batches(planned):
  planner, state, cstate = planned
  planned = planner(state, cstate, 0)
  with jax.set_mesh(planner.mesh), use_rules(planner.rules):
    loss_fn, params = planner.loss_fn_and_params(state)
    want, _ = commutator.tournament(loss_fn, params, planner.source_batches(np.arange(3), 0),
                                    jnp.asarray(planner.target))
  np.testing.assert_array_equal(planned.order, want)
  assert planned.step == cstate.step


def test_replan_keeps_the_sources_already_trained_in_this_cycle(planned):
  planner, state, cstate = planned
  cstate = cstate._replace(order=jnp.array([2, 0, 1], jnp.int32))
  assert planner.due(2) and not planner.due(3) and not planner.due(0)
  replanned = planner(state, cstate, 2)  # phase 1 of the cycle starts: source 2 keeps place 0
  assert int(replanned.order[0]) == 2
  assert sorted(np.asarray(replanned.order).tolist()) == [0, 1, 2]


def test_replanned_order_reranks_only_the_remaining_sources():
  order = planning.replanned_order(np.array([3, 1, 0, 2]), 2, lambda rest: np.array([1, 0]))
  np.testing.assert_array_equal(order, [3, 1, 2, 0])
  np.testing.assert_array_equal(planning.replanned_order(np.array([1, 0]), 1, None), [1, 0])


@pytest.mark.parametrize('key,value,match', [
    ('replan_every', 3, 'replan_every=3 must be 0'),
    ('plan_batch_size', 6, 'plan_batch_size=6 must be a positive multiple'),
])
def test_bad_tournament_settings_name_the_key(key, value, match):
  with pytest.raises(ValueError, match=match):
    planning.validate(tiny_config(**{key: value}), make_mesh({'data': 4, 'tensor': 2}))


@pytest.mark.slow
def test_main_trains_a_replanned_tournament_over_two_corpora(tmp_path):
  import json
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, 'main.py', '--config', 'configs/default.py:tiny',
                  '--workdir', str(tmp_path), '--config.data.corpus=shakespeare,kjv',
                  '--config.curriculum.kind=tournament', '--config.curriculum.steps_per_source=2',
                  '--config.curriculum.replan_every=4', '--config.curriculum.plan_batch_size=8'],
                 check=True, cwd=repo)
  steps = [json.loads(line)['step'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert steps[-1] == 8
