"""Shared helpers of the benchmarks: timing and the one-JSON-line report."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path set-up above)
import numpy as np  # noqa: E402


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
  """Median wall time of `fn()` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def report(name: str, ratio: float, baseline: str, target: str, **figures):
  row = {'name': name, 'ratio': round(float(ratio), 4), 'baseline': baseline, 'target': target,
         **figures, 'device': jax.devices()[0].device_kind}
  print(json.dumps(row), flush=True)
  return row
