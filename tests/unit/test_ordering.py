"""Data-organization orders: METHODS.md 2.4 worked examples, properties, bad input, config dispatch."""

import re

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from curriculum import ordering

SCORES = np.arange(20)  # index i has score i, so every order reads as its scores


@pytest.mark.parametrize('order, expected', [
    (ordering.sort(SCORES), list(range(20))),
    (ordering.fold(SCORES, 3),
     [0, 3, 6, 9, 12, 15, 18, 1, 4, 7, 10, 13, 16, 19, 2, 5, 8, 11, 14, 17]),
    (ordering.zigzag(SCORES, 3),
     [0, 3, 6, 9, 12, 15, 18, 19, 16, 13, 10, 7, 4, 1, 2, 5, 8, 11, 14, 17]),
    (ordering.stair(SCORES),
     [0, 1, 2, 3, 4, 5, 6, 9, 12, 7, 10, 13, 8, 11, 14, 15, 16, 17, 18, 19]),
    (ordering.saw(SCORES),
     [0, 1, 2, 3, 4, 5, 7, 8, 6, 9, 10, 11, 13, 14, 12, 15, 16, 17, 18, 19]),
    (ordering.stair(SCORES, num_sections=3, folding_ratio=0.1, folding_layers=2),
     [0, 1, 2, 3, 4, 5, 7, 6, 8, 9, 10, 11, 13, 12, 14, 15, 16, 17, 18, 19]),
    (ordering.delt(SCORES), ordering.fold(SCORES, 3).tolist()),
], ids=['CL', 'FO3', 'ZIG3', 'STR', 'SAW', 'STR-K3', 'DELT'])
def test_worked_examples(order, expected):
  assert order.tolist() == expected


def test_half_to_even_rounding_of_the_half_width():
  # round(4.5) = 4 keeps 14 in the stable region; round-half-up would fold [5, 15) instead.
  assert ordering.stair(SCORES)[14:].tolist() == list(range(14, 20))
  assert ordering.stair(SCORES)[5] == 5


def test_segment_l10_h10_blocks():
  order = ordering.segment(SCORES, seed=3)
  assert sorted(order[:2]) == [0, 1]
  assert sorted(order[2:18]) == list(range(2, 18))
  assert sorted(order[18:]) == [18, 19]
  assert order[2:18].tolist() != list(range(2, 18))  # the middle is shuffled


def test_segment_both_blocks_from_the_high_end():
  order = ordering.segment(SCORES, front=10, back=20, front_is_high=True, back_is_high=True)
  assert set(order[:2]) | set(order[-4:]) == set(range(14, 20))
  assert sorted(order[2:-4]) == list(range(14))


def test_descending_and_ties_are_stable():
  scores = np.array([1, 0, 1, 0, 2])
  assert ordering.sort(scores).tolist() == [1, 3, 0, 2, 4]
  assert ordering.sort(scores, ascending=False).tolist() == [4, 0, 2, 1, 3]
  assert ordering.sort(np.array([0, 1], np.uint8), ascending=False).tolist() == [1, 0]


def test_random_and_jitter_are_seeded():
  assert np.array_equal(ordering.random(SCORES, seed=1), ordering.random(SCORES, seed=1))
  assert not np.array_equal(ordering.random(SCORES, seed=1), ordering.random(SCORES, seed=2))
  assert np.array_equal(ordering.saw(SCORES, window=4, seed=5), ordering.saw(SCORES, window=4, seed=5))
  assert ordering.jitter(SCORES, 1, 0).tolist() == SCORES.tolist()


def test_soft_jitter_keeps_a_trend():
  order = ordering.sort(np.arange(1000), temperature=20.0, seed=0)
  assert order.tolist() != list(range(1000))
  assert np.corrcoef(order, np.arange(1000))[0, 1] > 0.95


scores_strategy = hnp.arrays(np.float64, st.integers(0, 300),
                             elements=st.floats(-1e6, 1e6, allow_nan=False))
STR_SAW = st.sampled_from([ordering.stair, ordering.saw])


def _is_permutation(order, n):
  return order.shape == (n,) and np.array_equal(np.sort(order), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(scores=scores_strategy, fn=STR_SAW, k=st.integers(1, 6), rho=st.floats(0, 0.499),
       layers=st.integers(1, 6), window=st.integers(0, 50), seed=st.integers(0, 2**31))
def test_str_saw_are_permutations(scores, fn, k, rho, layers, window, seed):
  order = fn(scores, num_sections=k, folding_ratio=rho, folding_layers=layers, window=window,
             seed=seed)
  assert _is_permutation(order, scores.size)


@settings(max_examples=40, deadline=None)
@given(scores=scores_strategy, layers=st.integers(1, 8), seed=st.integers(0, 2**31),
       front=st.integers(0, 50), back=st.integers(0, 50), hi=st.booleans(), lo=st.booleans())
def test_primitives_are_permutations(scores, layers, seed, front, back, hi, lo):
  n = scores.size
  for order in (ordering.sort(scores), ordering.random(scores, seed), ordering.fold(scores, layers),
                ordering.zigzag(scores, layers),
                ordering.segment(scores, front, back, hi, lo, seed),
                ordering.jitter(np.arange(n), layers, seed)):
    assert _is_permutation(order, n)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(40, 400), fn=STR_SAW, k=st.integers(2, 5), rho=st.floats(0.01, 0.2),
       layers=st.integers(1, 4), seed=st.integers(0, 1000))
def test_str_saw_trend_easy_to_hard(n, fn, k, rho, layers, seed):
  # Scores are ranks, so position vs score measures the trend; a transition region only mixes
  # ranks within 2 * round(n * rho) of each other.
  scores = np.random.default_rng(seed).permutation(n)
  order = fn(scores, num_sections=k, folding_ratio=rho, folding_layers=layers)
  ranks = scores[order]
  assert np.max(np.abs(ranks - np.arange(n))) <= 2 * round(n * rho)
  first, last = ranks[:n // k], ranks[-(n // k):]
  assert first.mean() < last.mean()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(1, 5), rho=st.floats(0, 0.499),
       layers=st.integers(1, 5))
def test_saw_is_continuous(n, k, rho, layers):
  # Inside a region ZIG steps L up or L down and turns within L ranks, so the score never drops
  # by more than L; STR's folds drop by about the region width at every fold.
  ranks = ordering.saw(np.arange(n), num_sections=k, folding_ratio=rho, folding_layers=layers)
  assert n < 2 or np.diff(ranks).min() >= -layers


def test_stair_jumps_where_saw_does_not():
  n, rho, layers = 1000, 0.1, 3
  stair_steps = np.diff(ordering.stair(np.arange(n), 2, rho, layers))
  saw_steps = np.diff(ordering.saw(np.arange(n), 2, rho, layers))
  assert stair_steps.min() < -100
  assert saw_steps.min() >= -layers


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 500), window=st.integers(0, 80), seed=st.integers(0, 2**31))
def test_jitter_only_shuffles_inside_windows(n, window, seed):
  base = np.random.default_rng(seed).permutation(n)
  out = ordering.jitter(base, window, seed)
  w = max(window, 1)
  for start in range(0, n, w):
    assert sorted(out[start:start + w]) == sorted(base[start:start + w])


def test_jitter_moves_something_when_windows_are_large():
  assert ordering.jitter(np.arange(100), 10, 0).tolist() != list(range(100))


@pytest.mark.parametrize('call, param', [
    (lambda: ordering.stair([0.0, np.nan, 1.0]), 'scores'),
    (lambda: ordering.saw([0.0, np.inf]), 'scores'),
    (lambda: ordering.sort(np.zeros((2, 2))), 'scores'),
    (lambda: ordering.sort(['a', 'b']), 'scores'),
    (lambda: ordering.stair(SCORES, num_sections=0), 'num_sections'),
    (lambda: ordering.saw(SCORES, folding_ratio=0.5), 'folding_ratio'),
    (lambda: ordering.saw(SCORES, folding_ratio=-0.1), 'folding_ratio'),
    (lambda: ordering.stair(SCORES, folding_layers=0), 'folding_layers'),
    (lambda: ordering.stair(SCORES, window=-1), 'window'),
    (lambda: ordering.jitter(SCORES, -3, 0), 'window'),
    (lambda: ordering.fold(SCORES, 0), 'layers'),
    (lambda: ordering.zigzag(SCORES, 1.5), 'layers'),
    (lambda: ordering.segment(SCORES, front=60, back=50), 'front + back'),
    (lambda: ordering.segment(SCORES, front=-1), 'front'),
    (lambda: ordering.sort(SCORES, temperature=-1.0), 'temperature'),
])
def test_bad_input_names_the_parameter(call, param):
  with pytest.raises(ValueError, match=re.escape(param)):
    call()


def _cfg(order, **order_args):
  return ml_collections.ConfigDict({'kind': 'ordered', 'order': order, 'order_args': order_args})


def test_permutation_from_config_dispatches_with_defaults_and_args():
  assert np.array_equal(ordering.permutation_from_config(_cfg('saw'), SCORES, 0), ordering.saw(SCORES))
  got = ordering.permutation_from_config(_cfg('stair', num_sections=3, window=4), SCORES, seed=7)
  assert np.array_equal(got, ordering.stair(SCORES, num_sections=3, window=4, seed=7))
  assert np.array_equal(ordering.permutation_from_config(_cfg('random'), SCORES, 2),
                        ordering.random(SCORES, 2))


def test_permutation_from_config_window_jitters_any_order():
  got = ordering.permutation_from_config(_cfg('fold', layers=3, window=5), SCORES, seed=1)
  assert np.array_equal(got, ordering.jitter(ordering.fold(SCORES, 3), 5, 1))


@pytest.mark.parametrize('cfg, pool_size, match', [
    (_cfg('sawtooth'), None, 'curriculum.order'),
    (_cfg('saw', layers=2), None, 'curriculum.order_args.layers'),
    (_cfg('fold', layers=2, seed=3), None, 'curriculum.order_args.seed'),
    (_cfg('saw'), 21, 'pool'),
])
def test_permutation_from_config_bad_config(cfg, pool_size, match):
  with pytest.raises(ValueError, match=match):
    ordering.permutation_from_config(cfg, SCORES, 0, pool_size=pool_size)


def test_ordered_curriculum_accepts_every_order():
  from curriculum import api  # the trainer's consumer of these permutations
  for name in ordering.ORDERS:
    perm = ordering.permutation_from_config(_cfg(name), np.linspace(0, 1, 64), 0)
    api.ordered(perm, batch_size=8)


@settings(max_examples=60, deadline=None)
@given(scores=hnp.arrays(np.float64, st.integers(0, 200),
                         elements=st.sampled_from([-1.0, -0.0, 0.0, 0.5, 2.0, 1e300])),
       ascending=st.booleans())
def test_sort_matches_numpy_stable_sort_with_ties(scores, ascending):
  expected = np.argsort(scores if ascending else -scores, kind='stable')
  assert np.array_equal(ordering.sort(scores, ascending), expected)
