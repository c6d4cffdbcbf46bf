"""SPaCe reproduction on synthetic arithmetic (METHODS.md 1.7), sized for a 2-core CPU.

Arms: uniform over the full pool, uniform over the reduced pool, the bandit over a random pool of
K*l items, SPaCe (bandit over the reduced pool), and the bandit over the full pool (the paper's
"without pool reduction" ablation, which separates the two halves of the method); every arm over
the same seeds. One warm-up model and its reference solve rates are shared by all arms and seeds
(the seed varies the reduction's k-means, the curriculum and the rollouts). Sizes are those of
`configs/spaced_arith.py`.

Headline: RL steps to a target held-out greedy accuracy, SPaCe / uniform-full; the same for the
sampled accuracy (the expected reward at the RL temperature) beside it. A target sits halfway
between the warmed-up model's accuracy and uniform-full's best mean accuracy, so it is set by the
baseline alone. A run that never reaches it counts as steps + eval_every (censored, and counted).

    python experiments/spaced.py [--quick] [--out results/spaced]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # pylint: disable=g-import-not-at-top
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from configs import spaced_arith
from training import spaced

ARMS = {  # name: (curriculum.kind, curriculum.pool)
    'uniform_full': ('uniform', 'full'),
    'uniform_reduced': ('uniform', 'reduced'),
    'random_bandit': ('spaced', 'random'),
    'spaced': ('spaced', 'reduced'),
    'bandit_full': ('spaced', 'full'),
}
METRICS = ('overall', 'sampled')  # greedy and sampled held-out accuracy
SEEDS = (0, 1, 2)


def experiment_config(quick: bool):
  config = spaced_arith.get_config()
  if quick:
    config.data.update(num_train=400, num_test_per_difficulty=8)
    config.warmup.update(steps=200)
    config.reduction.update(num_clusters=4, per_cluster=5, samples=2)
    config.train.update(steps=6, eval_every=3, eval_batch_size=40, eval_samples=2)
  return config


def run_arms(config, workdir: str, seeds) -> tuple[dict, np.ndarray, dict]:
  problems = spaced.load_problems(config, workdir)
  graphdef, params = spaced.build_model(config)
  params = spaced.warm_up(graphdef, params, problems['train'], config)
  difficulty = spaced.reference_difficulty(graphdef, params, problems['train'], config)
  runs = {arm: [] for arm in ARMS}
  for seed in seeds:
    for arm, (kind, pool) in ARMS.items():
      cfg = config.copy_and_resolve_references()
      cfg.curriculum.update(kind=kind, pool=pool)
      cfg.train.seed = seed
      rows, cluster = spaced.select_pool(problems['train'], difficulty, cfg, seed)
      t = time.time()
      records = spaced.train_rl(graphdef, params, problems['train'], rows, cluster,
                                problems['test'], cfg, seed)
      final = records[-1]['eval']
      print(f'{arm} seed {seed}: {time.time() - t:.0f}s, final greedy {final["overall"]:.3f} '
            f'sampled {final["sampled"]:.3f}', flush=True)
      runs[arm].append(records)
  return runs, difficulty, problems


def curve(records, key='overall'):
  evals = [r for r in records if 'eval' in r]
  return np.array([r['step'] for r in evals]), np.array([r['eval'][key] for r in evals])


def steps_to(records, target: float, censored_at: int, metric: str = 'overall') -> int:
  steps, acc = curve(records, metric)
  hit = np.flatnonzero(acc >= target)
  return int(steps[hit[0]]) if hit.size else censored_at


def steps_to_target(runs: dict, metric: str, censored_at: int) -> dict:
  """Per arm and seed: the first evaluated step at the metric's target, and the target itself."""
  start = np.mean([curve(r, metric)[1][0] for r in runs['uniform_full']])
  best_baseline = np.max(np.mean([curve(r, metric)[1] for r in runs['uniform_full']], axis=0))
  target = start + 0.5 * (best_baseline - start)
  steps = {arm: [steps_to(r, target, censored_at, metric) for r in recs]
           for arm, recs in runs.items()}
  ratios = np.array(steps['spaced']) / np.array(steps['uniform_full'])
  return dict(start=float(start), target=float(target), steps=steps,
              ratio=float(np.mean(steps['spaced']) / np.mean(steps['uniform_full'])),
              ratio_std=float(np.std(ratios)))


def summarize(runs: dict, config, seeds) -> dict:
  censored_at = config.train.steps + config.train.eval_every
  targets = {m: steps_to_target(runs, m, censored_at) for m in METRICS}
  arms = {}
  for arm, recs in runs.items():
    finals = {m: [curve(r, m)[1][-1] for r in recs] for m in METRICS}
    arms[arm] = dict(
        steps_to_target={m: t['steps'][arm] for m, t in targets.items()},
        censored={m: int(sum(s == censored_at for s in t['steps'][arm]))
                  for m, t in targets.items()},
        final_accuracy_mean={m: float(np.mean(f)) for m, f in finals.items()},
        final_accuracy_std={m: float(np.std(f)) for m, f in finals.items()},
        final_train_reward=[float(np.mean([x['reward'] for x in r[-config.train.eval_every:]]))
                            for r in recs],
        unique_samples=[len({i for rec in r[1:] for i in rec['rows']}) for r in recs],
        curve_steps=curve(recs[0])[0].tolist(),
        curve_mean={k: np.mean([curve(r, k)[1] for r in recs], axis=0).tolist()
                    for k in recs[0][0]['eval']})
  unique_ratio = np.mean(arms['spaced']['unique_samples']) / np.mean(
      arms['uniform_full']['unique_samples'])
  greedy = targets['overall']
  return dict(
      headline=dict(metric='RL steps to target held-out accuracy, SPaCe / uniform-full',
                    value=greedy['ratio'], target=0.8, seeds=len(seeds), std=greedy['ratio_std']),
      sampled_accuracy_ratio=dict(value=targets['sampled']['ratio'],
                                  std=targets['sampled']['ratio_std']),
      unique_samples_ratio=float(unique_ratio), censored_steps=censored_at,
      targets={m: dict(start=t['start'], target=t['target']) for m, t in targets.items()},
      arms=arms, config=config.to_dict())


def plot_curves(summary: dict, out: str):
  """Held-out accuracy vs RL step: greedy (top row) and sampled (bottom), overall and by
  difficulty, mean of seeds; the dotted line is the steps-to-target threshold."""
  means = {arm: a['curve_mean'] for arm, a in summary['arms'].items()}
  columns = [k for k in means['spaced'] if k.startswith('d')]
  fig, axes = plt.subplots(2, 1 + len(columns), figsize=(2.6 * (1 + len(columns)), 5.2),
                           sharex=True)
  for row, (metric, prefix) in enumerate((('overall', ''), ('sampled', 'sampled_'))):
    for col, key in enumerate([metric] + [prefix + c for c in columns]):
      ax = axes[row, col]
      for arm, curves in means.items():
        ax.plot(summary['arms'][arm]['curve_steps'], curves[key], label=arm)
      ax.set_title(key, fontsize=9)
    axes[row, 0].axhline(summary['targets'][metric]['target'], color='k', ls=':', lw=0.8)
    axes[row, 0].set_ylabel(f'held-out, {"greedy" if row == 0 else "sampled"}')
  for ax in axes[1]:
    ax.set_xlabel('RL step')
  axes[0, -1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'accuracy_vs_steps.png'), dpi=110)
  plt.close(fig)


def plot_selection(records, out: str, arm: str, num_bins: int = 10):
  """Which cluster each step drew from, beside the rollouts' solve rate per cluster and bin."""
  steps = [r for r in records if 'clusters' in r]
  num_clusters = 1 + max(max(r['clusters']) for r in steps)
  bins = np.array_split(np.arange(len(steps)), min(num_bins, len(steps)))
  picks = np.zeros((num_clusters, len(bins)))
  solved = np.full((num_clusters, len(bins)), np.nan)
  for b, members in enumerate(bins):
    c = np.concatenate([steps[i]['clusters'] for i in members])
    s = np.concatenate([steps[i]['solve'] for i in members])
    picks[:, b] = np.bincount(c, minlength=num_clusters) / len(c)
    for k in np.unique(c):
      solved[k, b] = s[c == k].mean()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, m, title in ((axes[0], picks, 'share of prompts drawn'),
                       (axes[1], solved, 'rollout solve rate')):
    im = ax.imshow(m, aspect='auto', cmap='viridis', vmin=0, vmax=1)
    ax.set_title(f'{arm}: {title}')
    ax.set_xlabel('step bin')
    ax.set_ylabel('cluster')
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'cluster_selection_{arm}.png'), dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default='results/spaced')
  parser.add_argument('--workdir', default='/tmp/paceline_spaced')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  config = experiment_config(args.quick)
  seeds = SEEDS
  t = time.time()
  runs, _, _ = run_arms(config, args.workdir, seeds)
  summary = summarize(runs, config, seeds)
  summary['wall_time_s'] = time.time() - t
  summary['quick'] = args.quick
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  plot_curves(summary, args.out)
  for arm in ('spaced', 'random_bandit'):
    plot_selection(runs[arm][0], args.out, arm)
  print(json.dumps(summary['headline']), f'unique_samples_ratio={summary["unique_samples_ratio"]:.4f}')


if __name__ == '__main__':
  main()
