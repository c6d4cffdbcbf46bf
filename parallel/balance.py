"""DFLOP: data-aware pipeline layout and microbatch balancing for an encoder + decoder model.

The pieces, in the order a run uses them (arXiv 2603.25120; METHODS.md section 5):

1. Profiler and cost model. `profile` times a module's forward+backward at a grid of loads (tiles
   for the encoder, tokens for the decoder) on the current machine; `fit_throughput` turns the
   times into a piecewise-linear throughput curve (loads per second), so a small microbatch pays
   its poor utilisation. `fit_memory` fits bytes = base + layers * (state + act * load) to
   ahead-of-time `compiled_memory` measurements.
2. Layout search (`search_layout`): every split of the pipeline stages between encoder and
   decoder, data-parallel degree and microbatch count; candidates whose peak memory (1F1B
   in-flight depth, worst microbatch) exceeds the budget are skipped, the rest ranked by the 1F1B
   makespan (M + S - 1) x slowest stage.
3. Assignment of samples to bins (microbatches x data-parallel ranks) minimising the slowest bin
   over both encoder and decoder load: LPT (`assign_lpt`, milliseconds) and CP-SAT
   (`assign_cpsat`, with a time limit and LPT as the fallback).
4. Packing (`pack`): JAX shapes are static, so each bin is padded up to a bucket shape (images,
   tokens) from fixed ladders; the padding is the price of imbalance and is measured. A sample
   larger than the largest bucket gets a bin and a bucket of its own, with a warning.
5. Adaptive correction (`correction_update`): an EMA of measured / predicted time rescales the
   throughput curves (the paper's figure has it, its code does not).
6. `simulate_1f1b`: a discrete-event 1F1B simulator over per-stage, per-microbatch times.

This module sees loads, costs and callables only; it never imports a model.
"""

import math
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

MODULES = ('encoder', 'decoder')


# ---------------------------------------------------------------------------------------------
# Cost model


class Throughput(NamedTuple):
  """Piecewise-linear throughput of one module: `rates[k]` loads/s at load `sizes[k]`."""

  sizes: np.ndarray
  rates: np.ndarray


def fit_throughput(sizes: Sequence[float], times: Sequence[float]) -> Throughput:
  """Throughput curve from forward+backward `times` (seconds) measured at loads `sizes`."""
  sizes, times = np.asarray(sizes, np.float64), np.asarray(times, np.float64)
  if sizes.ndim != 1 or sizes.shape != times.shape or len(sizes) < 2:
    raise ValueError(f'sizes and times must be 1-D of equal length >= 2, got shapes '
                     f'{sizes.shape} and {times.shape}')
  if np.any(sizes <= 0) or np.any(times <= 0):
    raise ValueError('sizes and times must be positive')
  order = np.argsort(sizes)
  if np.any(np.diff(sizes[order]) == 0):
    raise ValueError(f'sizes must be distinct, got {sizes.tolist()}')
  return Throughput(sizes[order], sizes[order] / times[order])


def rate(curve: Throughput, load) -> np.ndarray:
  """Loads per second at `load`: linear interpolation, linear extrapolation past both ends."""
  x, y = curve.sizes, curve.rates
  load = np.asarray(load, np.float64)
  inside = np.interp(load, x, y)
  below = y[0] + (load - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
  above = y[-1] + (load - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
  out = np.where(load < x[0], below, np.where(load > x[-1], above, inside))
  # A falling extrapolation must not reach zero: floor it at half the slowest profiled rate.
  return np.maximum(out, 0.5 * y.min())


def predict_time(curve: Throughput, load) -> np.ndarray:
  """Seconds of forward+backward for a microbatch of `load` (0 for an empty one)."""
  load = np.asarray(load, np.float64)
  return np.where(load > 0, load / rate(curve, np.maximum(load, 1e-9)), 0.0)


class CostModel(NamedTuple):
  encoder: Throughput  # tiles (images) per second
  decoder: Throughput  # tokens per second

  def times(self, tiles, tokens) -> np.ndarray:
    """[..., 2] forward+backward seconds of encoder and decoder for the given loads."""
    return np.stack([predict_time(self.encoder, tiles), predict_time(self.decoder, tokens)], -1)

  def sample_costs(self, tiles, tokens, reference_bins: int) -> np.ndarray:
    """Additive per-sample costs [N, 2]: each sample's load at the rate of a typical bin.

    A bin's time is not a sum of per-sample times (the rate depends on the bin's total load), but
    balanced bins all sit near the mean load, so per-sample costs at that operating point are
    what the solvers add up.
    """
    tiles, tokens = np.asarray(tiles, np.float64), np.asarray(tokens, np.float64)
    mean_tiles = tiles.sum() / reference_bins
    mean_tokens = tokens.sum() / reference_bins
    return np.stack([tiles / rate(self.encoder, mean_tiles), tokens / rate(self.decoder, mean_tokens)],
                    -1)


# ---------------------------------------------------------------------------------------------
# Profiler


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall-clock seconds of `fn()`, waiting for its arrays (first calls compile)."""
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def profile(build: Callable[[int], Callable[[], Any]], sizes: Sequence[int],
            repeats: int = 5) -> Throughput:
  """Throughput curve of a module on this machine: `build(load)` returns a zero-argument
  forward+backward call at that load (e.g. a jitted grad over `load` tiles), timed per size."""
  return fit_throughput(sizes, [time_call(build(int(s)), repeats) for s in sizes])


def compiled_memory(jitted, *args) -> int:
  """Bytes the compiled program needs (arguments + outputs + temporaries - aliased), ahead of
  time from `memory_analysis()`; `args` may be `jax.ShapeDtypeStruct`s."""
  stats = jitted.lower(*args).compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes +
             stats.temp_size_in_bytes - stats.alias_size_in_bytes)


class MemoryModel(NamedTuple):
  """bytes(layers, load) = base + layers * (per_layer + per_layer_load * load)."""

  base: float
  per_layer: float
  per_layer_load: float

  def __call__(self, layers, load):
    return self.base + layers * (self.per_layer + self.per_layer_load * load)


def fit_memory(layers: Sequence[int], loads: Sequence[float], nbytes: Sequence[float]) -> MemoryModel:
  """Least-squares MemoryModel from measurements at >= 3 (layers, load) points."""
  layers, loads, nbytes = (np.asarray(a, np.float64) for a in (layers, loads, nbytes))
  if not layers.shape == loads.shape == nbytes.shape or len(layers) < 3:
    raise ValueError('layers, loads and nbytes must have equal length >= 3')
  features = np.stack([np.ones_like(layers), layers, layers * loads], -1)
  coef, *_ = np.linalg.lstsq(features, nbytes, rcond=None)
  return MemoryModel(*map(float, coef))


# ---------------------------------------------------------------------------------------------
# Layout search

MemoryFn = Callable[[str, int, float], float]  # (module, layers on the stage, load in flight) -> bytes


class Layout(NamedTuple):
  encoder_stages: int
  decoder_stages: int
  data_parallel: int
  microbatches: int
  step_time: float  # predicted 1F1B makespan, seconds
  peak_bytes: float  # predicted peak of the fullest stage, headroom included

  @property
  def stages(self) -> int:
    return self.encoder_stages + self.decoder_stages

  @property
  def num_bins(self) -> int:
    return self.data_parallel * self.microbatches


def split_layers(num_layers: int, stages: int) -> np.ndarray:
  """Layers per stage, as even as possible, the remainder on the first stages."""
  if stages < 1 or stages > num_layers:
    raise ValueError(f'stages={stages} must be in [1, num_layers={num_layers}]')
  return np.full(stages, num_layers // stages) + (np.arange(stages) < num_layers % stages)


def module_split(encoder_layers: int, decoder_layers: int, encoder_stages: int,
                 decoder_stages: int) -> np.ndarray:
  """[S, 2] layers per stage: encoder stages first, then decoder stages (DFLOP's layout)."""
  enc = split_layers(encoder_layers, encoder_stages)
  dec = split_layers(decoder_layers, decoder_stages)
  return np.concatenate([np.stack([enc, 0 * enc], -1), np.stack([0 * dec, dec], -1)])


def uniform_split(encoder_layers: int, decoder_layers: int, stages: int) -> np.ndarray:
  """[S, 2] layers per stage of the data-blind layout: the concatenated encoder + decoder
  stack cut into `stages` equal runs of layers."""
  bounds = np.cumsum(split_layers(encoder_layers + decoder_layers, stages))
  starts = bounds - split_layers(encoder_layers + decoder_layers, stages)
  enc = np.clip(np.minimum(bounds, encoder_layers) - starts, 0, None)
  return np.stack([enc, bounds - starts - enc], -1)


def stage_times(layer_split: np.ndarray, module_times: np.ndarray) -> np.ndarray:
  """[S, M] forward+backward seconds: stage s runs its share of each module's layers of
  microbatch m, whose whole-module times are `module_times[m] = (encoder, decoder)`."""
  share = layer_split / layer_split.sum(0, keepdims=True)
  return share @ np.asarray(module_times, np.float64).T


def search_layout(cost: CostModel, tiles, tokens, *, num_devices: int, encoder_layers: int,
                  decoder_layers: int, memory: MemoryFn, memory_budget: float,
                  microbatch_options: Optional[Sequence[int]] = None,
                  data_parallel_options: Optional[Sequence[int]] = None,
                  headroom: float = 1.25, tolerance: float = 0.1) -> Layout:
  """Best (encoder stages, decoder stages, data parallel, microbatches) for one global batch.

  Memory is checked for the worst microbatch LPT can produce (mean load + largest sample) on the
  first stage of each module, which holds the most microbatches in flight under 1F1B. Among
  layouts within `tolerance` of the fastest, the one with the fewest microbatches wins.
  """
  tiles, tokens = np.asarray(tiles, np.float64), np.asarray(tokens, np.float64)
  if num_devices < 2:
    raise ValueError(f'num_devices={num_devices}: a pipeline needs at least 2 stages')
  if memory_budget <= 0:
    raise ValueError(f'memory_budget must be positive, got {memory_budget}')
  dp_options = data_parallel_options or [d for d in range(1, num_devices + 1) if num_devices % d == 0]
  candidates, smallest_peak = [], math.inf
  for dp in dp_options:
    stages = num_devices // dp
    if num_devices % dp or stages < 2:
      continue
    for m in microbatch_options or (stages, 2 * stages, 4 * stages):
      if dp * m > len(tiles):
        continue
      mean = np.array([tiles.sum(), tokens.sum()]) / (dp * m)
      worst = mean + np.array([tiles.max(), tokens.max()])
      for v_pp in range(1, min(stages - 1, encoder_layers) + 1):
        l_pp = stages - v_pp
        if l_pp > decoder_layers:
          continue
        peak = headroom * max(
            memory('encoder', math.ceil(encoder_layers / v_pp), stages * worst[0]),
            memory('decoder', math.ceil(decoder_layers / l_pp), l_pp * worst[1]))
        smallest_peak = min(smallest_peak, peak)
        if peak > memory_budget:
          continue
        t_enc, t_dec = cost.times(mean[0], mean[1])
        step = (m + stages - 1) * max(t_enc / v_pp, t_dec / l_pp)
        candidates.append(Layout(v_pp, l_pp, dp, m, float(step), float(peak)))
  if not candidates:
    if math.isinf(smallest_peak):
      raise ValueError(f'no layout: num_devices={num_devices}, encoder_layers={encoder_layers}, '
                       f'decoder_layers={decoder_layers} and {len(tiles)} samples admit none')
    raise ValueError(f'memory_budget={memory_budget:.3g} bytes is infeasible: the smallest '
                     f'layout needs {smallest_peak:.3g} bytes (headroom {headroom} included)')
  fastest = min(c.step_time for c in candidates)
  near = [c for c in candidates if c.step_time <= (1 + tolerance) * fastest]
  return min(near, key=lambda c: (c.microbatches, c.step_time))


# ---------------------------------------------------------------------------------------------
# Assignment


def _check_assignment_inputs(costs, num_bins) -> np.ndarray:
  costs = np.asarray(costs, np.float64)
  if costs.ndim != 2 or costs.shape[1] != 2:
    raise ValueError(f'costs must be [num_samples, 2] (encoder, decoder), got {costs.shape}')
  if np.any(costs < 0) or not np.all(np.isfinite(costs)):
    raise ValueError('costs must be finite and non-negative')
  if not 1 <= num_bins <= len(costs):
    raise ValueError(f'num_bins={num_bins} must be in [1, num_samples={len(costs)}] '
                     '(no microbatch may be empty)')
  return costs


def bin_loads(costs, bins, num_bins: int) -> np.ndarray:
  """[num_bins, 2] summed encoder and decoder cost of each bin."""
  costs = np.asarray(costs, np.float64)
  return np.stack([np.bincount(bins, costs[:, k], minlength=num_bins) for k in range(2)], -1)


def makespan(costs, bins, num_bins: int) -> float:
  """The slowest bin over both modules: the quantity the solvers minimise."""
  return float(bin_loads(costs, bins, num_bins).max())


def assign_lpt(costs, num_bins: int) -> np.ndarray:
  """Longest-processing-time-first: samples by decreasing max(encoder, decoder) cost, each into
  the bin whose resulting max load is smallest (the first num_bins open one bin each). Returns
  int32 bin ids [num_samples]."""
  costs = _check_assignment_inputs(costs, num_bins)
  # Plain Python floats: at tens of bins, per-sample numpy calls cost more than this loop.
  enc, dec = [0.0] * num_bins, [0.0] * num_bins
  bins = np.empty(len(costs), np.int32)
  order = np.argsort(-costs.max(1), kind='stable')
  for rank, (i, ce, cd) in enumerate(zip(order.tolist(), costs[order, 0].tolist(),
                                         costs[order, 1].tolist())):
    if rank < num_bins:  # the largest samples open one bin each: none stays empty
      best = rank
    else:
      best = _least_loaded(enc, dec, ce, cd)
    bins[i] = best
    enc[best] += ce
    dec[best] += cd
  return bins


def _least_loaded(enc: list, dec: list, ce: float, cd: float) -> int:
  """The bin whose max(encoder, decoder) load after adding (ce, cd) is smallest."""
  best, best_load = 0, math.inf
  for j, (e, d) in enumerate(zip(enc, dec)):
    load = e + ce if e + ce > d + cd else d + cd
    if load < best_load:
      best, best_load = j, load
  return best


class Assignment(NamedTuple):
  bins: np.ndarray  # int32 [num_samples]
  solver: str  # 'cpsat' or 'lpt' (the fallback)
  status: str  # CP-SAT's status name
  seconds: float  # wall time of the solve, model building included


def assign_cpsat(costs, num_bins: int, time_limit_s: float = 10.0, seed: int = 42,
                 workers: int = 1, resolution: int = 10_000) -> Assignment:
  """DFLOP's ILP: x_ij in {0,1}, one bin per sample, no empty bin, encoder and decoder load of
  every bin <= C, minimise C. Costs are scaled to integers in [0, resolution]; the LPT solution
  is the hint. `time_limit_s` bounds the whole call, model building included. When it hits
  without a solution, or the solution is worse than LPT, the LPT assignment is returned
  (solver='lpt')."""
  from ortools.sat.python import cp_model

  costs = _check_assignment_inputs(costs, num_bins)
  if time_limit_s <= 0:
    raise ValueError(f'time_limit_s must be positive, got {time_limit_s}')
  start = time.perf_counter()
  lpt = assign_lpt(costs, num_bins)
  weights = np.round(costs * resolution / max(costs.max(), 1e-30)).astype(np.int64)
  model = cp_model.CpModel()
  x = [[model.NewBoolVar('') for _ in range(num_bins)] for _ in range(len(costs))]
  bound = model.NewIntVar(0, int(weights.sum(0).max()), 'C')
  for i, row in enumerate(x):
    model.AddExactlyOne(row)
    for j, v in enumerate(row):
      model.AddHint(v, j == lpt[i])
  for j in range(num_bins):
    column = [x[i][j] for i in range(len(costs))]
    model.AddBoolOr(column)
    for k in range(2):
      model.Add(cp_model.LinearExpr.WeightedSum(column, weights[:, k].tolist()) <= bound)
  model.AddHint(bound, int(bin_loads(weights, lpt, num_bins).max()))
  model.Minimize(bound)
  solver = cp_model.CpSolver()
  # The limit bounds the whole call: building the model (and LPT) already used part of it.
  solver.parameters.max_time_in_seconds = max(time_limit_s - (time.perf_counter() - start), 1e-3)
  solver.parameters.random_seed = seed
  solver.parameters.num_workers = workers
  status = solver.Solve(model)
  name = solver.StatusName(status)
  if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
    warnings.warn(f'CP-SAT found no assignment within time_limit_s={time_limit_s} ({name}); '
                  'using LPT')
    return Assignment(lpt, 'lpt', name, time.perf_counter() - start)
  bins = np.array([next(j for j, v in enumerate(row) if solver.Value(v)) for row in x], np.int32)
  if makespan(costs, bins, num_bins) > makespan(costs, lpt, num_bins):
    return Assignment(lpt, 'lpt', name, time.perf_counter() - start)
  return Assignment(bins, 'cpsat', name, time.perf_counter() - start)


def sequential_bins(num_samples: int, num_bins: int) -> np.ndarray:
  """The data-blind assignment: consecutive samples, equal counts per bin."""
  if not 1 <= num_bins <= num_samples:
    raise ValueError(f'num_bins={num_bins} must be in [1, num_samples={num_samples}]')
  return (np.arange(num_samples) * num_bins // num_samples).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Packing into static shape buckets


def ladder(largest: int, growth: float = 1.125, smallest: int = 8, multiple: int = 8) -> np.ndarray:
  """Bucket sizes from `smallest` up to (at least) `largest`, each about `growth` x the last,
  rounded up to `multiple`: few distinct shapes (few compilations), bounded padding."""
  if growth <= 1:
    raise ValueError(f'growth must be > 1, got {growth}')
  if smallest < 1 or multiple < 1 or largest < 1:
    raise ValueError('largest, smallest and multiple must be >= 1')
  sizes = [_round_up(smallest, multiple)]
  while sizes[-1] < largest:
    sizes.append(max(_round_up(math.ceil(sizes[-1] * growth), multiple), sizes[-1] + multiple))
  return np.array(sizes, np.int64)


def _round_up(x, multiple):
  return int(-(-int(x) // multiple) * multiple)


class Packing(NamedTuple):
  bins: np.ndarray  # int32 [num_samples], oversized samples moved to bins of their own
  shapes: np.ndarray  # int64 [num_bins, 2]: (images, tokens) bucket of each bin
  loads: np.ndarray  # int64 [num_bins, 2]: real (images, tokens) of each bin

  @property
  def num_bins(self) -> int:
    return len(self.shapes)


def oversized(tiles, tokens, image_ladder, token_ladder) -> np.ndarray:
  """Mask of samples that fit no bucket on their own."""
  return (np.asarray(tiles) > image_ladder[-1]) | (np.asarray(tokens) > token_ladder[-1])


def pack(bins, tiles, tokens, num_bins: int, image_ladder, token_ladder) -> Packing:
  """Smallest bucket on each ladder that holds each bin.

  A sample larger than the largest bucket is moved (whatever its bin id) to a new bin of its own
  whose bucket is its size rounded up to the ladder's first rung, with a warning: never dropped.
  A bin of several samples that fits no bucket is an error naming the ladder: give the balancer
  more bins or the ladder a larger rung.
  """
  tiles, tokens = np.asarray(tiles, np.int64), np.asarray(tokens, np.int64)
  bins = np.asarray(bins, np.int32).copy()
  if bins.shape != tiles.shape or tiles.shape != tokens.shape:
    raise ValueError('bins, tiles and tokens must have the same shape')
  big = np.flatnonzero(oversized(tiles, tokens, image_ladder, token_ladder))
  if len(big):
    warnings.warn(f'{len(big)} sample(s) exceed the largest bucket (images={image_ladder[-1]}, '
                  f'tokens={token_ladder[-1]}): each is packed alone in its own bucket')
    bins[big] = num_bins + np.arange(len(big))
  used = num_bins + len(big)
  loads = np.stack([np.bincount(bins, tiles, minlength=used),
                    np.bincount(bins, tokens, minlength=used)], -1)
  for k, (rungs, name) in enumerate(((image_ladder, 'image_ladder'), (token_ladder, 'token_ladder'))):
    over = np.flatnonzero(loads[:num_bins, k] > rungs[-1])
    if len(over):
      raise ValueError(f'bin {int(over[0])} holds {int(loads[over[0], k])} > {name}[-1]='
                       f'{int(rungs[-1])}: use more bins (microbatches) or a longer {name}')
  shapes = np.stack([_bucket(loads[:, 0], image_ladder), _bucket(loads[:, 1], token_ladder)], -1)
  return Packing(bins, shapes, loads)


def _bucket(loads, rungs) -> np.ndarray:
  """Smallest rung >= load; past the last rung, the load rounded up to the first rung."""
  rungs = np.asarray(rungs, np.int64)
  at = np.searchsorted(rungs, loads)
  beyond = -(-loads // rungs[0]) * rungs[0]
  return np.where(at < len(rungs), rungs[np.minimum(at, len(rungs) - 1)], beyond)


def balance(cost: CostModel, tiles, tokens, num_bins: int, image_ladder, token_ladder,
            solver: str = 'lpt', time_limit_s: float = 10.0) -> tuple[Packing, str]:
  """Assigns samples to `num_bins` bins by predicted cost and packs them into buckets.

  Samples that fit no bucket are kept out of the solve and packed alone (see `pack`). Returns the
  packing and the solver that produced the assignment ('lpt' or 'cpsat').
  """
  if solver not in ('lpt', 'cpsat'):
    raise ValueError(f"solver must be 'lpt' or 'cpsat', got {solver!r}")
  tiles, tokens = np.asarray(tiles, np.int64), np.asarray(tokens, np.int64)
  keep = np.flatnonzero(~oversized(tiles, tokens, image_ladder, token_ladder))
  costs = cost.sample_costs(tiles[keep], tokens[keep], num_bins)
  bins = np.zeros(len(tiles), np.int32)  # oversized samples' ids are replaced by `pack`
  if solver == 'cpsat':
    result = assign_cpsat(costs, num_bins, time_limit_s)
    bins[keep], solver = result.bins, result.solver
  else:
    bins[keep] = assign_lpt(costs, num_bins)
  return pack(bins, tiles, tokens, num_bins, image_ladder, token_ladder), solver


def padding_waste(packing: Packing, group: int = 1) -> float:
  """Fraction of decoder token slots that are padding. With `group` > 1, consecutive groups of
  bins run as one SPMD step (data parallel) and all share the group's largest bucket."""
  shapes = packing.shapes[:, 1]
  if group > 1:
    steps = -(-len(shapes) // group)
    padded = np.pad(shapes, (0, steps * group - len(shapes)))
    shapes = np.repeat(padded.reshape(steps, group).max(1), group)[:len(packing.shapes)]
  return float(1 - packing.loads[:, 1].sum() / shapes.sum())


# ---------------------------------------------------------------------------------------------
# Adaptive correction


class Correction(NamedTuple):
  ratio: np.ndarray  # [2] EMA of measured / predicted time for (encoder, decoder)
  count: int


def correction_init() -> Correction:
  return Correction(np.ones(2), 0)


def correction_update(state: Correction, predicted, measured, decay: float = 0.8) -> Correction:
  """Folds one step's measured / predicted time into the EMA. `predicted` and `measured` are
  scalars (a whole step: both modules rescaled) or [2] (per module, e.g. per-stage timers)."""
  if not 0 <= decay < 1:
    raise ValueError(f'decay must be in [0, 1), got {decay}')
  predicted, measured = np.broadcast_to(predicted, (2,)), np.broadcast_to(measured, (2,))
  if np.any(predicted <= 0) or np.any(measured <= 0):
    raise ValueError('predicted and measured times must be positive')
  return Correction(decay * state.ratio + (1 - decay) * measured / predicted, state.count + 1)


def corrected(cost: CostModel, state: Correction) -> CostModel:
  """The cost model with each module's throughput divided by its measured / predicted ratio."""
  return CostModel(*(Throughput(c.sizes, c.rates / r) for c, r in zip(cost, state.ratio)))


# ---------------------------------------------------------------------------------------------
# 1F1B simulator


def one_f_one_b_order(stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
  """Stage `stage`'s op sequence: warm-up forwards, alternating F/B, cool-down backwards."""
  warm = min(stages - stage - 1, microbatches)
  ops = [('F', j) for j in range(warm)]
  for j in range(microbatches - warm):
    ops += [('F', warm + j), ('B', j)]
  return ops + [('B', j) for j in range(microbatches - warm, microbatches)]


def simulate_1f1b(forward, backward_ratio: float = 2.0) -> float:
  """Makespan of one 1F1B step with per-stage, per-microbatch forward times [S, M] (seconds);
  a backward takes `backward_ratio` x its forward. F(s, j) waits for F(s-1, j), B(s, j) for
  B(s+1, j) (the last stage's B for its own F), and each stage runs one op at a time."""
  forward = np.asarray(forward, np.float64)
  if forward.ndim != 2 or forward.size == 0:
    raise ValueError(f'forward must be [stages, microbatches], got shape {forward.shape}')
  stages, micro = forward.shape
  orders = [one_f_one_b_order(s, stages, micro) for s in range(stages)]
  done = {}
  free = np.zeros(stages)
  cursor = [0] * stages
  remaining = stages * micro * 2
  while remaining:
    progressed = False
    for s in range(stages):
      while cursor[s] < len(orders[s]):
        kind, j = orders[s][cursor[s]]
        dep = (('F', s - 1, j) if s else None) if kind == 'F' else (
            ('B', s + 1, j) if s < stages - 1 else ('F', s, j))
        if dep is not None and dep not in done:
          break
        begin = max(free[s], done[dep] if dep else 0.0)
        free[s] = begin + forward[s, j] * (1.0 if kind == 'F' else backward_ratio)
        done[(kind, s, j)] = free[s]
        cursor[s] += 1
        remaining -= 1
        progressed = True
    if not progressed:
      raise RuntimeError('1F1B schedule deadlocked')  # unreachable for a valid 1F1B order
  return float(free.max())
