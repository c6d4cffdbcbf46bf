"""Multimodal training with DFLOP-balanced packed rows: the step, the host-side batcher, the run.

`main.py` reaches `run` for presets with `model.kind = 'multimodal'` (configs/multimodal.py). Each
step takes the next `train.batch_size` samples of a seeded epoch order, assigns them to one packed
row per bin (`parallel.balance`: LPT or CP-SAT over encoder and decoder cost), pads the rows to a
shared bucket shape and runs a jitted update. Every distinct bucket shape compiles once. The data
order depends on the step only, so a resumed run sees what an uninterrupted one sees; the
balancer's adaptive-correction state is saved with each checkpoint.

Without pipeline stages there is one bin per batch shard (parallel.data x parallel.fsdp). With
`parallel.stage` S > 1 the decoder's layers run as a pipeline over the 'stage' mesh axis
(`pipeline.*`), and the balancer's bins are its microbatches: M = pipeline.microbatches (0: 2S)
bins per batch shard, laid out so that microbatch m on batch shard d is bin d * M + m
(`BalancedBatches.row_bins`). With gpipe and circular the vision encoder, the embedding and the
head run outside the pipeline on the whole batch, data parallel and replicated over 'stage'; with
1f1b the first stage runs the encoder and embedding per microbatch and the last stage the head.
DFLOP's division of the stages between encoder and decoder layers is planned by
`parallel.balance.search_layout` (and simulated by benchmarks/balance.py), not executed here.
"""

import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import base
from data import lm
from data import multimodal as mm
from models.multimodal import MultimodalModel
from models.transformer import flops_per_token
from models.vision import VisionConfig
from parallel import balance, pipeline
from parallel.mesh import make_mesh
from parallel.sharding import Rules, logical_to_spec, tree_shardings, use_rules
from training import checkpoint as ckpt_lib
from training import metrics as metrics_lib
from training import pipelined
from training import state as state_lib

EMBED_INPUTS = ('images', 'tokens', 'image_slots')  # MultimodalModel.embed's arguments


def vision_config(config) -> VisionConfig:
  names = {f.name for f in dataclasses.fields(VisionConfig)}
  return VisionConfig(**{k: v for k, v in config.vision.items() if k in names})


def build(config, key: jax.Array):
  """(model, optimizer) as live nnx objects; used under `nnx.eval_shape` and inside jit."""
  model = MultimodalModel(vision_config(config), state_lib.decoder_config(config),
                          nnx.Rngs(params=key))
  model.decoder.stack_runner = state_lib.stack_runner(config)
  return model, nnx.Optimizer(model, state_lib.make_tx(config), wrt=nnx.Param)


def weighted_nll(decoder, hidden, targets, weights) -> jax.Array:
  """Per-row sums of `weights` x next-token loss from the decoder stack's outputs [B, T, d]."""
  logits = decoder.logits(decoder.final_norm(hidden))
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights, -1)


def caption_loss(model, batch, aux_coef: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Mean next-token loss over caption targets (+ auxiliary loss) and the caption token count."""
  embedded = model.embed(*(batch[k] for k in EMBED_INPUTS))
  hidden, aux = model.decoder.run_layers(embedded, batch['positions'])
  count = jnp.sum(batch['weights'])
  nll = weighted_nll(model.decoder, hidden, batch['targets'], batch['weights'])
  return jnp.sum(nll) / jnp.maximum(count, 1.0) + aux_coef * aux, count


def caption_value_and_grad(model, batch, aux_coef: float = 1.0):
  """((caption_loss, count), grads); under 1F1B the backward runs inside the pipeline schedule,
  the first stage running the vision encoder and embedding, the last the head."""
  if not pipelined.uses_1f1b(model.decoder):
    return nnx.value_and_grad(lambda m: caption_loss(m, batch, aux_coef), has_aux=True)(model)
  count = jnp.sum(batch['weights'])
  # Each caption token's share of the mean, so microbatch losses simply add up.
  shares = batch['weights'] / jnp.maximum(count, 1.0)

  def head_fn(m, hidden, head_inputs):
    nll = weighted_nll(m.decoder, hidden, *head_inputs)
    return jnp.sum(nll), nll

  stats, grads = pipelined.value_and_grad(
      model, ('decoder',), lambda m, inputs: m.embed(*inputs), head_fn,
      tuple(batch[k] for k in EMBED_INPUTS), batch['positions'],
      (batch['targets'], shares), aux_coef)
  return (stats.loss + aux_coef * stats.aux, count), grads


def make_update(graphdef, aux_coef: float = 1.0) -> Callable:
  """(state, batch) -> (state, metrics), state = nnx.state((model, optimizer))."""

  def update(state, batch):
    model, opt = nnx.merge(graphdef, state)
    (loss, count), grads = caption_value_and_grad(model, batch, aux_coef)
    opt.update(model, grads)
    return nnx.state((model, opt)), {'loss': loss, 'grad_norm': optax.global_norm(grads),
                                     'tokens': count}

  return update


def sharded_update(graphdef, state_shardings, mesh: jax.sharding.Mesh, rules: Rules,
                   aux_coef: float = 1.0) -> tuple[Callable, NamedSharding]:
  """The jitted update with state in `state_shardings` and batch rows split over the batch
  axes, run with the mesh and logical rules active; and the batch sharding."""
  rows = NamedSharding(mesh, logical_to_spec(('act_batch',), rules, dict(mesh.shape)))
  jitted = jax.jit(make_update(graphdef, aux_coef), in_shardings=(state_shardings, rows),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)

  def call(state, batch):
    with jax.set_mesh(mesh), use_rules(rules):
      return jitted(state, batch)

  return call, rows


def flop_cost_model(vision_cfg: VisionConfig, decoder_cfg, rate: float = 1e10) -> balance.CostModel:
  """Training FLOPs per image and per decoder token at one nominal FLOP/s: the relative costs the
  balancer needs, without profiling at start-up (the benchmark profiles; the run's adaptive
  correction rescales the absolute time from measured steps)."""
  tokens = vision_cfg.patches_per_side ** 2
  per_image = tokens * flops_per_token(vision_cfg.block_config(), tokens, causal=False)
  per_token = flops_per_token(decoder_cfg, decoder_cfg.max_len // 8)
  flat = lambda per_unit: balance.Throughput(np.array([1.0, 2.0]), np.full(2, rate / per_unit))
  return balance.CostModel(flat(per_image), flat(per_token))


def microbatches(config, stages: int) -> int:
  """Pipeline microbatches per step, 1 without pipeline stages (parallel.stage=1)."""
  if config.parallel.stage == 1:
    return 1
  return pipeline.PipelineConfig(stages=stages, **config.pipeline).num_microbatches


class BalancedBatches:
  """Host-side batches: step -> packed rows of that step's samples, balanced by predicted cost
  into `num_shards` x `microbatches` bins."""

  def __init__(self, source, config, num_shards: int, cost: balance.CostModel,
               tokens_per_image: int, microbatches: int = 1):
    b = config.balance
    self.source, self.cost = source, cost
    self.num_shards, self.microbatches = num_shards, microbatches
    self.num_bins = num_shards * microbatches
    self.tokens_per_image = tokens_per_image
    self.batch_size, self.seed = config.train.batch_size, config.train.seed
    self.solver, self.time_limit_s = b.solver, b.time_limit_s
    self.image_ladder = balance.ladder(b.max_images, b.ladder_growth, smallest=1, multiple=1)
    self.token_ladder = balance.ladder(b.max_tokens, b.ladder_growth)

  def indices(self, step: int) -> np.ndarray:
    """Samples of `step` (0-based): consecutive slices of a per-epoch seeded permutation."""
    n = len(self.source)
    positions = step * self.batch_size + np.arange(self.batch_size)
    epochs = positions // n
    perms = {e: np.random.default_rng([self.seed, int(e)]).permutation(n) for e in set(epochs)}
    return np.array([perms[e][p % n] for e, p in zip(epochs, positions)])

  def __call__(self, step: int) -> tuple[dict, dict]:
    examples = [self.source[int(i)] for i in self.indices(step)]
    tiles, tokens = mm.sample_sizes(examples, self.tokens_per_image)
    packing, solver = balance.balance(self.cost, tiles, tokens, self.num_bins, self.image_ladder,
                                      self.token_ladder, self.solver, self.time_limit_s)
    # Oversized samples add bins; round up to whole rows per shard and microbatch with empty rows.
    rows = -(-packing.num_bins // self.num_bins) * self.num_bins
    groups = [[examples[i] for i in np.flatnonzero(packing.bins == j)] for j in self.row_bins(rows)]
    shape = packing.shapes.max(0)
    batch = mm.pack_rows(groups, int(shape[0]), int(shape[1]), self.tokens_per_image)
    info = {'real_tokens': int(tokens.sum()), 'shape': (int(shape[0]), int(shape[1])),
            'rows': rows, 'solver': solver}
    return batch, info

  def row_bins(self, rows: int) -> np.ndarray:
    """The bin packed into each of `rows` rows.

    Rows are block-sharded over the batch shards, and `pipeline.split_microbatches` puts row r in
    microbatch r % M. The balanced bins 0 .. num_bins - 1 therefore take the first M rows of each
    shard's block (bin d * M + m: shard d, microbatch m); extra bins fill the shards' later rows.
    """
    per_slot = (self.num_shards, self.microbatches)
    return np.arange(rows).reshape(-1, *per_slot).swapaxes(0, 1).reshape(-1)


def run(config, workdir: str, devices=None) -> dict:
  """Trains the multimodal preset to `train.steps`, resuming from the latest checkpoint."""
  from training.loop import prepare_workdir  # the loop dispatches here: import on use

  prepare_workdir(workdir)
  devices = list(devices if devices is not None else jax.devices())
  sizes = base.validate(config, len(devices))
  mesh = make_mesh(sizes, devices)
  rules = tuple(tuple(r) for r in config.parallel.rules)
  abstract = nnx.eval_shape(lambda: build(config, jax.random.key(0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = tree_shardings(nnx.get_partition_spec(abstract_state), mesh, rules)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_state, shardings)
  update, rows = sharded_update(graphdef, shardings, mesh, rules, config.optim.aux_loss_coef)
  replicated = NamedSharding(mesh, P())
  correction = {'ratio': jax.ShapeDtypeStruct((2,), jnp.float32, sharding=replicated),
                'count': jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                     config.checkpoint.max_to_keep, config.checkpoint.async_save)

  restored = checkpoints.restore(abstract_state, correction, config.to_dict())
  if restored is None:
    key = jax.random.key(config.train.seed)
    state = jax.jit(lambda k: nnx.split(build(config, k))[1], out_shardings=shardings)(key)
    step, fix = 0, balance.correction_init()
  else:
    step, state = restored.step, restored.state
    fix = balance.Correction(np.asarray(restored.curriculum['ratio'], np.float64),
                             int(restored.curriculum['count']))
  vision_cfg, decoder_cfg = vision_config(config), state_lib.decoder_config(config)
  cost = flop_cost_model(vision_cfg, decoder_cfg)
  source = mm.load(config.data.data_dir or lm.default_data_dir(), config.balance.workload)
  batches = BalancedBatches(source, config, sizes['data'] * sizes['fsdp'], cost,
                            vision_cfg.tokens_per_image, microbatches(config, sizes['stage']))
  writer = metrics_lib.MetricsWriter(workdir)
  last, window = {}, []
  while step < config.train.steps:
    batch, info = batches(step)
    begin = time.perf_counter()
    state, metrics = update(state, jax.device_put(batch, rows))
    metrics = jax.device_get(metrics)  # rows change shape every step: the host waits anyway
    seconds = time.perf_counter() - begin
    predicted = float(balance.corrected(cost, fix).times(*info['shape']).sum())
    fix = balance.correction_update(fix, cost.times(*info['shape']).sum(), seconds,
                                    config.balance.correction_decay)
    step += 1
    waste = 1 - info['real_tokens'] / (info['rows'] * info['shape'][1])
    window.append({**{k: float(v) for k, v in metrics.items()}, 'seconds': seconds,
                   'predicted': predicted, 'waste': waste, 'real_tokens': info['real_tokens']})
    if step % config.train.log_every == 0 or step == config.train.steps:
      last = _log(writer, step, window, fix)
      window = []
    if step % config.checkpoint.every == 0 or step == config.train.steps:
      checkpoints.save(step, state, {'ratio': jnp.asarray(fix.ratio, jnp.float32),
                                     'count': jnp.int32(fix.count)},
                       {'cursor': step * config.train.batch_size}, config.to_dict())
  writer.close()
  checkpoints.close()
  metrics_lib.plot_losses(writer.path, os.path.join(workdir, 'loss.png'))
  result = {**last, 'step': step}
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  return result


def _log(writer, step: int, window: list[dict], fix: balance.Correction) -> dict:
  seconds = sum(w['seconds'] for w in window)
  scalars = {
      'loss': float(np.mean([w['loss'] for w in window])),
      'grad_norm': float(np.mean([w['grad_norm'] for w in window])),
      'perf/step_time_s': seconds / len(window),
      'perf/tokens_per_s': sum(w['real_tokens'] for w in window) / seconds,
      'balance/padding_waste': float(np.mean([w['waste'] for w in window])),
      'balance/prediction_error': float(np.mean([abs(w['predicted'] / w['seconds'] - 1)
                                                 for w in window])),
      'balance/correction': float(fix.ratio.mean()),
  }
  writer.write(step, scalars)
  return scalars
