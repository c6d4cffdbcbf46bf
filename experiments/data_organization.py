"""Reproduction of the data-organization paper (STR / SAW, arXiv 2605.30334) at toy scale.

One pass, no shuffling, over a mixed-quality byte corpus (clean Shakespeare and KJV mixed with
degraded copies, `data/mixed.py`), ordered by a byte 5-gram log-probability score fitted on a clean
reference split (`data/scores.py`). Arms: Random, CL (sort), FO-3, ZIG-3, SEG(l10-h10), STR and SAW
at the repo defaults, STR and SAW with JIT (window 5% of N); 3 seeds each. Held-out clean loss is
tracked against tokens seen.

Headline: tokens SAW needs to reach Random's final held-out loss (same seed), as a fraction of the
pass; below 1 means SAW gets there first. Diagnostics, one per guideline: G2 loss on the lowest-10%
score subset over training, G3 gradient norm around fold boundaries, G4 held-out loss under random
weight perturbation with and without JIT.

Training uses Paceline's model, optimizer and jitted train step (`training.state`,
`training.step.make_pool_step` with an `ordered` curriculum). Each run's pool is stored in its
arm's order and read with the identity order: the same rows in the same sequence as
`ordered(permutation)`, but every run shares one compiled step.

  python experiments/data_organization.py [--quick]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from configs import default
from curriculum import api, ordering
from data import lm, mixed
from data import pool as pool_lib
from training import state as state_lib
from training import step as step_lib

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'data_organization')

FULL = dict(num_examples=6400, seq_len=64, batch_size=32, num_layers=2, d_model=64, num_heads=4,
            mlp_dim=256, lr=3e-3, warmup_steps=20, eval_every=20, eval_examples=128,
            jitter_fraction=0.05, perturb_scale=0.05, perturb_draws=3, seeds=(0, 1, 2))
QUICK = dict(FULL, num_examples=640, seq_len=32, eval_every=5, eval_examples=32, warmup_steps=3,
             seeds=(0,))


def arm_orders(window: int) -> dict:
  """name -> (scores, seed) -> permutation."""
  return {
      'random': lambda s, seed: ordering.random(s, seed),
      'cl': lambda s, seed: ordering.sort(s),
      'fo3': lambda s, seed: ordering.fold(s, 3),
      'zig3': lambda s, seed: ordering.zigzag(s, 3),
      'seg_l10_h10': lambda s, seed: ordering.segment(s, seed=seed),
      'stair': lambda s, seed: ordering.stair(s),
      'saw': lambda s, seed: ordering.saw(s),
      'stair_jit': lambda s, seed: ordering.stair(s, window=window, seed=seed),
      'saw_jit': lambda s, seed: ordering.saw(s, window=window, seed=seed),
  }


def train_config(p: dict):
  c = default.get_config()
  c.model.update(num_layers=p['num_layers'], d_model=p['d_model'], num_heads=p['num_heads'],
                 mlp_dim=p['mlp_dim'], max_len=p['seq_len'])
  c.data.seq_len = p['seq_len']
  c.train.update(batch_size=p['batch_size'], steps=p['num_examples'] // p['batch_size'])
  c.optim.update(lr=p['lr'], warmup_steps=p['warmup_steps'])
  c.curriculum.kind = 'ordered'
  return c


class Runner:
  """One compiled train step, eval and perturbed eval shared by every run."""

  def __init__(self, config):
    self.config = config
    graphdef, _ = nnx.split(state_lib.build(config, jax.random.key(0)))
    self.graphdef = graphdef
    steps, batch = config.train.steps, config.train.batch_size
    identity = api.ordered(np.arange(steps * batch), batch)
    self.curriculum = identity
    self.step = jax.jit(step_lib.make_pool_step(graphdef, identity, 0.0), donate_argnums=(0, 1))
    self.eval_loss = jax.jit(self._eval_loss)
    self.perturbed_loss = jax.jit(self._perturbed_loss)

  def _eval_loss(self, state, tokens):
    total, count = step_lib.make_eval_step(self.graphdef)(state, tokens)
    return total / count

  def _perturbed_loss(self, state, tokens, key, scale):
    """Loss after adding Gaussian noise of `scale` x each tensor's RMS to every parameter."""
    model, _ = nnx.merge(self.graphdef, state)
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    noisy = [p + scale * jnp.sqrt(jnp.mean(p * p)) * jax.random.normal(k, p.shape, p.dtype)
             for p, k in zip(leaves, jax.random.split(key, len(leaves)))]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    logits, _ = model(tokens[:, :-1])
    nll, mask = step_lib.token_nll(logits, tokens[:, 1:])
    return nll.sum() / mask.sum()

  def run(self, tokens: np.ndarray, seed: int, heldout, bottom, p: dict) -> dict:
    start, c = time.perf_counter(), self.config
    _, state = nnx.split(state_lib.build(c, jax.random.key(seed)))
    cstate = self.curriculum.init(jax.random.key(seed))
    pool = jax.device_put(pool_lib.from_tokens(tokens))
    tokens_per_step = c.train.batch_size * c.data.seq_len
    curve = {'tokens': [0], 'heldout': [float(self.eval_loss(state, heldout))],
             'bottom10': [float(self.eval_loss(state, bottom))]}
    grad_norm, train_loss = [], []
    for step in range(1, c.train.steps + 1):
      state, cstate, metrics = self.step(state, cstate, pool)
      grad_norm.append(metrics['grad_norm'])
      train_loss.append(metrics['loss'])
      if step % p['eval_every'] == 0 or step == c.train.steps:
        curve['tokens'].append(step * tokens_per_step)
        curve['heldout'].append(float(self.eval_loss(state, heldout)))
        curve['bottom10'].append(float(self.eval_loss(state, bottom)))
    keys = jax.random.split(jax.random.key(10_000 + seed), p['perturb_draws'])
    perturbed = np.mean([float(self.perturbed_loss(state, heldout, k, p['perturb_scale']))
                         for k in keys])
    return dict(curve, grad_norm=np.asarray(jax.device_get(grad_norm)).tolist(),
                train_loss=np.asarray(jax.device_get(train_loss)).tolist(),
                final=curve['heldout'][-1], perturbed=float(perturbed),
                seconds=time.perf_counter() - start)


def cached_run(path: str, p: dict, train) -> dict:
  """The run stored at `path` if it was made with the same settings, else `train()`, stored there.
  An interrupted experiment resumes where it stopped."""
  settings = json.loads(json.dumps(p))
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
    if stored['config'] == settings:
      return stored['run']
  run = train()
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'config': settings, 'run': run}, f)
  return run


def tokens_to_reach(tokens, losses, target: float):
  """First point where the curve reaches `target`, linearly interpolated; None if never."""
  tokens, losses = np.asarray(tokens, float), np.asarray(losses, float)
  hit = np.flatnonzero(losses <= target)
  if hit.size == 0:
    return None
  i = hit[0]
  if i == 0:
    return float(tokens[0])
  frac = (losses[i - 1] - target) / (losses[i - 1] - losses[i])
  return float(tokens[i - 1] + frac * (tokens[i] - tokens[i - 1]))


def mean_std(values) -> dict:
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None, 'n': 0}
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'n': len(values)}


def boundary_spike(grad_norm, boundaries, half_width: int = 3) -> float:
  """Mean gradient norm within `half_width` steps of the boundaries over the median norm of the
  second half of the pass (where the norm has settled)."""
  g = np.asarray(grad_norm)
  near = np.concatenate([g[max(b - half_width, 0):b + half_width + 1] for b in boundaries])
  return float(near.mean() / np.median(g[len(g) // 2:]))


def summarize(runs: dict, p: dict, corpus, orders: dict, seconds: float) -> dict:
  seeds = p['seeds']
  total_tokens = runs['random'][seeds[0]]['tokens'][-1]
  arms = {}
  for name, by_seed in runs.items():
    ratios, diffs = [], []
    for seed in seeds:
      r, base = by_seed[seed], runs['random'][seed]
      reached = tokens_to_reach(r['tokens'], r['heldout'], base['final'])
      ratios.append(None if reached is None else reached / total_tokens)
      diffs.append(r['final'] - base['final'])
    curves = [by_seed[s]['bottom10'] for s in seeds]
    rebound = [float(c[-1] - min(c)) for c in curves]
    arms[name] = {
        'final_heldout_loss': mean_std([by_seed[s]['final'] for s in seeds]),
        'final_loss_minus_random': mean_std(diffs),
        'tokens_to_random_final_ratio': mean_std(ratios),
        'reached_random_final': sum(r is not None for r in ratios),
        'ratio_per_seed': ratios,
        'g2_bottom10_final': mean_std([c[-1] for c in curves]),
        'g2_bottom10_rebound': mean_std(rebound),
        'g4_perturbed_heldout_loss': mean_std([by_seed[s]['perturbed'] for s in seeds]),
        'g4_perturbation_increase': mean_std([by_seed[s]['perturbed'] - by_seed[s]['final']
                                              for s in seeds]),
    }
  steps = len(runs['random'][seeds[0]]['grad_norm'])
  fold_boundaries = [steps // 3, 2 * steps // 3]
  for name in ('fo3', 'zig3', 'cl', 'random'):
    arms[name]['g3_grad_norm_spike_at_fo3_boundaries'] = mean_std(
        [boundary_spike(runs[name][s]['grad_norm'], fold_boundaries) for s in seeds])
  saw = arms['saw']['tokens_to_random_final_ratio']
  return {
      'headline': {
          'metric': 'SAW tokens to reach Random final held-out loss / Random tokens (same seed)',
          'value': saw['mean'] if arms['saw']['reached_random_final'] == len(seeds) else None,
          'target': 0.9, 'seeds': len(seeds), 'std': saw['std'],
          'reached': f"{arms['saw']['reached_random_final']}/{len(seeds)}",
      },
      'arms': arms,
      'corpus': {
          'num_examples': int(corpus.tokens.shape[0]), 'seq_len': p['seq_len'],
          'level_counts': np.bincount(corpus.level).tolist(),
          'mean_score_by_level': [float(corpus.score[corpus.level == lv].mean())
                                  for lv in range(mixed.NUM_LEVELS)],
          'score': 'byte 5-gram interpolated Kneser-Ney mean log-prob, fitted on the reference split',
      },
      'config': {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
      'orders': sorted(orders),
      'total_tokens': total_tokens,
      'seconds_this_invocation': round(seconds, 1),
      'train_seconds_all_runs': round(sum(r[s]['seconds'] for r in runs.values() for s in seeds), 1),
      'device': jax.devices()[0].device_kind,
      'trainer': 'training.state.build + training.step.make_pool_step (ordered curriculum), '
                 'one pass, no shuffling',
  }


def plot(runs: dict, perms: dict, corpus, summary: dict, out: str):
  seeds = summary['config']['seeds']
  colors = dict(zip(runs, plt.cm.tab10(np.arange(len(runs)))))

  def mean_curve(name, key):
    return (np.asarray(runs[name][seeds[0]]['tokens']),
            np.mean([runs[name][s][key] for s in seeds], axis=0))

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in runs:
    t, y = mean_curve(name, 'heldout')
    bold = name in ('random', 'stair', 'saw')
    ax.plot(t, y, label=name, color=colors[name], lw=2.2 if bold else 1, alpha=1 if bold else 0.7)
  ax.set(xlabel='tokens', ylabel='held-out clean loss (nats/byte)', title='Held-out loss')
  t, y = mean_curve('random', 'heldout')
  ax.set_ylim(min(y) - 0.15, y[len(y) // 4] + 0.1)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'loss_curves.png'), dpi=110)

  fig, axes = plt.subplots(3, 3, figsize=(10, 8), sharex=True, sharey=True)
  for ax, (name, perm) in zip(axes.ravel(), perms.items()):
    s = corpus.score[perm]
    ax.plot(s, ',', alpha=0.4, color='gray')
    k = max(len(s) // 100, 1)
    ax.plot(np.convolve(s, np.ones(k) / k, mode='valid'), color=colors[name])
    ax.set_title(name, fontsize=9)
  fig.supxlabel('position in the pass')
  fig.supylabel('score (5-gram log-prob)')
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'score_vs_position.png'), dpi=110)

  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  for name in ('random', 'cl', 'fo3', 'stair', 'saw'):
    t, y = mean_curve(name, 'bottom10')
    axes[0].plot(t, y, label=name, color=colors[name])
  axes[0].set(xlabel='tokens', ylabel='loss', title='G2: loss on the lowest-10% score subset')
  axes[0].legend(fontsize=7)
  for name in ('fo3', 'zig3', 'stair', 'saw'):
    g = np.mean([runs[name][s]['grad_norm'] for s in seeds], axis=0)
    axes[1].plot(np.arange(1, len(g) + 1), g, label=name, color=colors[name], lw=1)
  steps = len(runs['fo3'][seeds[0]]['grad_norm'])
  for b in (steps // 3, 2 * steps // 3):
    axes[1].axvline(b, color='k', ls=':', lw=0.8)
  axes[1].set(xlabel='step', ylabel='gradient norm', title='G3: FO-3 fold boundaries (dotted)',
              ylim=(0, np.percentile(runs['fo3'][seeds[0]]['grad_norm'], 99) * 1.5))
  axes[1].legend(fontsize=7)
  names = ['stair', 'stair_jit', 'saw', 'saw_jit', 'random']
  arms = summary['arms']
  clean = [arms[n]['final_heldout_loss']['mean'] for n in names]
  noisy = [arms[n]['g4_perturbed_heldout_loss']['mean'] for n in names]
  x = np.arange(len(names))
  axes[2].bar(x - 0.2, clean, 0.4, label='weights as trained')
  axes[2].bar(x + 0.2, noisy, 0.4, label=f"perturbed ({summary['config']['perturb_scale']} x RMS)")
  axes[2].set_xticks(x, names, fontsize=8)
  axes[2].set_ylim(min(clean) - 0.1, max(noisy) + 0.1)
  axes[2].set(ylabel='held-out loss', title='G4: weight perturbation, with and without JIT')
  axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'guidelines.png'), dpi=110)
  plt.close('all')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='one seed, a few dozen steps')
  parser.add_argument('--out', default=RESULTS, help='output directory')
  args = parser.parse_args(argv)
  p = QUICK if args.quick else FULL
  start = time.perf_counter()
  corpus = mixed.build(p['num_examples'], p['seq_len'], num_heldout=p['eval_examples'], seed=0,
                       cache_dir=os.path.join(lm.default_data_dir(), 'scores'))
  heldout = jnp.asarray(corpus.heldout)
  lowest = np.argsort(corpus.score, kind='stable')[:len(corpus.score) // 10]
  bottom = jnp.asarray(corpus.tokens[np.random.default_rng(0).permutation(lowest)
                                     [:p['eval_examples']]])
  runner = Runner(train_config(p))
  orders = arm_orders(int(p['jitter_fraction'] * p['num_examples']))
  runs, perms = {name: {} for name in orders}, {}
  run_dir = os.path.join(args.out, 'runs')
  os.makedirs(run_dir, exist_ok=True)
  for seed in p['seeds']:
    for name, order in orders.items():
      perm = order(corpus.score, seed)
      perms.setdefault(name, perm)
      t = time.perf_counter()
      runs[name][seed] = cached_run(os.path.join(run_dir, f'{name}-seed{seed}.json'), p,
                                    lambda: runner.run(corpus.tokens[perm], seed, heldout, bottom, p))
      print(f"seed {seed} {name:12s} final {runs[name][seed]['final']:.4f} "
            f'({time.perf_counter() - t:.0f} s)', flush=True)
  summary = summarize(runs, p, corpus, orders, time.perf_counter() - start)
  with open(os.path.join(args.out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  plot(runs, perms, corpus, summary, args.out)
  print(json.dumps(summary['headline']))
  return summary


if __name__ == '__main__':
  main()
