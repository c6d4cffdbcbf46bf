"""Pipeline bubble and memory on 8 fake CPU devices (stage=4 x data=2), one JSON object per line.

bubble_measured_vs_analytic: the bubble fraction of gpipe and circular forward passes against the
  analytic (S - 1) / (R * M + S - 1), measured two ways:
  - `measured` (the ratio's numerator): from the executed program, which counts per stage the
    ticks that did real work; bubble = 1 - useful / ticks. This checks the schedule that actually
    ran (tick count, gating), not a formula.
  - `measured_timing`: from time. The same pipeline runs with bubble ticks skipped (`lax.cond`)
    and with bubble ticks computing on zeros; fake CPU devices share the host's cores, so wall
    time follows the total work of all devices, and 1 - t_skip / t_compute estimates the share of
    bubble work. Per-tick fixed costs (the neighbour exchange, buffer writes) are paid by bubble
    ticks too, which biases it low; at the --quick sizes a tick is so short that those costs and
    8 device threads oversubscribing 2 cores make it erratic. Reported, not the headline.
1f1b_vs_gpipe_memory: XLA's temporary memory per device (`compile().memory_analysis()`) of one
  training step (loss and gradients, from tokens) with 1F1B and with GPipe (remat of each tick,
  the cheapest GPipe), at a fixed microbatch size for M = S and M = 4S (and 2S without --quick).
  GPipe embeds the whole batch before the pipeline, keeps every tick's stage input for its
  backward (M + S - 1 of them) and, being differentiated by JAX after the pipeline, runs the head
  on all M microbatches at once; 1F1B embeds each microbatch on the first stage, keeps at most S
  stage inputs and runs the head per microbatch on the last stage. `growth_per_microbatch` is the
  slope of temp memory in M, in units of one stage input (1F1B's is its per-microbatch int32
  tokens, targets and positions); `fixed_bytes` is the temp memory extrapolated to M = 0: one
  microbatch's layer and head backward (at these sizes mostly [mb, heads, T, T] attention
  tensors, 8 stage inputs each), which both schedules need and the target S / (M + S - 1), a
  ratio of stage inputs alone, does not count.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common import median_times
from models.transformer import Decoder, DecoderConfig
from parallel import pipeline
from parallel.mesh import make_mesh

STAGES, DATA = 4, 2


def decoder_parts(cfg: DecoderConfig):
  """Stacked layer state, the rest of the decoder, and a per-layer function."""
  model = Decoder(cfg, nnx.Rngs(0))
  graphdef, layers, rest = nnx.split(model, nnx.PathContains('layers'), ...)
  layer_fn = pipeline.nnx_layer_fn(nnx.split(model.layers)[0])
  layer_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), layers)
  return layers, rest, layer_fn, lambda rest: nnx.merge(graphdef, layer_shapes, rest)


def bubble(quick: bool):
  cfg = DecoderConfig(vocab_size=256, num_layers=8, d_model=128 if quick else 256, num_heads=4,
                      mlp_dim=512 if quick else 1024, max_len=64)
  layers, _, layer_fn, _ = decoder_parts(cfg)
  mb = 8
  for schedule, microbatches, repeats in (('gpipe', 4, 1), ('circular', 4, 2)):
    pipe = pipeline.PipelineConfig(stages=STAGES, schedule=schedule, microbatches=microbatches,
                                   repeats=repeats)
    x = jax.random.normal(jax.random.key(0), (mb * microbatches, cfg.max_len, cfg.d_model))
    positions = jnp.broadcast_to(jnp.arange(cfg.max_len), x.shape[:2])
    runs = []
    for skip in (True, False):
      variant = dataclasses.replace(pipe, skip_bubbles=skip)
      run = jax.jit(lambda layers, x, p, c=variant: pipeline.forward(layer_fn, c, layers, x, p))
      jax.block_until_ready(run(layers, x, positions))
      runs.append(functools.partial(run, layers, x, positions))
    _, _, useful = runs[0]()
    measured = 1 - float(jnp.mean(useful)) / pipe.ticks
    t_skip, t_compute = median_times(runs, repeats=5 if quick else 15)
    yield dict(name='bubble_measured_vs_analytic', schedule=schedule, stages=STAGES,
               microbatches=microbatches, repeats=repeats, ratio=measured / pipe.analytic_bubble,
               baseline=pipe.analytic_bubble, target=1.0, measured=measured,
               measured_timing=1 - t_skip / t_compute, ticks=pipe.ticks,
               useful_ticks=useful.tolist(), time_skip_s=t_skip, time_compute_s=t_compute)


def step_memory(cfg: DecoderConfig, parts, schedule: str, microbatches: int, mb: int) -> int:
  """Temporary bytes per device of one jitted loss-and-gradients step."""
  layers, rest, layer_fn, without_layers = parts
  pipe = pipeline.PipelineConfig(stages=STAGES, schedule=schedule, microbatches=microbatches)
  batch = mb * microbatches

  def head_fn(rest, y, targets):
    m = without_layers(rest)
    logits = m.logits(m.final_norm(y))
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return losses.sum() / (batch * cfg.max_len), losses.mean(-1)

  def step(layers, rest, inputs, targets):
    positions = jnp.broadcast_to(jnp.arange(cfg.max_len), targets.shape)
    embed_fn = lambda rest, inputs: without_layers(rest).embed_tokens(inputs)
    return pipeline.loss_and_grads(layer_fn, embed_fn, head_fn, pipe, layers, rest, inputs,
                                   positions, targets)

  tokens = jax.ShapeDtypeStruct((batch, cfg.max_len), jnp.int32)
  compiled = jax.jit(step).lower(layers, rest, tokens, tokens).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def memory(quick: bool):
  cfg = DecoderConfig(vocab_size=256, num_layers=STAGES, d_model=64, num_heads=4, mlp_dim=128,
                      max_len=128)
  mb = 8
  stage_input_bytes = mb // DATA * cfg.max_len * cfg.d_model * 4  # one microbatch, one device
  counts = (STAGES, 4 * STAGES) if quick else (STAGES, 2 * STAGES, 4 * STAGES)
  parts = decoder_parts(cfg)
  temp = {s: [step_memory(cfg, parts, s, m, mb) for m in counts] for s in ('gpipe', '1f1b')}
  slope = {s: (t[-1] - t[0]) / (counts[-1] - counts[0]) for s, t in temp.items()}
  m = counts[-1]
  yield dict(name='1f1b_vs_gpipe_memory', stages=STAGES, microbatches=m,
             ratio=temp['1f1b'][-1] / temp['gpipe'][-1], baseline=temp['gpipe'][-1],
             target=STAGES / (m + STAGES - 1), temp_bytes_1f1b=temp['1f1b'][-1],
             temp_bytes_gpipe=temp['gpipe'][-1], microbatch_counts=list(counts),
             temp_bytes_by_m={s: dict(zip(counts, t)) for s, t in temp.items()},
             stage_input_bytes=stage_input_bytes,
             growth_per_microbatch={s: b / stage_input_bytes for s, b in slope.items()},
             fixed_bytes={s: t[0] - slope[s] * counts[0] for s, t in temp.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='smaller sizes, under a minute')
  args = parser.parse_args()
  device = jax.devices()[0].device_kind
  with jax.set_mesh(make_mesh({'stage': STAGES, 'data': DATA})):
    for line in (*bubble(args.quick), *memory(args.quick)):
      print(json.dumps({**line, 'device': device}), flush=True)


if __name__ == '__main__':
  main()
