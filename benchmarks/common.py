"""Shared helpers of the benchmarks: timing and the one-JSON-line report."""

import json
import time

import jax
import numpy as np


def median_times(calls, repeats: int) -> list[float]:
  """Median wall time of each zero-argument call after one compiling call. The calls alternate,
  so a change in machine load hits every case alike."""
  for call in calls:
    jax.block_until_ready(call())
  times = [[] for _ in calls]
  for _ in range(repeats):
    for call, record in zip(calls, times):
      start = time.perf_counter()
      jax.block_until_ready(call())
      record.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def report(name: str, ratio: float, baseline: str, target: str, **figures):
  row = {'name': name, 'ratio': round(float(ratio), 4), 'baseline': baseline, 'target': target,
         **figures, 'device': jax.devices()[0].device_kind}
  print(json.dumps(row), flush=True)
  return row
