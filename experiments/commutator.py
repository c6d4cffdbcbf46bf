"""Lie-bracket transfer order (METHODS.md §3.7) on five synthetic sequence tasks, in float64.

Model: a two-hidden-layer tanh MLP (about 15k parameters) mapping a task token and six digits to
six output digits. It is used instead of `models.transformer.Decoder` because the decoder casts
RMSNorm, RoPE and logits to float32, and the order effects at k = 1 are differences of ~1e-6 in
the loss: float32 cancellation would decide the sign (METHODS.md §3.5).

Sources share the vocabulary (digits 0-9, five task tokens): copy, reverse, sort, add
(y_i = x_i + x_{n-1-i} mod 10), parity (running sum mod 2). Each source is one fixed batch
(full-batch training on it); the target E is a held-out batch of the uniform mixture. θ0 and a
real Adam state come from a short Adam warm-up on other samples of the mixture.

Exp 1: for all 10 unordered pairs (= 20 ordered pairs) and k steps per source, measure
ΔL_E = L_E(θ_AB) − L_E(θ_BA) by training both orders, and predict its sign with the bracket at
θ0, at the Trotter reference, re-evaluated at the drift midpoint ("replanned"), and, under Adam,
with the plain bracket and the Adam-aware bracket. Exp 2: train all 5! = 120 orders (k2 steps per
phase, SGD) and place the tournament's order, the Kemeny order of the pairwise matrix, the
tournament re-planned at each phase boundary, the descending-gradient-norm order and random
orders among them.

  python experiments/commutator.py [--quick]   -> results/commutator/{summary.json,*.png}
"""

import argparse
import itertools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from curriculum import commutator  # noqa: E402

TASKS = ('copy', 'reverse', 'sort', 'add', 'parity')
DIGITS, LENGTH = 10, 6
VOCAB = DIGITS + len(TASKS)

FULL = dict(seeds=5, ks=(1, 2, 5, 10, 20, 50), source_batch=128, target_per_task=64, hidden=64,
            warmup_steps=150, warmup_lr=3e-3, sgd_lr=0.02, adam_lr=1e-3, k2s=(1, 5, 20), random_orders=120,
            eta_sweep=(0.003, 0.01, 0.03, 0.1))
QUICK = dict(FULL, seeds=1, ks=(1, 5), source_batch=64, target_per_task=32, warmup_steps=60, k2s=(1, 5),
             eta_sweep=(0.01, 0.1))


def task_outputs(task: str, x: np.ndarray) -> np.ndarray:
  if task == 'copy':
    return x
  if task == 'reverse':
    return x[:, ::-1]
  if task == 'sort':
    return np.sort(x, axis=1)
  if task == 'add':
    return (x + x[:, ::-1]) % DIGITS
  return np.cumsum(x, axis=1) % 2


def make_batch(rng: np.random.Generator, task_ids, size: int) -> dict:
  """`size` examples of each task in `task_ids`: one-hot inputs [B, 7, V], targets [B, 6]."""
  xs, ys, tokens = [], [], []
  for t in task_ids:
    x = rng.integers(0, DIGITS, (size, LENGTH))
    ys.append(task_outputs(TASKS[t], x))
    tokens.append(np.concatenate([np.full((size, 1), DIGITS + t), x], axis=1))
  tokens = np.concatenate(tokens)
  return {'x': jax.nn.one_hot(tokens, VOCAB, dtype=jnp.float64), 'y': jnp.asarray(np.concatenate(ys))}


def init_params(key, hidden: int) -> dict:
  sizes = [((LENGTH + 1) * VOCAB, hidden), (hidden, hidden), (hidden, LENGTH * DIGITS)]
  params = {}
  for i, (k, (n_in, n_out)) in enumerate(zip(jax.random.split(key, 3), sizes)):
    params[f'w{i}'] = jax.random.normal(k, (n_in, n_out), jnp.float64) / np.sqrt(n_in)
    params[f'b{i}'] = jnp.zeros(n_out, jnp.float64)
  return params


def loss_fn(params, batch):
  h = batch['x'].reshape(batch['x'].shape[0], -1)
  h = jnp.tanh(h @ params['w0'] + params['b0'])
  h = jnp.tanh(h @ params['w1'] + params['b1'])
  logits = (h @ params['w2'] + params['b2']).reshape(-1, LENGTH, DIGITS)
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch['y'][..., None], axis=-1))


def train_phases(tx, params, opt_state, stacked, order, k: int):
  """k full-batch steps on each source of `order` (an int array), from (params, opt_state)."""

  def step(carry, src):
    p, s = carry
    batch = jax.tree.map(lambda a: a[src], stacked)
    updates, s = tx.update(jax.grad(loss_fn)(p, batch), s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.lax.scan(step, (params, opt_state), jnp.repeat(order, k))
  return params


def final_losses(tx, k: int):
  """jit(vmap over orders): target loss after training each order [M, P] from θ0."""

  def one(params, opt_state, stacked, target, order):
    return loss_fn(train_phases(tx, params, opt_state, stacked, order, k), target)

  return jax.jit(jax.vmap(one, in_axes=(None, None, None, None, 0)))


class Setup:
  """θ0, the Adam state, the source batches and the target of one seed."""

  def __init__(self, seed: int, cfg: dict):
    rng = np.random.default_rng(seed)
    self.sources = [make_batch(rng, [t], cfg['source_batch']) for t in range(len(TASKS))]
    self.stacked = jax.tree.map(lambda *a: jnp.stack(a), *self.sources)
    self.target = make_batch(rng, range(len(TASKS)), cfg['target_per_task'])
    warm = make_batch(rng, range(len(TASKS)), cfg['source_batch'] // 2)
    self.adam_hyper = commutator.AdamHyper(lr=cfg['adam_lr'])
    self.adam = optax.adam(cfg['adam_lr'])
    params = init_params(jax.random.key(seed), cfg['hidden'])
    warm_tx = optax.adam(cfg['warmup_lr'])
    state = warm_tx.init(params)
    step = jax.jit(lambda p, s: _adam_step(warm_tx, p, s, warm))
    for _ in range(cfg['warmup_steps']):
      params, state = step(params, state)
    self.params, self.adam_state = params, state  # the moments are reused at the Adam arm's lr
    self.sgd = optax.sgd(cfg['sgd_lr'])
    self.sgd_state = self.sgd.init(params)

  def target_loss(self, params) -> float:
    return float(loss_fn(params, self.target))


def _adam_step(tx, params, state, batch):
  updates, state = tx.update(jax.grad(loss_fn)(params, batch), state, params)
  return optax.apply_updates(params, updates), state


PAIRS = list(itertools.combinations(range(len(TASKS)), 2))


def exp1(setup: Setup, cfg: dict) -> dict:
  """Measured and predicted order effects for every unordered pair and k."""
  both_orders = jnp.array([o for a, b in PAIRS for o in ((a, b), (b, a))])
  out = {'measured_sgd': {}, 'measured_adam': {}, 'pred': {}}
  sigma0 = np.array([commutator.bracket(loss_fn, setup.params, setup.sources[a], setup.sources[b],
                                        setup.target) for a, b in PAIRS])
  eta = cfg['sgd_lr']
  for k in cfg['ks']:
    for name, tx, state in (('sgd', setup.sgd, setup.sgd_state),
                            ('adam', setup.adam, setup.adam_state)):
      losses = np.asarray(final_losses(tx, k)(setup.params, state, setup.stacked, setup.target,
                                              both_orders)).reshape(-1, 2)
      out[f'measured_{name}'][k] = losses[:, 0] - losses[:, 1]
    pred = {'theta0': eta**2 * k**2 * sigma0}
    for ref in ('trotter', 'midpoint'):
      pred[ref] = eta**2 * k**2 * np.array([commutator.bracket(
          loss_fn, setup.params, setup.sources[a], setup.sources[b], setup.target, reference=ref,
          lr=eta, steps=k) for a, b in PAIRS])
    pred['adam_aware'] = np.array([commutator.adam_bracket(
        loss_fn, setup.params, setup.adam_state, setup.sources[a], setup.sources[b], setup.target,
        hyper=setup.adam_hyper, steps=k) for a, b in PAIRS])
    out['pred'][k] = pred
  return out


def eta_sweep(setup: Setup, cfg: dict) -> dict:
  """k = 1 sign accuracy of the θ0 and Trotter brackets as the SGD step grows."""
  both_orders = jnp.array([o for a, b in PAIRS for o in ((a, b), (b, a))])
  out = {}
  for eta in cfg['eta_sweep']:
    tx = optax.sgd(eta)
    losses = np.asarray(final_losses(tx, 1)(setup.params, tx.init(setup.params), setup.stacked,
                                            setup.target, both_orders)).reshape(-1, 2)
    measured = losses[:, 0] - losses[:, 1]
    out[eta] = {ref: sign_accuracy(np.array([commutator.bracket(
        loss_fn, setup.params, setup.sources[a], setup.sources[b], setup.target, reference=ref,
        lr=eta) for a, b in PAIRS]), measured) for ref in ('theta0', 'trotter')}
  return out


def sign_accuracy(pred, measured) -> float:
  return float(np.mean(np.sign(pred) == np.sign(measured)))


def exp1_accuracies(res: dict, ks) -> dict:
  acc = {}
  for k in ks:
    p, sgd, adam = res['pred'][k], res['measured_sgd'][k], res['measured_adam'][k]
    acc[k] = {'sgd_theta0': sign_accuracy(p['theta0'], sgd),
              'sgd_trotter': sign_accuracy(p['trotter'], sgd),
              'sgd_replanned_midpoint': sign_accuracy(p['midpoint'], sgd),
              'adam_plain': sign_accuracy(p['theta0'], adam),
              'adam_aware': sign_accuracy(p['adam_aware'], adam)}
  return acc


def percentile(value: float, population: np.ndarray) -> float:
  """Share of the other orders that end with a strictly higher target loss (best = 100)."""
  return float(100.0 * np.sum(population > value) / (len(population) - 1))


def replanned_order(setup: Setup, k2: int) -> list[int]:
  """Tournament over the remaining sources at each phase boundary, from the current parameters."""
  params, remaining, order = setup.params, list(range(len(TASKS))), []
  while remaining:
    if len(remaining) == 1:
      order.append(remaining.pop())
      break
    ranked, _ = commutator.tournament(loss_fn, params, [setup.sources[s] for s in remaining],
                                      setup.target)
    order.append(remaining.pop(int(ranked[0])))
    params = train_phases(setup.sgd, params, setup.sgd_state, setup.stacked,
                          jnp.array(order[-1:]), k2)
  return order


def exp2(setup: Setup, cfg: dict, seed: int, k2: int) -> dict:
  """All 120 orders with k2 SGD steps per phase, and where each planner's pick lands."""
  orders = np.array(list(itertools.permutations(range(len(TASKS)))))
  run_all = final_losses(setup.sgd, k2)
  start = time.perf_counter()
  all_losses = np.asarray(run_all(setup.params, setup.sgd_state, setup.stacked, setup.target,
                                  jnp.asarray(orders)))
  brute_force_s = time.perf_counter() - start
  loss_of = {tuple(o): l for o, l in zip(orders.tolist(), all_losses)}

  commutator.tournament(loss_fn, setup.params, setup.sources, setup.target)  # compile
  start = time.perf_counter()
  tour_order, scores = commutator.tournament(loss_fn, setup.params, setup.sources, setup.target)
  planner_s = time.perf_counter() - start
  sigma = commutator.pairwise_matrix(loss_fn, setup.params, setup.sources, setup.target)
  grad_norms = [float(optax.global_norm(jax.grad(loss_fn)(setup.params, b)))
                for b in setup.sources]
  trotter_order, _ = commutator.tournament(loss_fn, setup.params, setup.sources, setup.target,
                                           reference='trotter', lr=cfg['sgd_lr'], steps=k2)
  picks = {'tournament': tour_order.tolist(),
           'tournament_trotter': trotter_order.tolist(),
           'kemeny_pairwise': commutator.kemeny_order(sigma).tolist(),
           'tournament_replanned': replanned_order(setup, k2),
           'grad_norm_descending': np.argsort(grad_norms)[::-1].tolist(),
           'oracle': orders[np.argmin(all_losses)].tolist()}
  rng = np.random.default_rng(seed + 1000)
  random_idx = rng.integers(0, len(orders), cfg['random_orders'])
  out = {'orders_final_loss': all_losses.tolist(), 'scores': scores.tolist(),
         'picks': {name: {'order': [TASKS[i] for i in o], 'final_loss': loss_of[tuple(o)],
                          'percentile': percentile(loss_of[tuple(o)], all_losses)}
                   for name, o in picks.items()},
         'random_mean_percentile': float(np.mean([percentile(all_losses[i], all_losses)
                                                  for i in random_idx])),
         'planner_seconds': planner_s, 'all_orders_seconds': brute_force_s,
         'planner_gradient_evals': 1 + 2 * len(TASKS),  # g_E, N grads, N HVPs (each ~2.5 grads)
         'all_orders_gradient_evals': len(orders) * len(TASKS) * k2}
  return out


def plot_scatter(results, ks, path):
  fig, ax = plt.subplots(figsize=(5.5, 5))
  for k in ks:
    pred = np.concatenate([r['pred'][k]['theta0'] for r in results])
    meas = np.concatenate([r['measured_sgd'][k] for r in results])
    ax.scatter(pred, meas, s=12, label=f'k={k}')
  lim = max(abs(np.concatenate([r['measured_sgd'][k] for r in results for k in ks])).max(), 1e-12)
  ax.plot([-lim, lim], [-lim, lim], 'k--', lw=0.8)
  ax.set_xscale('symlog', linthresh=1e-7)
  ax.set_yscale('symlog', linthresh=1e-7)
  ax.set_xlabel('predicted η²k²σ_AB (θ0)')
  ax.set_ylabel('measured L_E(AB) − L_E(BA), SGD')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_accuracy(acc_mean, ks, path):
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm in acc_mean[ks[0]]:
    ax.plot(ks, [acc_mean[k][arm] for k in ks], marker='o', label=arm)
  ax.axhline(0.5, color='gray', lw=0.8, ls=':')
  ax.set_xscale('log')
  ax.set_xlabel('k (steps per source)')
  ax.set_ylabel('pairwise sign accuracy')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_histogram(exp2_res, k2, path):
  fig, axes = plt.subplots(1, len(exp2_res), figsize=(4 * len(exp2_res), 3.2), squeeze=False)
  for ax, res in zip(axes[0], exp2_res):
    ax.hist(res['orders_final_loss'], bins=30, color='lightgray')
    for (name, pick), color in zip(res['picks'].items(), ('C0', 'C1', 'C2', 'C3', 'C4', 'k')):
      ax.axvline(pick['final_loss'], color=color, label=f'{name} ({pick["percentile"]:.0f}%)')
    ax.ticklabel_format(axis='x', useOffset=False)
    ax.set_xlabel(f'final L_E over the 120 orders (k={k2} per phase)')
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='one seed, k in {1, 5}: about a minute')
  parser.add_argument('--out', default=os.path.join(REPO, 'results', 'commutator'))
  args = parser.parse_args()
  cfg = QUICK if args.quick else FULL
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  ks = list(cfg['ks'])
  e1, e2, sweeps, theta0_loss = [], [], [], []
  for seed in range(cfg['seeds']):
    setup = Setup(seed, cfg)
    theta0_loss.append(setup.target_loss(setup.params))
    e1.append(exp1(setup, cfg))
    sweeps.append(eta_sweep(setup, cfg))
    e2.append({k2: exp2(setup, cfg, seed, k2) for k2 in cfg['k2s']})
    print(f'seed {seed} done after {time.perf_counter() - start:.0f}s', flush=True)

  per_seed = [exp1_accuracies(r, ks) for r in e1]
  arms = list(per_seed[0][ks[0]])
  acc_mean = {k: {a: float(np.mean([s[k][a] for s in per_seed])) for a in arms} for k in ks}
  acc_std = {k: {a: float(np.std([s[k][a] for s in per_seed])) for a in arms} for k in ks}
  k1 = [s[1]['sgd_theta0'] for s in per_seed]
  slope_k1 = _slope(np.concatenate([r['pred'][1]['theta0'] for r in e1]),
                    np.concatenate([r['measured_sgd'][1] for r in e1]))
  k5 = 5 if 5 in ks else ks[-1]
  k2_main = 5 if 5 in cfg['k2s'] else cfg['k2s'][-1]
  pick_names = list(e2[0][k2_main]['picks'])
  tour = {k2: {n: [r[k2]['picks'][n]['percentile'] for r in e2] for n in pick_names}
          for k2 in cfg['k2s']}
  summary = {
      'headline': {'metric': 'pairwise sign accuracy at k=1 (SGD, bracket at θ0, 10 pairs/seed)',
                   'value': float(np.mean(k1)), 'target': 0.95, 'seeds': cfg['seeds'],
                   'std': float(np.std(k1))},
      'tournament_percentile': float(np.mean(tour[k2_main]['tournament'])),
      'adam_aware_accuracy_k5': acc_mean[k5]['adam_aware'],
      'plain_accuracy_adam_k5': acc_mean[k5]['adam_plain'],
      'arms': {
          'pairwise_accuracy_mean': {str(k): v for k, v in acc_mean.items()},
          'pairwise_accuracy_std': {str(k): v for k, v in acc_std.items()},
          'slope_measured_vs_predicted_k1': slope_k1,
          'k1_accuracy_vs_sgd_lr': {str(eta): {ref: float(np.mean([sw[eta][ref] for sw in sweeps]))
                                               for ref in ('theta0', 'trotter')}
                                    for eta in cfg['eta_sweep']},
          'tournament_k2_main': k2_main,
          'tournament_percentiles_by_k2': {
              str(k2): {n: {'mean': float(np.mean(v)), 'std': float(np.std(v)), 'per_seed': v}
                        for n, v in tour[k2].items()} for k2 in cfg['k2s']},
          'random_order_mean_percentile': float(np.mean([r[k2_main]['random_mean_percentile']
                                                         for r in e2])),
          'planner_seconds': float(np.mean([r[k2_main]['planner_seconds'] for r in e2])),
          'all_120_orders_seconds': {str(k2): float(np.mean([r[k2]['all_orders_seconds']
                                                             for r in e2])) for k2 in cfg['k2s']},
          'planner_gradient_evals': e2[0][k2_main]['planner_gradient_evals'],
          'all_120_orders_gradient_evals': {str(k2): e2[0][k2]['all_orders_gradient_evals']
                                            for k2 in cfg['k2s']},
          'picks_per_seed': [{str(k2): r[k2]['picks'] for k2 in cfg['k2s']} for r in e2],
          'theta0_target_loss': theta0_loss,
      },
      'config': dict(cfg, ks=ks, tasks=TASKS, model='MLP (7x15 one-hot) -> H tanh -> H tanh -> 6x10',
                     params=int(sum(x.size for x in jax.tree.leaves(setup.params))),
                     dtype='float64', percentile='share of the other 119 orders with strictly '
                     'higher final L_E (best = 100)', quick=args.quick),
      'seconds': time.perf_counter() - start,
  }
  with open(os.path.join(args.out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  plot_scatter(e1, ks, os.path.join(args.out, 'scatter_predicted_vs_measured.png'))
  plot_accuracy(acc_mean, ks, os.path.join(args.out, 'accuracy_vs_k.png'))
  for k2 in cfg['k2s']:
    plot_histogram([r[k2] for r in e2], k2, os.path.join(args.out, f'orders_histogram_k{k2}.png'))
  print(json.dumps({k: summary[k] for k in ('headline', 'tournament_percentile',
                                            'adam_aware_accuracy_k5', 'plain_accuracy_adam_k5')}))


def _slope(pred: np.ndarray, measured: np.ndarray) -> float:
  """Least-squares slope of measured on predicted through the origin."""
  return float(pred @ measured / (pred @ pred))


if __name__ == '__main__':
  main()
