"""SPaCe (arXiv 2508.05015): pool reduction, then a Thompson-sampling bandit over clusters.

Phase 1 (`reduce_pool`, offline, numpy): features of every problem (character n-grams here, or
mean-pooled hidden states computed in training/), PCA, the difficulty (a reference model's solve
rate) appended after PCA with its own weight so that one coordinate among many still matters,
k-means into K clusters, then l items per cluster by greedy max-min farthest-point selection seeded
with the item nearest the centroid (METHODS.md 1.3).

Phase 2 (`cluster_bandit`, on device): each step pulls one cluster by Gaussian Thompson sampling
and draws the whole batch from it; `update` folds the batch's solve rates into that cluster's
statistics. Arm rewards, chosen by `reward`:
  'negated'  -p, the paper's v1 (hard first; a never-solved cluster keeps the best reward: a trap),
  'progress' (1 - p)[p > 0] + lambda |p - p_prev| on an EMA p, the proposal for v2,
  'variance' p (1 - p), the variance of GRPO's 0/1 reward, largest at p = 0.5.
Every cluster is pulled once, in order, before sampling starts, so all posteriors have data.
"""

import zlib
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans

from curriculum.api import Curriculum, Feedback, source_table

REWARDS = ('negated', 'progress', 'variance')


def char_ngram_features(texts: Sequence[str], orders: Sequence[int] = (1, 2, 3),
                        dim: int = 512) -> np.ndarray:
  """Counts of character n-grams hashed (crc32, stable across runs) into `dim` buckets."""
  out = np.zeros((len(texts), dim), np.float32)
  for i, s in enumerate(texts):
    for n in orders:
      for j in range(len(s) - n + 1):
        out[i, zlib.crc32(s[j:j + n].encode()) % dim] += 1.0
  return out


def embed(features: np.ndarray, difficulty: np.ndarray, num_components: int = 16,
          difficulty_weight: float = 1.0) -> np.ndarray:
  """[N, p + 1]: PCA of the standardized features, then the standardized difficulty scaled to
  `difficulty_weight` times the RMS size of one principal component."""
  x = np.asarray(features, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-8)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  p = min(num_components, vt.shape[0])
  z = x @ vt[:p].T
  component_scale = np.sqrt(np.mean(s[:p]**2) / len(x))
  d = np.asarray(difficulty, np.float64)
  d = (d - d.mean()) / (d.std() + 1e-8) * difficulty_weight * component_scale
  return np.concatenate([z, d[:, None]], axis=1)


def farthest_points(x: np.ndarray, centroid: np.ndarray, count: int) -> np.ndarray:
  """Greedy max-min selection of `count` rows of x, starting from the row nearest the centroid."""
  chosen = [int(np.argmin(np.sum((x - centroid)**2, axis=1)))]
  dist = np.sum((x - x[chosen[0]])**2, axis=1)
  while len(chosen) < min(count, len(x)):
    nxt = int(np.argmax(dist))
    chosen.append(nxt)
    dist = np.minimum(dist, np.sum((x - x[nxt])**2, axis=1))
  return np.array(chosen, np.int64)


class ReducedPool(NamedTuple):
  indices: np.ndarray  # [M] rows of the full pool that are kept, grouped by cluster
  cluster: np.ndarray  # [M] cluster of each kept row
  labels: np.ndarray  # [N] k-means cluster of every row of the full pool


def cluster_pool(features, difficulty, num_clusters: int, num_components: int = 16,
                 difficulty_weight: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(k-means labels [N], embedded points [N, p + 1]) of a pool."""
  features, difficulty = np.asarray(features), np.asarray(difficulty)
  if features.ndim != 2 or difficulty.shape != (features.shape[0],):
    raise ValueError(f'features must be [N, F] and difficulty [N]; got {features.shape} and '
                     f'{difficulty.shape}')
  if num_clusters < 1 or num_clusters > len(features):
    raise ValueError(f'num_clusters={num_clusters} must be in [1, pool size {len(features)}]')
  x = embed(features, difficulty, num_components, difficulty_weight)
  labels = KMeans(num_clusters, n_init=4, random_state=seed).fit_predict(x)
  return labels.astype(np.int32), x


def reduce_pool(features, difficulty, num_clusters: int = 10, per_cluster: int = 10,
                num_components: int = 16, difficulty_weight: float = 1.0,
                seed: int = 0) -> ReducedPool:
  """SPaCe phase 1: K clusters, l diverse items from each (fewer where a cluster is smaller).

  `difficulty` is the reference model's solve rate in [0, 1]; a pool in which nothing is solved
  leaves the bandit nothing to learn from and is rejected.
  """
  n = len(features)
  if per_cluster < 1:
    raise ValueError(f'per_cluster must be >= 1, got {per_cluster}')
  if num_clusters * per_cluster > n:
    raise ValueError(f'num_clusters * per_cluster = {num_clusters} * {per_cluster} exceeds the '
                     f'pool of {n} items')
  if not np.any(np.asarray(difficulty) > 0):
    raise ValueError('difficulty: the reference model solves no item of the pool; warm it up '
                     'longer (a zero solve rate everywhere gives GRPO no signal)')
  labels, x = cluster_pool(features, difficulty, num_clusters, num_components, difficulty_weight,
                           seed)
  indices, cluster = [], []
  for k in range(num_clusters):
    members = np.flatnonzero(labels == k)
    picked = members[farthest_points(x[members], x[members].mean(0), per_cluster)]
    indices.append(picked)
    cluster.append(np.full(len(picked), k, np.int32))
  return ReducedPool(np.concatenate(indices), np.concatenate(cluster), labels)


class BanditState(NamedTuple):
  key: jax.Array  # fixed for the run; step t uses fold_in(key, t)
  step: jax.Array  # int32, batches drawn so far
  reward_sum: jax.Array  # [K] discounted sum of arm rewards
  weight: jax.Array  # [K] discounted number of pulls (the posterior's n_k)
  pulls: jax.Array  # [K] int32, undiscounted pulls
  solve_ema: jax.Array  # [K] EMA of the cluster's batch solve rate
  progress: jax.Array  # [K] |EMA change| at the cluster's latest pull


def cluster_bandit(cluster: np.ndarray, batch_size: int, reward: str = 'progress',
                   sigma0: float = 0.5, ema_decay: float = 0.9, progress_weight: float = 1.0,
                   discount: float = 1.0) -> Curriculum:
  """The SPaCe bandit over the clusters of a pool; `cluster[i]` is the cluster of pool row i.

  One arm per batch: the batch is drawn from the pulled cluster without replacement while it has
  enough members. Posterior of an arm: Normal(mean reward, sigma0^2 / (n + 1)).
  """
  if reward not in REWARDS:
    raise ValueError(f'curriculum.reward={reward!r}; choose one of {REWARDS}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if sigma0 <= 0 or not 0 <= ema_decay < 1 or not 0 < discount <= 1:
    raise ValueError(f'need sigma0 > 0, 0 <= ema_decay < 1, 0 < discount <= 1; got {sigma0}, '
                     f'{ema_decay}, {discount}')
  cluster = np.asarray(cluster, np.int32)
  num_clusters = int(cluster.max()) + 1
  table, sizes = (jnp.asarray(a) for a in source_table(cluster, num_clusters))
  cluster_of = jnp.asarray(cluster)

  def init(key):
    # Distinct buffers per field: the train step donates the state.
    zeros = lambda dtype=jnp.float32: jnp.zeros((num_clusters,), dtype)
    return BanditState(key, jnp.int32(0), zeros(), zeros(), zeros(jnp.int32), zeros(), zeros())

  def next_batch(state):
    k_theta, k_members = jax.random.split(jax.random.fold_in(state.key, state.step))
    mean = state.reward_sum / jnp.maximum(state.weight, 1e-6)
    theta = mean + sigma0 / jnp.sqrt(state.weight + 1) * jax.random.normal(k_theta, mean.shape)
    arm = jnp.where(state.step < num_clusters, state.step, jnp.argmax(theta)).astype(jnp.int32)
    # A random order of the arm's members (padding columns last), cycled if the batch is larger.
    u = jax.random.uniform(k_members, (table.shape[1],))
    order = jnp.argsort(jnp.where(jnp.arange(table.shape[1]) < sizes[arm], u, 2.0))
    idx = table[arm, order[jnp.arange(batch_size) % sizes[arm]]]
    return idx, state._replace(step=state.step + 1)

  def update(state, idx, feedback: Feedback):
    solve = feedback.reward if feedback.correct is None else jnp.mean(feedback.correct, axis=-1)
    arm_of = cluster_of[idx]
    hits = jax.ops.segment_sum(jnp.ones_like(solve), arm_of, num_clusters)
    observed = jax.ops.segment_sum(solve, arm_of, num_clusters) / jnp.maximum(hits, 1)
    pulled = hits > 0
    first = state.pulls == 0
    ema = jnp.where(first, observed, ema_decay * state.solve_ema + (1 - ema_decay) * observed)
    ema = jnp.where(pulled, ema, state.solve_ema)
    progress = jnp.where(pulled & ~first, jnp.abs(ema - state.solve_ema), state.progress)
    if reward == 'negated':
      arm_reward = -observed
    elif reward == 'variance':
      arm_reward = observed * (1 - observed)
    else:
      arm_reward = (1 - ema) * (ema > 0) + progress_weight * progress
    return state._replace(
        reward_sum=discount * state.reward_sum + jnp.where(pulled, arm_reward, 0.0),
        weight=discount * state.weight + pulled,
        pulls=state.pulls + pulled.astype(jnp.int32), solve_ema=ema, progress=progress)

  return Curriculum(init, next_batch, update)
