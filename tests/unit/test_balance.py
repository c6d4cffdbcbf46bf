import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel import balance as b

LINEAR_COST = b.CostModel(b.fit_throughput([1, 1000], [1.0, 1000.0]),
                          b.fit_throughput([1, 1000], [1.0, 1000.0]))  # 1 load unit per second


def brute_force_makespan(costs, num_bins):
  """Optimum over every assignment with no empty bin (tiny instances only)."""
  best = np.inf
  for bins in itertools.product(range(num_bins), repeat=len(costs)):
    bins = np.array(bins)
    if len(set(bins.tolist())) == num_bins:
      best = min(best, b.makespan(costs, bins, num_bins))
  return best


ordinary = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 300)), min_size=1, max_size=60)
excess = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 3000)), max_size=3)


@settings(max_examples=40, deadline=None)
@given(ordinary, excess, st.integers(1, 12), st.sampled_from(['lpt', 'cpsat']))
def test_balance_assigns_every_sample_exactly_once(samples, oversized, num_bins, solver):
  num_bins = min(num_bins, len(samples))
  tiles, tokens = np.array(samples).T
  # Rungs generous enough for any balanced bin; the oversized samples go past the last rung.
  image_ladder = b.ladder(2 * tiles.sum() // num_bins + 40)
  token_ladder = b.ladder(2 * tokens.sum() // num_bins + 600)
  tiles = np.concatenate([tiles, [t for t, _ in oversized]]).astype(int)
  tokens = np.concatenate([tokens, [token_ladder[-1] + e for _, e in oversized]]).astype(int)
  big = b.oversized(tiles, tokens, image_ladder, token_ladder)
  assert big.sum() == len(oversized)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    packing, _ = b.balance(LINEAR_COST, tiles, tokens, num_bins, image_ladder, token_ladder,
                           solver=solver, time_limit_s=1.0)
  assert any('exceed the largest bucket' in str(w.message) for w in caught) == bool(oversized)
  assert packing.bins.shape == tiles.shape
  assert packing.num_bins == num_bins + len(oversized)
  np.testing.assert_array_equal(np.bincount(packing.bins, minlength=packing.num_bins) > 0, True)
  # Each oversized sample is alone in one of the extra bins.
  assert sorted(packing.bins[big].tolist()) == list(range(num_bins, packing.num_bins))
  np.testing.assert_array_equal(packing.loads.sum(0), [tiles.sum(), tokens.sum()])
  assert np.all(packing.shapes >= packing.loads)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=80),
       st.integers(1, 16))
def test_lpt_fills_every_bin_and_meets_its_bound(costs, num_bins):
  costs = np.array(costs)
  num_bins = min(num_bins, len(costs))
  bins = b.assign_lpt(costs, num_bins)
  assert bins.min() >= 0 and bins.max() < num_bins
  assert len(np.unique(bins)) == num_bins
  # Greedy list scheduling: no bin exceeds the mean load plus the largest sample, per module.
  bound = costs.sum(0).max() / num_bins + 2 * costs.max()
  assert b.makespan(costs, bins, num_bins) <= bound + 1e-9


@pytest.mark.parametrize('seed', range(4))
def test_cpsat_is_optimal_on_small_instances_and_lpt_is_not_better(seed):
  rng = np.random.default_rng(seed)
  costs = rng.integers(1, 50, size=(7, 2)).astype(float)
  optimum = brute_force_makespan(costs, 3)
  result = b.assign_cpsat(costs, 3, time_limit_s=10.0)
  assert result.solver == 'cpsat' and result.status == 'OPTIMAL'
  assert b.makespan(costs, result.bins, 3) == pytest.approx(optimum, rel=1e-3)
  assert b.makespan(costs, b.assign_lpt(costs, 3), 3) >= optimum - 1e-9


def test_cpsat_falls_back_to_lpt_when_the_time_limit_hits():
  costs = np.random.default_rng(0).lognormal(size=(400, 2))
  with pytest.warns(UserWarning, match='time_limit_s'):
    result = b.assign_cpsat(costs, 16, time_limit_s=1e-4)
  assert result.solver == 'lpt'
  np.testing.assert_array_equal(result.bins, b.assign_lpt(costs, 16))


def test_balanced_bins_beat_sequential_bins_on_skewed_costs():
  costs = np.random.default_rng(1).lognormal(sigma=1.0, size=(256, 2))
  sequential = b.makespan(costs, b.sequential_bins(256, 16), 16)
  assert b.makespan(costs, b.assign_lpt(costs, 16), 16) < 0.8 * sequential


def test_ladder_and_pack_pick_the_smallest_bucket():
  rungs = b.ladder(100, growth=1.5, smallest=8, multiple=8)
  assert rungs[0] == 8 and rungs[-1] >= 100 and np.all(np.diff(rungs) > 0)
  packing = b.pack([0, 0, 1], [1, 2, 3], [10, 20, 9], 2, rungs, rungs)
  np.testing.assert_array_equal(packing.loads, [[3, 30], [3, 9]])
  for (i, t), (li, lt) in zip(packing.shapes, packing.loads):
    assert i == rungs[np.searchsorted(rungs, li)] and t == rungs[np.searchsorted(rungs, lt)]


def test_oversized_sample_gets_its_own_bucket_with_a_warning():
  rungs = b.ladder(64)
  with pytest.warns(UserWarning, match='exceed the largest bucket'):
    packing = b.pack([0, 1, 0], [1, 1, 1], [10, 300, 20], 2, rungs, rungs)
  np.testing.assert_array_equal(packing.bins, [0, 2, 0])
  assert packing.shapes[2, 1] >= 300 and packing.loads[1, 1] == 0


def test_overfull_bin_names_the_ladder():
  rungs = b.ladder(64)
  with pytest.raises(ValueError, match='token_ladder'):
    b.pack([0, 0], [1, 1], [40, 40], 1, rungs, rungs)


def test_padding_waste_counts_the_shared_bucket_of_a_data_parallel_step():
  packing = b.Packing(np.arange(4), np.array([[8, 10], [8, 20], [8, 10], [8, 10]]),
                      np.array([[1, 10], [1, 20], [1, 10], [1, 10]]))
  assert b.padding_waste(packing) == 0.0
  assert b.padding_waste(packing, group=2) == pytest.approx(1 - 50 / 60)


def test_throughput_fit_reproduces_profiled_times_and_interpolates():
  sizes = np.array([1, 4, 16, 64, 256])
  times = 0.002 + sizes * 1e-4  # fixed overhead + linear work
  curve = b.fit_throughput(sizes, times)
  np.testing.assert_allclose(b.predict_time(curve, sizes), times)
  mid = b.predict_time(curve, 100)
  assert 0.002 + 100e-4 == pytest.approx(mid, rel=0.1)
  assert b.predict_time(curve, 1000) > b.predict_time(curve, 256)  # extrapolates upward


def test_profile_measures_a_jitted_gradient():
  def build(n):
    x = jnp.ones((n, 32))
    step = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w))))
    return lambda: step(jnp.ones((32, 32)))

  curve = b.profile(build, [8, 64, 512], repeats=3)
  assert np.all(curve.rates > 0) and curve.sizes.tolist() == [8, 64, 512]


def test_memory_fit_recovers_a_linear_model_from_compiled_programs():
  truth = b.MemoryModel(1e6, 2e5, 3e3)
  layers, loads = np.array([1, 2, 4, 2, 4]), np.array([10, 10, 20, 50, 5])
  fit = b.fit_memory(layers, loads, truth(layers, loads))
  np.testing.assert_allclose(fit, truth, rtol=1e-6)
  f = jax.jit(lambda x: jnp.tanh(x @ x.T))
  small = b.compiled_memory(f, jax.ShapeDtypeStruct((16, 8), jnp.float32))
  large = b.compiled_memory(f, jax.ShapeDtypeStruct((256, 8), jnp.float32))
  assert 0 < small < large


def test_correction_learns_the_measured_over_predicted_ratio():
  state = b.correction_init()
  for _ in range(40):
    state = b.correction_update(state, predicted=[1.0, 2.0], measured=[1.5, 2.0])
  np.testing.assert_allclose(state.ratio, [1.5, 1.0], rtol=1e-3)
  fixed = b.corrected(LINEAR_COST, state)
  np.testing.assert_allclose(fixed.times(10, 10), [15, 10], rtol=1e-3)


def test_1f1b_simulator_matches_the_analytic_makespan_for_equal_stages():
  stages, micro, f = 4, 8, 0.5
  assert b.simulate_1f1b(np.full((stages, micro), f)) == pytest.approx((micro + stages - 1) * 3 * f)
  forward = np.random.default_rng(0).uniform(0.1, 1.0, (1, 5))
  assert b.simulate_1f1b(forward) == pytest.approx(3 * forward.sum())  # one stage: no overlap


def test_1f1b_simulator_is_bounded_by_the_slowest_stage():
  forward = np.random.default_rng(0).uniform(0.1, 1.0, (4, 12))
  makespan = b.simulate_1f1b(forward)
  assert makespan >= 3 * forward.sum(1).max()
  assert makespan <= 3 * forward.sum()


def test_layer_splits():
  np.testing.assert_array_equal(b.split_layers(7, 3), [3, 2, 2])
  np.testing.assert_array_equal(b.uniform_split(2, 4, 3), [[2, 0], [0, 2], [0, 2]])
  np.testing.assert_array_equal(b.uniform_split(3, 3, 4), [[2, 0], [1, 1], [0, 1], [0, 1]])
  np.testing.assert_array_equal(b.module_split(2, 4, 1, 2), [[2, 0], [0, 2], [0, 2]])
  times = b.stage_times(b.module_split(2, 4, 1, 2), [[1.0, 4.0]])
  np.testing.assert_allclose(times[:, 0], [1.0, 2.0, 2.0])


def test_layout_search_respects_memory_and_prefers_fewer_microbatches():
  tiles, tokens = np.full(64, 2), np.full(64, 100)

  def memory(module, layers, load):
    return layers * load * (10.0 if module == 'encoder' else 1.0)

  layout = b.search_layout(LINEAR_COST, tiles, tokens, num_devices=4, encoder_layers=2,
                           decoder_layers=6, memory=memory, memory_budget=1e9,
                           data_parallel_options=[1])
  # Decoder work is 50x the encoder's: one encoder stage, three decoder stages.
  assert (layout.encoder_stages, layout.decoder_stages, layout.data_parallel) == (1, 3, 1)
  assert layout.microbatches == 16  # 4, 8 and 16 are within 10% only at the largest count

  def decoder_heavy_memory(module, layers, load):
    del load
    return 1e9 if module == 'decoder' and layers <= 2 else 1.0  # 3-stage decoder does not fit

  constrained = b.search_layout(LINEAR_COST, tiles, tokens, num_devices=4, encoder_layers=2,
                                decoder_layers=6, memory=decoder_heavy_memory, memory_budget=1e6,
                                data_parallel_options=[1])
  assert (constrained.encoder_stages, constrained.decoder_stages) == (2, 2)


@pytest.mark.parametrize('call, match', [
    (lambda: b.fit_throughput([1, 2], [1.0]), 'sizes and times'),
    (lambda: b.fit_throughput([1, 1], [1.0, 2.0]), 'distinct'),
    (lambda: b.assign_lpt(np.ones((3, 2)), 4), 'num_bins'),
    (lambda: b.assign_lpt(np.ones((3, 3)), 2), 'costs'),
    (lambda: b.assign_cpsat(np.ones((3, 2)), 2, time_limit_s=0), 'time_limit_s'),
    (lambda: b.ladder(10, growth=1.0), 'growth'),
    (lambda: b.correction_update(b.correction_init(), 0.0, 1.0), 'predicted'),
    (lambda: b.balance(LINEAR_COST, [1], [1], 1, [8], [8], solver='ilp'), 'solver'),
    (lambda: b.search_layout(LINEAR_COST, [1] * 8, [10] * 8, num_devices=4, encoder_layers=2,
                             decoder_layers=2, memory=lambda *a: 1e9, memory_budget=1e6),
     'memory_budget'),
    (lambda: b.search_layout(LINEAR_COST, [1] * 8, [10] * 8, num_devices=1, encoder_layers=2,
                             decoder_layers=2, memory=lambda *a: 1.0, memory_budget=1e6),
     'num_devices'),
    (lambda: b.simulate_1f1b(np.ones(3)), 'forward'),
])
def test_bad_input_names_the_parameter(call, match):
  with pytest.raises(ValueError, match=match):
    call()
