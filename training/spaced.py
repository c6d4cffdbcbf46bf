"""SPaCe end to end: supervised warm-up, reference solve rates, pool reduction, then GRPO driven by
the curriculum. `training.loop.run` hands every config with a `grpo` section to
`run_spaced(config, workdir)`, so `main.py --config configs/spaced_arith.py` runs it; the stages
are public so that experiments can share a warm-up between arms.

Arms are picked by `curriculum.kind` (uniform | spaced) and `curriculum.pool` (full | reduced |
random: K*l random rows clustered like the reduced pool).
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from curriculum import api, spaced
from data import arithmetic
from models.transformer import Decoder, DecoderConfig
from parallel.mesh import make_mesh
from training import checkpoint as ckpt_lib
from training import grpo
from training.loop import prepare_workdir

POOLS = ('full', 'reduced', 'random')
_solver = functools.cache(grpo.make_solver)  # one compilation per model and sampling setting
KINDS = ('uniform', 'spaced')


def build_model(config):
  cfg = DecoderConfig(**config.model.to_dict())
  return nnx.split(Decoder(cfg, nnx.Rngs(config.train.seed)))


def load_problems(config, workdir: str) -> dict:
  """{'train': ..., 'test': ...}, each with question/difficulty arrays and prompt/answer tokens."""
  d = config.data
  data_dir = d.data_dir or os.path.join(workdir, 'data')
  out = {}
  for split in ('train', 'test'):
    rows = arithmetic.load(data_dir, split, d.num_train, d.num_test_per_difficulty, d.seed)
    rows['prompts'], rows['answers'] = arithmetic.encode_problems(
        rows['question'], rows['answer'], d.prompt_len, config.grpo.answer_len)
    out[split] = rows
  return out


def warm_up(graphdef, params, problems: dict, config):
  """Supervised steps on problems up to `warmup.max_difficulty`, so that some are solved."""
  w = config.warmup
  easy = np.flatnonzero(problems['difficulty'] <= w.max_difficulty)
  tx = optax.adam(w.learning_rate)
  step, opt = grpo.make_sft_step(graphdef, tx), tx.init(params)
  rng = np.random.default_rng(config.train.seed)
  for _ in range(w.steps):
    b = rng.choice(easy, w.batch_size)
    params, opt, loss = step(params, opt, problems['prompts'][b], problems['answers'][b])
  logging.info('warm-up: %d steps, final loss %.3f', w.steps, float(loss))
  return params


def solve_rates(graphdef, params, problems: dict, config, group_size: int, temperature: float,
                key) -> np.ndarray:
  """Mean exact match over `group_size` samples per problem: [N]."""
  solver = _solver(graphdef, group_size, config.grpo.answer_len, temperature)
  correct = grpo.solve_all(solver, params, jnp.asarray(problems['prompts']),
                           jnp.asarray(problems['answers']), key, config.train.eval_batch_size)
  return np.asarray(jnp.mean(correct, axis=-1))


def accuracy_by_difficulty(graphdef, params, problems: dict, config) -> dict:
  """Held-out exact match, overall and per difficulty: greedy ('overall', 'd1', ...) and the
  mean over `train.eval_samples` samples at the RL temperature ('sampled', 'sampled_d1', ...),
  which is the expected reward GRPO optimizes and a smoother curve than greedy's."""
  greedy = solve_rates(graphdef, params, problems, config, 1, 0.0, jax.random.key(0))
  sampled = solve_rates(graphdef, params, problems, config, config.train.eval_samples,
                        config.grpo.temperature, jax.random.key(1))
  out = {'overall': float(greedy.mean()), 'sampled': float(sampled.mean())}
  for d in np.unique(problems['difficulty']):
    rows = problems['difficulty'] == d
    out[f'd{d}'] = float(greedy[rows].mean())
    out[f'sampled_d{d}'] = float(sampled[rows].mean())
  return out


def check_arm(config):
  for key, allowed in (('kind', KINDS), ('pool', POOLS), ('reward', spaced.REWARDS)):
    if config.curriculum[key] not in allowed:
      raise ValueError(f'curriculum.{key}={config.curriculum[key]!r}; choose one of {allowed}')


def select_pool(problems: dict, difficulty: np.ndarray, config, seed: int):
  """(rows of the train pool that RL draws from, their cluster labels or None)."""
  check_arm(config)
  r, pool = config.reduction, config.curriculum.pool
  features = spaced.char_ngram_features(problems['question'])
  if pool == 'full':
    labels, _ = spaced.cluster_pool(features, difficulty, r.num_clusters, r.num_components,
                                    r.difficulty_weight, seed)
    return np.arange(len(difficulty)), labels
  if pool == 'random':
    rows = np.random.default_rng(seed).choice(len(difficulty), r.num_clusters * r.per_cluster,
                                              replace=False)
    labels, _ = spaced.cluster_pool(features[rows], difficulty[rows], r.num_clusters,
                                    r.num_components, r.difficulty_weight, seed)
    return rows, labels
  reduced = spaced.reduce_pool(features, difficulty, r.num_clusters, r.per_cluster,
                               r.num_components, r.difficulty_weight, seed)
  return reduced.indices, reduced.cluster


def grpo_config(config) -> grpo.GRPOConfig:
  g = config.grpo
  return grpo.GRPOConfig(g.group_size, g.answer_len, g.temperature, g.clip_eps, g.kl_coef,
                         updates_per_batch=g.updates_per_batch)


def make_curriculum(cluster: np.ndarray, config) -> api.Curriculum:
  check_arm(config)
  c, batch = config.curriculum, config.grpo.batch_size
  if c.kind == 'uniform':
    return api.uniform(len(cluster), batch)
  return spaced.cluster_bandit(cluster, batch, c.reward, c.sigma0, c.ema_decay,
                               c.progress_weight, c.discount)


def rl_state(params, tx: optax.GradientTransformation, curriculum: api.Curriculum, seed: int):
  """(state, cstate) at the first RL step: the policy, its optimizer and the frozen reference
  (the warmed-up model), and the curriculum. Under `jax.eval_shape`, the restore target."""
  state = dict(params=params, opt=tx.init(params), ref=params)
  return jax.tree.map(jnp.copy, state), curriculum.init(jax.random.key(seed))


def train_rl(graphdef, params, problems: dict, rows: np.ndarray, cluster: np.ndarray, test: dict,
             config, seed: int, log=None, checkpoints=None) -> list[dict]:
  """GRPO on `problems[rows]`; returns one record per step (and held-out accuracy at evals).

  With `checkpoints`, the run resumes from the newest checkpoint (`params` may then be abstract)
  and saves every `checkpoint.every` steps and at the end. Rollout keys are a function of the step,
  so a resumed run samples what an uninterrupted one samples.
  """
  g, t = config.grpo, config.train
  curriculum = make_curriculum(cluster, config)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(g.learning_rate))
  mesh = make_mesh(config.parallel.to_dict())
  step = grpo.make_grpo_step(graphdef, tx, curriculum, grpo_config(config), mesh)
  pool = (jnp.asarray(problems['prompts'][rows]), jnp.asarray(problems['answers'][rows]))
  initial = functools.partial(rl_state, tx=tx, curriculum=curriculum, seed=seed)
  restored = checkpoints and checkpoints.restore(*jax.eval_shape(initial, params),
                                                 config.to_dict())
  if restored:
    start, state, cstate = restored.step, restored.state, restored.curriculum
  else:
    start, (state, cstate) = 0, initial(params)
    if checkpoints:
      save_checkpoint(checkpoints, 0, state, cstate, config)
  key = jax.random.key(seed + 1)
  records = [] if start else [dict(step=0, eval=accuracy_by_difficulty(
      graphdef, state['params'], test, config))]
  begin = time.time()
  for s in range(start + 1, t.steps + 1):
    params, opt, cstate, m = step(state['params'], state['opt'], cstate, state['ref'], pool,
                                  jax.random.fold_in(key, s))
    state = dict(state, params=params, opt=opt)
    m = jax.device_get(m)
    idx = np.asarray(m['idx'])
    rec = dict(step=s, loss=float(m['loss']), reward=float(m['reward']),
               parsed=float(m['parsed']), rows=rows[idx].tolist(),
               clusters=np.asarray(cluster)[idx].tolist(), solve=m['solve_rate'].tolist())
    if s % t.eval_every == 0 or s == t.steps:
      rec['eval'] = accuracy_by_difficulty(graphdef, params, test, config)
      rec['time_s'] = time.time() - begin
    records.append(rec)
    if log and (s % t.log_every == 0 or 'eval' in rec):
      log(rec)
    if checkpoints and (s % config.checkpoint.every == 0 or s == t.steps):
      save_checkpoint(checkpoints, s, state, cstate, config)
  return records


def save_checkpoint(checkpoints, step: int, state, cstate, config):
  checkpoints.save(step, state, cstate, {'step': step}, config.to_dict())


def reference_difficulty(graphdef, params, problems: dict, config) -> np.ndarray:
  r = config.reduction
  rates = solve_rates(graphdef, params, problems, config, r.samples, config.grpo.temperature,
                      jax.random.key(config.train.seed))
  if not np.any(rates > 0):
    raise ValueError('reduction: the warmed-up model solves no train problem in '
                     f'{r.samples} samples; raise warmup.steps')
  return rates


def save_pool(path: str, rows: np.ndarray, cluster: np.ndarray):
  """The RL pool, written whole or not at all: resuming needs it to shape the restore target."""
  tmp = path + '.tmp.npz'
  np.savez(tmp, rows=rows, cluster=cluster)
  os.replace(tmp, path)


def load_pool(path: str) -> tuple[np.ndarray, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: the checkpoints beside it cannot be resumed '
                            'without the RL pool they were trained on; use a new --workdir')
  with np.load(path) as f:
    return f['rows'], f['cluster']


def run_spaced(config, workdir: str) -> list[dict]:
  """Warm-up, reduction and RL; writes <workdir>/metrics.jsonl (step, loss, reward, eval) and
  checkpoints. A workdir with checkpoints resumes RL where it stopped; the warm-up, whose result
  is the step-0 checkpoint (the RL reference model), is not run again."""
  grpo_config(config)  # bad RL settings fail here, not after the warm-up
  check_arm(config)
  prepare_workdir(workdir)
  problems = load_problems(config, workdir)
  graphdef, params = build_model(config)
  c = config.checkpoint
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), c.max_to_keep,
                                     c.async_save)
  pool_path = os.path.join(workdir, 'rl_pool.npz')
  resuming = checkpoints.latest_step() is not None
  if resuming:
    rows, cluster = load_pool(pool_path)
    params = jax.eval_shape(lambda: params)
  else:
    params = warm_up(graphdef, params, problems['train'], config)
    difficulty = reference_difficulty(graphdef, params, problems['train'], config)
    rows, cluster = select_pool(problems['train'], difficulty, config, config.train.seed)
    save_pool(pool_path, rows, cluster)
  logging.info('RL pool: %d rows (%s), %d clusters', len(rows), config.curriculum.pool,
               len(np.unique(cluster)))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a' if resuming else 'w') as f:
    def log(rec):
      f.write(json.dumps({k: v for k, v in rec.items() if k not in ('rows', 'solve')}) + '\n')
      f.flush()
      logging.info('step %d loss %.4f reward %.3f %s', rec['step'], rec['loss'], rec['reward'],
                   rec.get('eval', ''))
    try:
      return train_rl(graphdef, params, problems['train'], rows, cluster, problems['test'],
                      config, config.train.seed, log, checkpoints)
    finally:
      checkpoints.close()
