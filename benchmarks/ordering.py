"""Cost of STR and SAW orders against one `np.argsort` of the same scores, measured side by side.

Prints one JSON line per setting: `order_vs_argsort` (repo defaults, no JIT) and
`order_vs_argsort_jit` (window = 10% of N); ratio = slower of STR and SAW / argsort, target <= 3.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from curriculum import ordering


def best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='1M scores, 2 repeats')
  args = parser.parse_args()
  n, repeats = (1_000_000, 2) if args.quick else (10_000_000, 3)
  scores = np.random.default_rng(0).standard_normal(n)
  device = jax.devices()[0].device_kind
  for name, window in (('order_vs_argsort', 0), ('order_vs_argsort_jit', n // 10)):
    argsort_s = best_time(lambda: np.argsort(scores), repeats)
    stair_s = best_time(lambda: ordering.stair(scores, window=window), repeats)
    saw_s = best_time(lambda: ordering.saw(scores, window=window), repeats)
    print(json.dumps({
        'name': name, 'ratio': round(max(stair_s, saw_s) / argsort_s, 3), 'baseline': 'np.argsort',
        'target': 3.0, 'num_scores': n, 'window': window, 'argsort_s': round(argsort_s, 4),
        'stair_s': round(stair_s, 4), 'saw_s': round(saw_s, 4), 'device': device}), flush=True)


if __name__ == '__main__':
  main()
