"""Activation memory of the reversible stack vs per-layer remat vs plain autodiff, and step time.

All memory figures come from `jax.jit(...).lower(...).compile().memory_analysis()` of the same
function (a stack of RevFFN coupling layers with attention F and a top-2 MoE G) differentiated three
ways (`ReversibleConfig.backprop`), compiled side by side in one run; nothing is allocated for
them. The last line compiles a whole AdamW fine-tuning step of the MoE preset, reversible model vs
the original MoE decoder, and compares peak bytes (weights, gradients, optimizer state included).

  python benchmarks/reversible_memory.py [--quick]
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from configs import moe as moe_preset  # noqa: E402
from models import moe  # noqa: E402
from models import reversible as rv  # noqa: E402
from models.transformer import Decoder, DecoderConfig  # noqa: E402
from training.state import decoder_config  # noqa: E402

DEVICE = jax.devices()[0].device_kind
FULL = dict(d_model=256, num_heads=4, mlp_dim=512, batch=8, seq=512, seqs=(256, 512, 1024),
            time_layers=8, time_seq=256)
QUICK = dict(d_model=64, num_heads=2, mlp_dim=128, batch=4, seq=128, seqs=(128, 256),
             time_layers=4, time_seq=64)
SIZES = {'full': FULL, 'quick': QUICK}


def stack_config(size, num_layers, ffn='moe'):
  dense = DecoderConfig(vocab_size=264, num_layers=num_layers, d_model=size['d_model'],
                        num_heads=size['num_heads'], mlp_dim=size['mlp_dim'], max_len=4096)
  if ffn == 'dense':
    return dense
  fields = {f.name: getattr(dense, f.name) for f in dataclasses.fields(DecoderConfig)}
  return moe.MoEConfig(**fields, num_experts=8, top_k=2)


def stack_grad(cfg, backprop):
  """(jitted grad of a scalar of the stack's outputs, graphdef, abstract layer state)."""
  rev = rv.ReversibleConfig(backprop=backprop)
  layer_graphdef, layers = nnx.split(
      nnx.eval_shape(lambda: rv.ReversibleDecoder(cfg, nnx.Rngs(0), rev).layers))

  def loss(layers, x1, x2, positions):
    y1, y2, aux = rv.run_streams(layer_graphdef, layers, x1, x2, positions, rev)
    return jnp.mean(y1 * y1) + jnp.mean(jnp.sin(y2)) + 0.01 * aux

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), layers


def stream_inputs(cfg, batch, seq):
  stream = jax.ShapeDtypeStruct((batch, seq, cfg.d_model // 2), jnp.float32)
  return stream, stream, jax.ShapeDtypeStruct((batch, seq), jnp.int32)


@functools.lru_cache(maxsize=None)
def temp_bytes(size_name, num_layers, backprop, seq, ffn='moe'):
  size = SIZES[size_name]
  cfg = stack_config(size, num_layers, ffn)
  grad, layers = stack_grad(cfg, backprop)
  compiled = grad.lower(layers, *stream_inputs(cfg, size['batch'], seq)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def line(name, ours, baseline_value, baseline, target, **figures):
  print(json.dumps(dict(name=name, ratio=round(ours / baseline_value, 4), baseline=baseline,
                        target=target, ours=ours, baseline_value=baseline_value, device=DEVICE,
                        **figures)), flush=True)


def memory_lines(size_name):
  size = SIZES[size_name]
  mib = lambda b: round(b / 2**20, 2)
  needed = [(16, bp) for bp in rv.BACKPROPS] + [(4, 'reversible'), (32, 'reversible')]
  by_depth = {(L, bp): temp_bytes(size_name, L, bp, size['seq']) for L, bp in needed}
  shape = dict(batch=size['batch'], seq=size['seq'], d_model=size['d_model'])
  temps_mib = {f'{bp}_{L}L': mib(b) for (L, bp), b in by_depth.items()}
  line('reversible_vs_remat_memory_16L', by_depth[16, 'reversible'], by_depth[16, 'remat'],
       'per-layer jax.checkpoint, temp bytes', 0.7, temp_mib=temps_mib, **shape)
  line('reversible_vs_plain_memory_16L', by_depth[16, 'reversible'], by_depth[16, 'autodiff'],
       'plain autodiff, temp bytes', 0.05, temp_mib=temps_mib, **shape)
  line('reversible_depth_growth_4_32L', by_depth[32, 'reversible'], by_depth[4, 'reversible'],
       'reversible at 4 layers, temp bytes (ratio 1.0 = flat)', 1.02, temp_mib=temps_mib, **shape)
  # On CPU, lax.ragged_dot lowers to a dense product over all experts with masked inputs, so the
  # MoE's per-layer working set is E times its activations; a dense SwiGLU G shows the stack alone.
  dense = {bp: temp_bytes(size_name, 16, bp, size['seq'], 'dense') for bp in rv.BACKPROPS}
  line('reversible_vs_plain_memory_16L_dense_ffn', dense['reversible'], dense['autodiff'],
       'plain autodiff, temp bytes, SwiGLU in place of the MoE', 0.05, remat_bytes=dense['remat'],
       reversible_vs_remat=round(dense['reversible'] / dense['remat'], 4), **shape)
  for seq in size['seqs']:
    temps = {bp: temp_bytes(size_name, 16, bp, seq) for bp in rv.BACKPROPS}
    line(f'reversible_vs_remat_memory_16L_S{seq}', temps['reversible'], temps['remat'],
         'per-layer jax.checkpoint, temp bytes', 0.7, plain_bytes=temps['autodiff'],
         reversible_vs_plain=round(temps['reversible'] / temps['autodiff'], 4),
         batch=size['batch'], seq=seq, d_model=size['d_model'])


def time_line(size, repeats):
  cfg = stack_config(size, size['time_layers'])
  x1, x2, positions = stream_inputs(cfg, size['batch'], size['time_seq'])
  keys = jax.random.split(jax.random.key(0), 2)
  x1, x2 = (jax.random.normal(k, x1.shape) for k in keys)
  positions = jnp.broadcast_to(jnp.arange(size['time_seq']), positions.shape)
  runs = {}
  for backprop in ('reversible', 'remat'):
    grad, _ = stack_grad(cfg, backprop)
    layers = nnx.state(rv.ReversibleDecoder(cfg, nnx.Rngs(0), rv.ReversibleConfig()).layers)
    runs[backprop] = (grad, layers)
    jax.block_until_ready(grad(layers, x1, x2, positions))  # compile
  seconds = {bp: [] for bp in runs}
  for _ in range(repeats):  # interleaved, so load changes hit both alike
    for backprop, (grad, layers) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(grad(layers, x1, x2, positions))
      seconds[backprop].append(time.perf_counter() - start)
  median = {bp: statistics.median(s) for bp, s in seconds.items()}
  line('reversible_vs_remat_time', median['reversible'], median['remat'],
       'per-layer jax.checkpoint, median grad step seconds', 1.3, seconds=seconds,
       layers=size['time_layers'], batch=size['batch'], seq=size['time_seq'],
       d_model=size['d_model'])


def finetune_peak_bytes(model_fn, batch, seq):
  """(peak, temp) bytes of one compiled AdamW step (loss + aux, grads, update) of a model."""
  abstract = nnx.eval_shape(lambda: (lambda m: (m, nnx.Optimizer(m, optax.adamw(1e-4),
                                                                wrt=nnx.Param)))(model_fn()))
  graphdef, state = nnx.split(abstract)

  def step(state, tokens):
    model, optimizer = nnx.merge(graphdef, state)

    def loss(model):
      logits, aux = model(tokens[:, :-1])
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
      return jnp.mean(nll) + 0.01 * aux

    optimizer.update(model, nnx.grad(loss)(model))
    return nnx.state((model, optimizer))

  tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
  stats = jax.jit(step, donate_argnums=0).lower(state, tokens).compile().memory_analysis()
  # The CPU backend's peak_memory_in_bytes counts the arguments only; this sum is XLA's bound on
  # what is live at once (donated state aliased to the output, plus all temporaries).
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes +
          stats.temp_size_in_bytes)
  return peak, stats.temp_size_in_bytes


def finetune_line(quick):
  config = moe_preset.get_config('tiny' if quick else None)
  cfg = decoder_config(config, moe.MoEConfig)
  batch, seq = config.train.batch_size, config.data.seq_len
  plain = finetune_peak_bytes(lambda: Decoder(cfg, nnx.Rngs(0), block_factory=moe.MoEBlock),
                              batch, seq)
  remat = finetune_peak_bytes(
      lambda: Decoder(dataclasses.replace(cfg, remat='full'), nnx.Rngs(0),
                      block_factory=moe.MoEBlock), batch, seq)
  reversible = finetune_peak_bytes(lambda: rv.ReversibleDecoder(cfg, nnx.Rngs(0)), batch, seq)
  line('moe_finetune_peak_memory_reversible_vs_plain', reversible[0], plain[0],
       'full fine-tuning of the original MoE decoder (plain autodiff), peak bytes', 0.604,
       remat_bytes=remat[0], reversible_vs_remat=round(reversible[0] / remat[0], 4),
       temp_bytes=dict(reversible=reversible[1], plain=plain[1], remat=remat[1]),
       paper='65.4 -> 39.5 GB', preset='configs/moe.py' + (':tiny' if quick else ''),
       batch=batch, seq=seq, layers=cfg.num_layers, d_model=cfg.d_model,
       num_experts=cfg.num_experts)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='small sizes, under a minute')
  args = parser.parse_args()
  size_name = 'quick' if args.quick else 'full'
  memory_lines(size_name)
  time_line(SIZES[size_name], repeats=3 if args.quick else 5)
  finetune_line(args.quick)


if __name__ == '__main__':
  main()
