"""Static orders of one pass over a scored corpus: the data-organization primitives, STR and SAW.

Every function takes per-example scores (higher = harder / better, trained last) and returns a
permutation of `range(len(scores))` as an int64 numpy array, to be consumed in that order with no
shuffling (`curriculum.api.ordered`). Semantics follow the authors' `microsoft/data-efficacy` code
(METHODS.md 2.3-2.4): `S` is the stable ascending argsort of the scores, and

- `fold(L)`   (FO, DELT): S[0::L] ++ S[1::L] ++ ... : L ascending passes over the full range;
- `zigzag(L)` (ZIG): the same with every odd pass reversed, so there are no jumps;
- `segment`   (SEG): shuffled low block, shuffled middle, shuffled high block;
- `jitter(w)` (JIT): shuffle inside consecutive windows of w, applied last to any order;
- `stair` (STR) and `saw` (SAW): sorted stable regions joined by transition regions around the K-1
  section boundaries, folded (STR) or zig-zagged (SAW).
"""

import inspect
from typing import Any, Callable, Mapping, Optional

import numpy as np


def _check_scores(scores) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(f'scores must be a 1-D array, got shape {scores.shape}')
  if scores.dtype.kind not in 'biuf':
    raise ValueError(f'scores must be real numbers, got dtype {scores.dtype}')
  if scores.dtype.kind == 'f' and not np.all(np.isfinite(scores)):
    bad = np.flatnonzero(~np.isfinite(scores))
    raise ValueError(f'scores must be finite; {bad.size} NaN/inf value(s), first at index {bad[0]}')
  return scores


def _check_layers(layers: int, name: str = 'layers'):
  if int(layers) != layers or layers < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {layers}')


def _check_window(window: int):
  if int(window) != window or window < 0:
    raise ValueError(f'window must be an integer >= 0, got {window}')


def _stable_argsort(scores, ascending: bool) -> np.ndarray:
  scores = _check_scores(scores)
  if not ascending:
    # Negate in a signed type: unsigned and bool scores would wrap around.
    scores = -(scores.astype(np.int64) if scores.dtype.kind in 'bu' else scores)
  if scores.dtype.kind != 'f':
    return np.argsort(scores, kind='stable')  # radix sort or timsort: fast on integers
  # On floats NumPy's default (SIMD introsort) argsort is 2-3x faster than its stable sort; the
  # stable order is restored by sorting the indices inside each run of tied scores.
  order = np.argsort(scores)
  ranked = scores[order]
  tied = ranked[1:] == ranked[:-1]
  if tied.any():
    run = np.concatenate([[0], np.cumsum(~tied)])
    in_run = np.zeros(order.size, bool)
    in_run[1:] |= tied
    in_run[:-1] |= tied
    pos = np.flatnonzero(in_run)
    members = order[pos]
    order[pos] = members[np.argsort(run[pos] * np.int64(order.size) + members)]
  return order


def _fold_positions(n: int, layers: int, reverse_odd: bool) -> np.ndarray:
  """Positions into a sorted block of n: pass i takes i, i+L, i+2L, ... (reversed if odd and asked)."""
  rows = -(-n // layers)
  grid = np.arange(rows * layers).reshape(rows, layers).T
  if reverse_odd:
    grid[1::2] = grid[1::2, ::-1]
  flat = grid.ravel()
  return flat[flat < n]  # the padding cells of the last row fall outside the block


def sort(scores, ascending: bool = True, temperature: float = 0.0, seed: int = 0) -> np.ndarray:
  """CL: ascending stable sort. `temperature` > 0 is CL with soft jitter: the example at rank i
  moves to the position of argsort(i + temperature * Gumbel_i)."""
  order = _stable_argsort(scores, ascending)
  if temperature < 0 or not np.isfinite(temperature):
    raise ValueError(f'temperature must be finite and >= 0, got {temperature}')
  if temperature > 0:
    noise = np.random.default_rng(seed).gumbel(size=order.size)
    order = order[np.argsort(np.arange(order.size) + temperature * noise, kind='stable')]
  return order


def random(scores, seed: int = 0) -> np.ndarray:
  """The baseline: a uniform random permutation, independent of the score values."""
  return np.random.default_rng(seed).permutation(_check_scores(scores).size)


def fold(scores, layers: int = 5, ascending: bool = True) -> np.ndarray:
  """FO(L): L ascending passes, each spanning the full score range (G2, cyclic scheduling)."""
  _check_layers(layers)
  order = _stable_argsort(scores, ascending)
  return order[_fold_positions(order.size, int(layers), reverse_odd=False)]


def delt(scores, layers: int = 3, ascending: bool = True) -> np.ndarray:
  """DELT (arXiv 2506.21545) as the STR/SAW paper runs it: FO(L) on the same scores, with the
  L = 3 of DELT's example (FO's own default is the data-efficacy code's L = 5)."""
  return fold(scores, layers, ascending)


def zigzag(scores, layers: int = 5, ascending: bool = True) -> np.ndarray:
  """ZIG(L): up, down, up, ... over the full score range, with no jump between passes (G3)."""
  _check_layers(layers)
  order = _stable_argsort(scores, ascending)
  return order[_fold_positions(order.size, int(layers), reverse_odd=True)]


def segment(scores, front: float = 10, back: float = 10, front_is_high: bool = False,
            back_is_high: bool = True, seed: int = 0, ascending: bool = True) -> np.ndarray:
  """SEG(x, y): a shuffled block of front% from one end, then the shuffled middle, then a shuffled
  block of back%; the default is SEG(l10-h10), low-score start and high-score end (G1)."""
  for name, value in (('front', front), ('back', back)):
    if not 0 <= value <= 100:
      raise ValueError(f'{name} must be a percentage in [0, 100], got {value}')
  if front + back > 100:
    raise ValueError(f'front + back must be <= 100 percent, got {front} + {back}')
  s = _stable_argsort(scores, ascending)
  n = s.size
  n_front, n_back = int(n * front // 100), int(n * back // 100)
  rng = np.random.default_rng(seed)
  if front_is_high == back_is_high:
    k = n_front + n_back
    ends, middle = (s[n - k:], s[:n - k]) if front_is_high else (s[:k], s[k:])
    ends = rng.permutation(ends)
    front_block, back_block = ends[:n_front], ends[n_front:]
  else:
    low, high = (n_back, n_front) if front_is_high else (n_front, n_back)
    low_block, middle, high_block = s[:low], s[low:n - high], s[n - high:]
    front_block, back_block = (high_block, low_block) if front_is_high else (low_block, high_block)
  return np.concatenate([rng.permutation(b) for b in (front_block, middle, back_block)])


def jitter(order, window: int, seed: int = 0) -> np.ndarray:
  """JIT(w): shuffles each consecutive chunk of `window` positions of `order` (G4, local
  diversity); a no-op for window <= 1. Chunks are shuffled independently by one seeded generator."""
  _check_window(window)
  order = np.asarray(order)
  if order.ndim != 1:
    raise ValueError(f'order must be a 1-D array, got shape {order.shape}')
  window = int(window)
  if window <= 1:
    return order.copy()
  rng = np.random.default_rng(seed)
  full = order.size - order.size % window
  body = rng.permuted(order[:full].reshape(-1, window), axis=1).ravel()
  return np.concatenate([body, rng.permutation(order[full:])])


def _sections(scores, num_sections: int, folding_ratio: float, folding_layers: int, window: int,
              seed: int, ascending: bool, reverse_odd: bool) -> np.ndarray:
  """STR / SAW: the sorted order with each transition region around a section boundary refolded."""
  _check_layers(num_sections, 'num_sections')
  _check_layers(folding_layers, 'folding_layers')
  if not 0 <= folding_ratio < 0.5:
    raise ValueError(f'folding_ratio must be in [0, 0.5), got {folding_ratio}')
  _check_window(window)
  s = _stable_argsort(scores, ascending)
  n = s.size
  order = s.copy()
  if n and num_sections > 1 and folding_ratio > 0:
    half_width = round(n * folding_ratio)  # Python round: half to even, as the reference code
    cursor = 0
    for j in range(1, num_sections):
      boundary = round(n * j / num_sections)
      # The cursor keeps regions disjoint when they would overlap (half_width > n / 2K).
      start, stop = max(cursor, boundary - half_width), min(n, boundary + half_width)
      order[start:stop] = s[start:stop][_fold_positions(stop - start, folding_layers, reverse_odd)]
      cursor = stop
  return jitter(order, window, seed)


def stair(scores, num_sections: int = 2, folding_ratio: float = 0.225, folding_layers: int = 3,
          window: int = 0, seed: int = 0, ascending: bool = True) -> np.ndarray:
  """STR ("Stair"): K sorted sections whose transition regions of half-width round(N*rho) are
  climbed L times (FO), then JIT(window). Guidelines G1 + G2 + G4."""
  return _sections(scores, num_sections, folding_ratio, folding_layers, window, seed, ascending,
                   reverse_odd=False)


def saw(scores, num_sections: int = 3, folding_ratio: float = 0.075, folding_layers: int = 2,
        window: int = 0, seed: int = 0, ascending: bool = True) -> np.ndarray:
  """SAW ("Saw"): as STR, but each transition region goes up and down (ZIG), so the score never
  jumps. Guidelines G1 + G2 + G3 + G4."""
  return _sections(scores, num_sections, folding_ratio, folding_layers, window, seed, ascending,
                   reverse_odd=True)


ORDERS: dict[str, Callable[..., np.ndarray]] = {
    'sort': sort, 'random': random, 'fold': fold, 'delt': delt, 'zigzag': zigzag,
    'segment': segment, 'stair': stair, 'saw': saw,
}


def permutation_from_config(curriculum_cfg: Mapping[str, Any], scores, seed: int,
                            pool_size: Optional[int] = None) -> np.ndarray:
  """The order named by `curriculum.order`, with `curriculum.order_args` as its keyword arguments.

  `seed` reaches every order that draws random numbers. A `window` argument given to an order that
  has none of its own (sort, fold, zigzag, ...) applies JIT(window) after it, as in the paper.
  """
  name = curriculum_cfg['order']
  if name not in ORDERS:
    raise ValueError(f'curriculum.order={name!r}; choose one of {sorted(ORDERS)}')
  fn = ORDERS[name]
  kwargs = dict(curriculum_cfg.get('order_args', None) or {})
  window = 0
  params = inspect.signature(fn).parameters
  if 'window' in kwargs and 'window' not in params:
    window = kwargs.pop('window')
  for key in kwargs:
    if key not in params or key in ('scores', 'seed'):
      accepted = sorted(set(params) - {'scores', 'seed'})
      raise ValueError(f'curriculum.order_args.{key} is not an argument of {name}; '
                       f'it takes {accepted}')
  scores = _check_scores(scores)
  if pool_size is not None and scores.size != pool_size:
    raise ValueError(f'scores has {scores.size} entries but the pool has {pool_size} examples')
  if 'seed' in params:
    kwargs['seed'] = seed
  return jitter(fn(scores, **kwargs), window, seed)
