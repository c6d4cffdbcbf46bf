"""DFLOP balancing vs data-blind microbatching on the skewed digit workload.

Prints one JSON line per figure:
  balanced_vs_blind_simulated  1F1B makespan (simulator, profiled cost model, static buckets):
                               data-blind (uniform layer split of encoder+decoder, fixed-size
                               sequential microbatches, M = 2S) / DFLOP (layout search over the
                               encoder/decoder split and M, then LPT); the arms in between are
                               reported alongside
  balanced_vs_blind_measured   measured training throughput of the multimodal model on 8 fake
                               CPU devices, data parallel (one packed bin per device per step;
                               pipeline stages are not used here)
  padding_waste                padding fraction of token slots, balanced DP steps
  lpt_solver_time              LPT on 1024 samples
  cpsat_solver_time            CP-SAT on 1024 samples within its time limit (LPT fallback)
and writes the skew sweep to results/dflop/{summary.json, gain_vs_skew.png} (gain per arm vs
skew; CDF of the slowest-stage time per microbatch). The ratio of each line is ours / baseline.

  python benchmarks/balance.py [--quick]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from data import multimodal as mm  # noqa: E402
from models.multimodal import MultimodalModel  # noqa: E402
from models.transformer import Decoder, DecoderConfig  # noqa: E402
from models.vision import VisionConfig, VisionEncoder  # noqa: E402
from parallel import balance as bal  # noqa: E402
from parallel.mesh import make_mesh  # noqa: E402
from training.multimodal import sharded_update  # noqa: E402

VISION = VisionConfig(num_layers=2, d_model=64, num_heads=4, mlp_dim=128)
DECODER = DecoderConfig(vocab_size=264, num_layers=4, d_model=64, num_heads=4, mlp_dim=192,
                        max_len=8192)
STAGES = 4  # simulated pipeline
MEMORY_BUDGET = 2 * 2**30  # bytes per simulated device
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'dflop')


def progress(message):
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def emit(name, ratio, baseline, target, **raw):
  print(json.dumps({'name': name, 'ratio': round(float(ratio), 4), 'baseline': baseline,
                    'target': target, 'device': jax.devices()[0].device_kind, **raw}), flush=True)


# ---------------------------------------------------------------------------------------------
# Profiling: cost and memory models of this model on this machine


def grad_of(module, loss):
  graphdef, state = nnx.split(module)
  return jax.jit(jax.grad(lambda s, x: loss(nnx.merge(graphdef, s), x))), state


def encoder_loss(encoder, images):
  return jnp.mean(encoder(images) ** 2)


def decoder_loss(decoder, tokens):
  logits, aux = decoder(tokens)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens)) + aux


def profile_costs(model, quick):
  enc_grad, enc_state = grad_of(model.encoder, encoder_loss)
  dec_grad, dec_state = grad_of(model.decoder, decoder_loss)

  def encoder_at(n):
    images = jnp.zeros((n, 8, 8), jnp.uint8)
    return lambda: enc_grad(enc_state, images)

  def decoder_at(n):
    tokens = jnp.zeros((1, n), jnp.int32)
    return lambda: dec_grad(dec_state, tokens)

  repeats = 2 if quick else 5
  tiles = [8, 64, 256] if quick else [4, 16, 64, 256, 1024]
  tokens = [128, 512, 2048] if quick else [64, 256, 1024, 2048, 4096]
  return bal.CostModel(bal.profile(encoder_at, tiles, repeats), bal.profile(decoder_at, tokens, repeats))


def memory_model(make_module, loss, input_at, points):
  """MemoryModel fitted to AOT memory_analysis() of fwd+bwd at (layers, load) points."""
  nbytes = []
  for layers, load in points:
    step, state = grad_of(make_module(layers), loss)
    nbytes.append(bal.compiled_memory(step, state, input_at(load)))
  layers, loads = zip(*points)
  return bal.fit_memory(layers, loads, nbytes)


def profile_memory(quick):
  points = [(1, 64), (2, 64), (2, 256)] if quick else [(1, 64), (2, 64), (2, 256), (4, 1024)]
  # Abstract modules (nnx.eval_shape): memory_analysis() needs shapes only, no initialisation.
  enc = memory_model(
      lambda n: nnx.eval_shape(lambda: VisionEncoder(dataclasses.replace(VISION, num_layers=n),
                                                     DECODER.d_model, nnx.Rngs(0))),
      encoder_loss, lambda n: jax.ShapeDtypeStruct((n, 8, 8), jnp.uint8),
      [(layers, load // 16) for layers, load in points])
  dec = memory_model(
      lambda n: nnx.eval_shape(lambda: Decoder(dataclasses.replace(DECODER, num_layers=n),
                                               nnx.Rngs(0))),
      decoder_loss, lambda n: jax.ShapeDtypeStruct((1, n), jnp.int32), points)
  return lambda module, layers, load: (enc if module == 'encoder' else dec)(layers, load)


# ---------------------------------------------------------------------------------------------
# Simulated pipeline


def ladders(tiles, tokens, samples_per_bin, growth=1.125):
  """Bucket ladders wide enough for a bin of the largest samples (images counted one by one)."""
  return (bal.ladder(tiles.max() * samples_per_bin, growth, smallest=1, multiple=1),
          bal.ladder(tokens.max() * samples_per_bin, growth))


def microbatch_times(cost, tiles, tokens, bins, num_bins, image_ladder, token_ladder):
  """[M, 2] encoder/decoder seconds of each microbatch at its static bucket shape."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # oversized samples are counted in their own microbatch
    packing = bal.pack(bins, tiles, tokens, num_bins, image_ladder, token_ladder)
  return cost.times(packing.shapes[:, 0], packing.shapes[:, 1]), packing


def simulate_arm(cost, tiles, tokens, layer_split, bins, num_bins, image_ladder, token_ladder):
  times, packing = microbatch_times(cost, tiles, tokens, bins, num_bins, image_ladder, token_ladder)
  return bal.simulate_1f1b(bal.stage_times(layer_split, times)), times, packing


def simulated_arms(cost, memory, tiles, tokens, step_samples):
  """Per-step makespans of: blind; layout search only (encoder/decoder split and microbatch
  count, sequential bins); LPT balancing only (blind layout and M); DFLOP (both)."""
  image_ladder, token_ladder = ladders(tiles, tokens, step_samples // STAGES)
  blind_split = bal.uniform_split(VISION.num_layers, DECODER.num_layers, STAGES)
  blind_m = 2 * STAGES
  out = {k: [] for k in ('blind', 'layout_only', 'balancing', 'dflop')}
  detail = {'blind_times': [], 'dflop_times': [], 'layouts': [], 'dflop_waste': []}
  for start in range(0, len(tiles) - step_samples + 1, step_samples):
    t, k = tiles[start:start + step_samples], tokens[start:start + step_samples]
    layout = bal.search_layout(cost, t, k, num_devices=STAGES, encoder_layers=VISION.num_layers,
                               decoder_layers=DECODER.num_layers, memory=memory,
                               memory_budget=MEMORY_BUDGET, data_parallel_options=[1])
    split = bal.module_split(VISION.num_layers, DECODER.num_layers, layout.encoder_stages,
                             layout.decoder_stages)
    m = layout.microbatches
    lpt_blind_m = bal.assign_lpt(cost.sample_costs(t, k, blind_m), blind_m)
    lpt_m = bal.assign_lpt(cost.sample_costs(t, k, m), m)
    arms = {
        'blind': (blind_split, bal.sequential_bins(len(t), blind_m), blind_m),
        'layout_only': (split, bal.sequential_bins(len(t), m), m),
        'balancing': (blind_split, lpt_blind_m, blind_m),
        'dflop': (split, lpt_m, m),
    }
    for name, (layer_split, bins, num_bins) in arms.items():
      span, times, packing = simulate_arm(cost, t, k, layer_split, bins, num_bins, image_ladder,
                                          token_ladder)
      out[name].append(span)
      if name in ('blind', 'dflop'):
        detail[f'{name}_times'].append(bal.stage_times(layer_split, times).max(0))
      if name == 'dflop':
        detail['dflop_waste'].append(bal.padding_waste(packing))
    detail['layouts'].append(layout._asdict())
  return {k: np.array(v) for k, v in out.items()}, detail


def workload(num, skew, seed):
  examples = list(mm.generate_examples(num, skew, seed))
  return examples, *mm.sample_sizes(examples, VISION.tokens_per_image)


# ---------------------------------------------------------------------------------------------
# Measured: data-parallel training steps on 8 fake CPU devices


def step_batches(examples, tiles, tokens, cost, devices, step_samples, balanced):
  """Per step: (device batch of `devices` packed rows, shared bucket shape, real token count)."""
  # Finer rungs than the pipeline's: all rows of a data-parallel step share the largest bucket.
  image_ladder, token_ladder = ladders(tiles, tokens, step_samples // devices, growth=1.0625)
  steps = []
  for start in range(0, len(examples) - step_samples + 1, step_samples):
    t, k = tiles[start:start + step_samples], tokens[start:start + step_samples]
    if balanced:
      bins = bal.assign_lpt(cost.sample_costs(t, k, devices), devices)
    else:
      bins = bal.sequential_bins(len(t), devices)
    packing = bal.pack(bins, t, k, devices, image_ladder, token_ladder)
    shape = tuple(int(x) for x in packing.shapes.max(0))  # one SPMD step: one shape for all rows
    rows = [[examples[start + i] for i in np.flatnonzero(packing.bins == j)] for j in range(devices)]
    batch = mm.pack_rows(rows, *shape, VISION.tokens_per_image)
    steps.append((batch, shape, int(k.sum())))
  return steps


def measured(model, examples, tiles, tokens, cost, step_samples):
  devices = len(jax.devices())
  mesh = make_mesh({'data': -1})
  graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)))
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  step, rows = sharded_update(graphdef, shardings, mesh, [('act_batch', 'data')])
  state = jax.device_put(state, shardings)
  arms = {name: step_batches(examples, tiles, tokens, cost, devices, step_samples,
                             balanced=name == 'balanced') for name in ('blind', 'balanced')}
  # Compile every bucket shape first (not timed), then alternate the arms step by step so that
  # load from other processes on the machine hits both alike.
  compiled = set()
  for batch, shape, _ in (s for steps in arms.values() for s in steps):
    if shape not in compiled:
      compiled.add(shape)
      state, metrics = step(state, jax.device_put(batch, rows))
  jax.block_until_ready(metrics)
  elapsed = {name: [] for name in arms}
  correction, errors = bal.correction_init(), {'uncorrected': [], 'corrected': []}
  for i in range(len(arms['blind'])):
    for name, steps in arms.items():
      batch, shape, _ = steps[i]
      begin = time.perf_counter()
      state, metrics = step(state, jax.device_put(batch, rows))
      jax.block_until_ready(metrics)
      seconds = time.perf_counter() - begin
      elapsed[name].append(seconds)
      # Profiled on one device; 8 fake devices share the cores: the correction learns the gap.
      predicted = cost.times(*shape).sum()
      errors['uncorrected'].append(abs(predicted / seconds - 1))
      if correction.count:
        fixed = bal.corrected(cost, correction).times(*shape).sum()
        errors['corrected'].append(abs(fixed / seconds - 1))
      correction = bal.correction_update(correction, predicted, seconds)
  real = {name: sum(s[2] for s in steps) for name, steps in arms.items()}
  return {
      'tokens_per_s': {name: real[name] / sum(elapsed[name]) for name in arms},
      'padding_waste': {name: 1 - real[name] / (devices * sum(s[1][1] for s in steps))
                        for name, steps in arms.items()},
      'seconds': {name: float(np.sum(v)) for name, v in elapsed.items()},
      'steps': len(elapsed['blind']),
      'bucket_shapes': {name: len({s[1] for s in steps}) for name, steps in arms.items()},
      'final_loss': float(metrics['loss']),
      'correction_ratio': correction.ratio.tolist(),
      'prediction_mape': {k: float(np.mean(v)) for k, v in errors.items()},
  }


# ---------------------------------------------------------------------------------------------


def solver_times(cost, tiles, tokens, limit):
  costs = cost.sample_costs(tiles, tokens, 16)
  lpt = []
  for _ in range(7):
    begin = time.perf_counter()
    bins = bal.assign_lpt(costs, 16)
    lpt.append(time.perf_counter() - begin)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    cpsat = bal.assign_cpsat(costs, 16, time_limit_s=limit)
  return (float(np.median(lpt)), bal.makespan(costs, bins, 16), cpsat,
          bal.makespan(costs, cpsat.bins, 16))


def sweep(cost, memory, skews, seeds, num, step_samples):
  rows = []
  for skew in skews:
    gains = {arm: [] for arm in ('layout_only', 'balancing', 'dflop')}
    for seed in seeds:
      _, tiles, tokens = workload(num, skew, seed)
      spans, _ = simulated_arms(cost, memory, tiles, tokens, step_samples)
      for arm in gains:
        gains[arm].append(float(spans['blind'].sum() / spans[arm].sum()))
    rows.append({'skew': skew, **{arm: {'mean': float(np.mean(v)), 'std': float(np.std(v)),
                                        'seeds': v} for arm, v in gains.items()}})
  return rows


def plot(rows, detail, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  skews = [r['skew'] for r in rows]
  for arm, label in (('layout_only', 'layout search only (split, M)'), ('balancing', 'LPT balancing only'),
                     ('dflop', 'layout search + LPT (DFLOP)')):
    ax[0].errorbar(skews, [r[arm]['mean'] for r in rows], yerr=[r[arm]['std'] for r in rows],
                   marker='o', capsize=3, label=label)
  ax[0].axhline(1.0, color='gray', lw=0.8)
  ax[0].set_xlabel('workload skew (0: single images, 1: 60/30/10 single/multi/video)')
  ax[0].set_ylabel('simulated 1F1B speed-up over data-blind')
  ax[0].legend()
  for name in ('blind', 'dflop'):
    t = np.sort(np.concatenate(detail[f'{name}_times'])) * 1e3
    ax[1].plot(t, np.arange(1, len(t) + 1) / len(t), label=name)
  ax[1].set_xlabel('slowest-stage fwd+bwd time per microbatch (ms), skew 1')
  ax[1].set_ylabel('CDF')
  ax[1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  quick = args.quick
  num = 256 if quick else 1024
  step_samples = 128 if quick else 256

  model = MultimodalModel(VISION, DECODER, nnx.Rngs(0))
  progress('profiling throughput')
  cost = profile_costs(model, quick)
  progress('profiling memory (AOT)')
  memory = profile_memory(quick)
  progress('simulating')

  examples, tiles, tokens = workload(num, 1.0, 0)
  spans, detail = simulated_arms(cost, memory, tiles, tokens, step_samples)
  blind, dflop = spans['blind'].sum(), spans['dflop'].sum()
  emit('balanced_vs_blind_simulated', blind / dflop, 'uniform layer split, fixed-size sequential '
       f'microbatches (M={2 * STAGES})', 1.25, blind_makespan_s=blind, balanced_makespan_s=dflop,
       stages=STAGES, samples=num, samples_per_step=step_samples, layouts=detail['layouts'],
       layout_only=spans['blind'].sum() / spans['layout_only'].sum(),
       balancing_only=spans['blind'].sum() / spans['balancing'].sum(),
       balancing_at_searched_m=spans['layout_only'].sum() / dflop)

  progress('measuring data-parallel steps')
  measured_samples = 192 if quick else 512
  run = measured(model, examples[:measured_samples], tiles[:measured_samples], tokens[:measured_samples],
                 cost, step_samples=64)
  throughput, waste = run.pop('tokens_per_s'), run.pop('padding_waste')
  emit('balanced_vs_blind_measured', throughput['balanced'] / throughput['blind'],
       'fixed-size sequential rows, data parallel', 1.15,
       mode='data-parallel bins: 8 fake CPU devices, one packed row each, no pipeline stages',
       tokens_per_s=throughput, **run)
  emit('padding_waste', waste['balanced'] / waste['blind'], 'blind padding waste', 0.10,
       balanced_waste=waste['balanced'], blind_waste=waste['blind'],
       pipeline_microbatch_waste=float(np.mean(detail['dflop_waste'])),
       note='target: balanced_waste <= 0.10 of decoder token slots (DP steps)')

  progress('timing solvers')
  _, s_tiles, s_tokens = workload(1024, 1.0, 1) if quick else (examples, tiles, tokens)
  limit = 5.0 if quick else 10.0
  lpt_s, lpt_span, cpsat, cpsat_span = solver_times(cost, s_tiles, s_tokens, limit)
  emit('lpt_solver_time', lpt_s / 0.010, '10 ms budget', 1.0, seconds=lpt_s, samples=1024, bins=16)
  emit('cpsat_solver_time', cpsat.seconds / limit, f'{limit} s time limit', 1.0,
       seconds=cpsat.seconds, status=cpsat.status, used=cpsat.solver, samples=1024, bins=16,
       makespan_vs_lpt=cpsat_span / lpt_span)

  skews = [0.0, 0.5, 1.0] if quick else [0.0, 0.25, 0.5, 0.75, 1.0]
  seeds = [0] if quick else [0, 1, 2]
  progress('skew sweep')
  rows = sweep(cost, memory, skews, seeds, num, step_samples)
  os.makedirs(RESULTS, exist_ok=True)
  plot(rows, detail, os.path.join(RESULTS, 'gain_vs_skew.png'))
  top = rows[-1]['dflop']
  summary = {
      'headline': {'metric': 'simulated 1F1B speed-up, DFLOP over data-blind, skew 1',
                   'value': top['mean'], 'target': 1.25, 'seeds': len(seeds), 'std': top['std']},
      'arms': {'sweep': rows, 'measured_tokens_per_s': throughput, 'padding_waste': waste},
      'config': {'quick': quick, 'samples': num, 'samples_per_step': step_samples,
                 'stages': STAGES, 'vision': VISION.__dict__, 'decoder': DECODER.__dict__,
                 'cost_model': {m: {'sizes': c.sizes.tolist(), 'rates': c.rates.tolist()}
                                for m, c in zip(bal.MODULES, cost)},
                 'device': jax.devices()[0].device_kind},
  }
  with open(os.path.join(RESULTS, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1, default=float)


if __name__ == '__main__':
  main()
