"""Pipeline stages over the `stage` mesh axis: GPipe, circular and 1F1B schedules.

Each device runs its own program inside `jax.shard_map`, manual over 'stage' and the batch axes
(`batch_axes`, default 'data'), and hands activations to its neighbour with `ppermute`. The
parameters are the same stacked layer state the sequential scan consumes: a leading layers axis of
L = S * R * K layers, laid out so that stage s runs layers (r * S + s) * K ... + K - 1 on its r-th
repeat. The module knows layers and stages, not models or losses: the caller passes
`layer_fn(layer_params, x, extras) -> (x, aux)` and, for training, `embed_fn(params, inputs) -> x`
and `head_fn(params, y, head_inputs) -> (loss, stats)` for one microbatch, `params` being what the
model holds around its stack.

Schedules (S stages, M microbatches, R repeats), in ticks of one stage-step each:
  gpipe     forward in M + S - 1 ticks; the backward is JAX's transpose of the same loop, so every
            tick's stage input is kept for it: activation memory grows with M.
  circular  GPipe with R passes over the stages (R * M + S - 1 ticks); the bubble shrinks to
            (S - 1) / (R * M + S - 1) at R times the neighbour traffic.
  1f1b      forward and backward interleaved by hand in 2 * (M + S - 1) ticks: stage s runs the
            forward of microbatch m at tick s + 2m and its backward at tick 2S - 1 - s + 2m, so it
            holds at most S - s stage inputs at once whatever M is. The backward recomputes the
            stage forward from the stashed input (`jax.vjp`); the first stage embeds each
            microbatch and finishes its embedding backward, the last stage applies the head, and
            parameter gradients accumulate on their own stage. Nothing of size M x activation is
            kept: only the inputs (e.g. tokens) and the head's per-example stats are per batch.

A tick whose stage has no microbatch to work on is a bubble; `lax.cond` skips its compute. With
`skip_bubbles=False` (gpipe/circular) bubble ticks compute on zeros instead, as GSPMD pipelines do:
no conditional on the device (XLA:GPU reads a cond's predicate back to the host), and on fake CPU
devices the time difference between the two measures the bubble (benchmarks/pipeline.py).
`pollute_bubbles` fills bubble state with NaN (praxis' polluting_bubbles_with_nan) so tests can
prove bubbles never reach outputs or gradients.

Gradients of parameters accumulate per device and are reduced over the batch axes once, outside
the tick loop, so the skipped branches hold no collectives over the manual axes. Mesh axes left to
GSPMD inside a stage (fsdp, tensor, expert) put collectives inside those branches, which is fine
where all devices of a stage take the same branch (GPU, TPU) but hangs the CPU runtime, whose
collectives wait for every device: on fake CPU devices use stage x data meshes.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

SCHEDULES = ('gpipe', 'circular', '1f1b')
AXIS = 'stage'

LayerFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, jax.Array]]
EmbedFn = Callable[[Any, Any], jax.Array]
HeadFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """`stages` is config `parallel.stage` (0: the active mesh's, see `for_mesh`); the rest is config
  `pipeline.*`."""
  stages: int
  schedule: str = 'gpipe'
  microbatches: int = 0  # 0 means 2 * stages (MaxText's default)
  repeats: int = 1
  remat: bool = True  # gpipe/circular: keep only each tick's stage input for the backward
  pollute_bubbles: bool = False
  skip_bubbles: bool = True  # 1f1b always skips: its ticks choose between forward and backward
  batch_axes: tuple[str, ...] = ('data',)  # mesh axes that split the batch

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f'pipeline.schedule={self.schedule!r}; choose one of {SCHEDULES}')
    if self.stages < 0:
      raise ValueError(f'parallel.stage must be >= 1 (0: from the mesh), got {self.stages}')
    if self.microbatches < 0:
      raise ValueError(f'pipeline.microbatches must be >= 0 (0: 2 x stages), got '
                       f'{self.microbatches}')
    if self.repeats < 1:
      raise ValueError(f'pipeline.repeats must be >= 1, got {self.repeats}')
    if self.repeats > 1 and self.schedule != 'circular':
      raise ValueError(f'pipeline.repeats={self.repeats} needs pipeline.schedule="circular", '
                       f'got {self.schedule!r}')
    if not self.stages:
      return  # the checks below wait for `for_mesh`
    if self.schedule == 'circular' and self.num_microbatches < self.stages:
      raise ValueError(f'pipeline.microbatches={self.num_microbatches} must be >= parallel.stage='
                       f'{self.stages} for the circular schedule (a microbatch re-enters stage 0 '
                       'M ticks after it left)')
    if self.schedule == '1f1b' and self.num_microbatches < self.stages:
      raise ValueError(f'pipeline.microbatches={self.num_microbatches} must be >= parallel.stage='
                       f'{self.stages} for the 1f1b schedule')

  def for_mesh(self) -> 'PipelineConfig':
    """This config with `stages` taken from the active mesh when it was left 0."""
    if self.stages:
      return self
    return dataclasses.replace(self, stages=jax.sharding.get_abstract_mesh().shape.get(AXIS, 1))

  @property
  def num_microbatches(self) -> int:
    return self.microbatches or 2 * self.stages

  @property
  def ticks(self) -> int:
    """Stage-steps per device: forward ones for gpipe/circular, forward + backward for 1f1b."""
    passes = self.repeats * self.num_microbatches + self.stages - 1
    return 2 * passes if self.schedule == '1f1b' else passes

  @property
  def analytic_bubble(self) -> float:
    return (self.stages - 1) / (self.repeats * self.num_microbatches + self.stages - 1)

  def check(self, num_layers: int, batch_size: int) -> None:
    """Raises when the stacked layers or the batch do not split into this pipeline."""
    per_pass = self.stages * self.repeats
    if num_layers % per_pass:
      raise ValueError(f'model.num_layers={num_layers} is not divisible by parallel.stage='
                       f'{self.stages} x pipeline.repeats={self.repeats}')
    if batch_size % self.num_microbatches:
      raise ValueError(f'batch size {batch_size} is not divisible by pipeline.microbatches='
                       f'{self.num_microbatches}')
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get(AXIS) != self.stages:
      found = None if mesh.empty else mesh.shape.get(AXIS)
      raise ValueError(f'parallel.stage={self.stages} needs an active mesh (jax.set_mesh) whose '
                       f"'{AXIS}' axis has that size; found {found}")
    shards = math.prod(mesh.shape.get(a, 1) for a in self.batch_axes)
    if (batch_size // self.num_microbatches) % shards:
      raise ValueError(f'microbatches of {batch_size // self.num_microbatches} examples (batch '
                       f'{batch_size} / pipeline.microbatches={self.num_microbatches}) do not '
                       f'split over the {shards} devices of batch axes {self.batch_axes}')


class Stats(NamedTuple):
  """What one pipelined training step returns besides gradients."""
  loss: jax.Array  # sum of head losses over microbatches
  aux: jax.Array  # layer auxiliary losses, summed over layers, averaged over microbatches
  head_stats: Any  # head_fn's per-example stats, back in batch order
  useful_ticks: jax.Array  # [S] ticks each stage spent on a microbatch (the rest were bubbles)


# Microbatch m holds examples m, m + M, m + 2M, ...: a block-sharded batch axis stays sharded on the
# microbatch's own batch axis instead of landing on the microbatch index.
def split_microbatches(tree, m: int):
  return jax.tree.map(lambda a: a.reshape(a.shape[0] // m, m, *a.shape[1:]).swapaxes(0, 1), tree)


def merge_microbatches(tree):
  return jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(-1, *a.shape[2:]), tree)


def to_stages(stacked, cfg: PipelineConfig):
  """[L, ...] layer leaves -> [S, R, K, ...]: stage s, repeat r holds layers (r*S + s)*K + k."""
  s, r = cfg.stages, cfg.repeats
  return jax.tree.map(
      lambda a: a.reshape(r, s, a.shape[0] // (r * s), *a.shape[1:]).swapaxes(0, 1), stacked)


def from_stages(staged):
  return jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(-1, *a.shape[3:]), staged)


def _stage_fn(layer_fn: LayerFn):
  """K layers of one stage in sequence, aux summed, like the sequential scan."""

  def run(stage_params, x, extras):

    def body(carry, layer_params):
      x, aux = carry
      x, layer_aux = layer_fn(layer_params, x, extras)
      return (x, aux + layer_aux), None

    (x, aux), _ = jax.lax.scan(body, (x, jnp.zeros((), jnp.float32)), stage_params)
    return x, aux

  return run


def _blank(like, cfg: PipelineConfig) -> jax.Array:
  """Bubble state shaped like `like` (an array or a ShapeDtypeStruct)."""
  return jnp.full(like.shape, jnp.nan if cfg.pollute_bubbles else 0, like.dtype)


def _varying(tree, axes):
  """Marks values as differing across `axes` (scan carries and cond branches must agree on it).

  Casting a parameter before the loop also puts the transpose's reduction over those axes there,
  once, instead of inside the per-tick branches.
  """

  def cast(a):
    missing = tuple(ax for ax in axes if ax not in jax.typeof(a).manual_axis_type.varying)
    return jax.lax.pcast(a, missing, to='varying') if missing else a

  return jax.tree.map(cast, tree)


def _shift(x, stages: int, step: int):
  return jax.lax.ppermute(x, AXIS, [(i, (i + step) % stages) for i in range(stages)])


def _per_stage(x):
  """Gives a per-device value a leading stage axis, so it leaves shard_map as [S, ...]."""
  return jax.tree.map(lambda a: a[None], x)


class _Specs(NamedTuple):
  """PartitionSpecs of the manual region: stage-split params, replicated head, split batches."""
  manual: tuple[str, ...]
  batch_axes: tuple[str, ...]
  staged: jax.P = jax.P(AXIS)
  replicated: jax.P = jax.P()

  @property
  def microbatched(self) -> jax.P:  # [M, mb, ...]
    return jax.P(None, self.batch_axes)

  @property
  def stage_microbatched(self) -> jax.P:  # [S, M, mb, ...]
    return jax.P(AXIS, None, self.batch_axes)


def _specs(cfg: PipelineConfig) -> _Specs:
  shape = jax.sharding.get_abstract_mesh().shape
  batch_axes = tuple(a for a in cfg.batch_axes if a in shape)
  return _Specs(manual=(AXIS, *batch_axes), batch_axes=batch_axes)


def _forward_ticks(layer_fn: LayerFn, cfg: PipelineConfig, specs: _Specs, staged, xs, extras):
  """The gpipe / circular program of one device. xs, extras: [M, mb, ...] microbatches.

  Every device keeps a buffer of M microbatches: stage 0 reads its inputs from it, and writes what
  comes back around the ring from the last stage for the next repeat; the last stage writes its
  outputs there. Microbatch m's repeat r runs on stage s at tick r*M + m + s.
  """
  s_count, m_count, r_count = cfg.stages, cfg.num_microbatches, cfg.repeats
  stage = jax.lax.axis_index(AXIS)
  params = _varying(jax.tree.map(lambda a: a[0], staged), specs.manual)  # [R, K, ...]
  run_stage = _stage_fn(layer_fn)

  def step(params, extras, work, x):
    """One tick; indexing params and extras inside the remat keeps only x per tick for backward."""
    repeat, mb, valid = work
    run = lambda x: _varying(
        run_stage(jax.tree.map(lambda a: a[repeat], params), x, extras[mb]), specs.manual)
    if not cfg.skip_bubbles:
      # Zeros, not the bubble's state: a NaN input would give NaN * 0 in the backward.
      return run(jnp.where(valid, x, 0))
    skip = lambda x: _varying((x, jnp.zeros((), jnp.float32)), specs.manual)
    return jax.lax.cond(valid, run, skip, x)

  if cfg.remat:
    step = jax.checkpoint(step)

  def tick(carry, t):
    received, buf, aux, useful = carry
    work_index = t - stage
    valid = (work_index >= 0) & (work_index < r_count * m_count)
    repeat = jnp.clip(work_index // m_count, 0, r_count - 1)
    mb = work_index % m_count
    x = jnp.where(stage == 0, buf[t % m_count], received)
    out, layer_aux = step(params, extras, (repeat, mb, valid), x)
    received = _shift(out, s_count, 1)
    # Stage 0 files what the last stage finished (for its next repeat); the last stage files its
    # own output. Both are microbatch t - (S - 1), once the first one has arrived.
    done = (t - (s_count - 1)) % m_count
    arrived = jnp.where(stage == 0, received, out)
    buf = buf.at[done].set(jnp.where(t >= s_count - 1, arrived, buf[done]))
    return (received, buf, aux + jnp.where(valid, layer_aux, 0), useful + valid), None

  buf = jnp.where(stage == 0, xs, _blank(xs, cfg))
  init = (_blank(xs[0], cfg), buf, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
  (_, buf, aux, useful), _ = jax.lax.scan(tick, _varying(init, specs.manual), jnp.arange(cfg.ticks))
  aux = jax.lax.pmean(aux, specs.batch_axes)
  useful = jax.lax.pmax(useful, specs.batch_axes)  # the same on every batch shard
  return _per_stage((buf, aux, useful))


def forward(layer_fn: LayerFn, cfg: PipelineConfig, stacked, x, extras):
  """Runs the L stacked layers on x [B, ...] as a gpipe/circular pipeline; differentiable.

  Returns (y, aux, useful_ticks): aux is summed over layers and averaged over microbatches.
  """
  cfg = cfg.for_mesh()
  if cfg.schedule == '1f1b':
    raise ValueError('pipeline.schedule="1f1b" interleaves the backward: use loss_and_grads')
  cfg.check(jax.tree.leaves(stacked)[0].shape[0], x.shape[0])
  m, specs = cfg.num_microbatches, _specs(cfg)
  program = jax.shard_map(
      functools.partial(_forward_ticks, layer_fn, cfg, specs),
      in_specs=(specs.staged, specs.microbatched, specs.microbatched),
      out_specs=(specs.stage_microbatched, specs.staged, specs.staged),
      axis_names=set(specs.manual))
  buf, aux, useful = program(to_stages(stacked, cfg), split_microbatches(x, m),
                             split_microbatches(extras, m))
  return merge_microbatches(buf[-1]), jnp.sum(aux) / m, useful


def _one_f_one_b_ticks(layer_fn: LayerFn, embed_fn: EmbedFn, head_fn: HeadFn, cfg: PipelineConfig,
                       specs: _Specs, aux_weight: float, staged, params, inputs, extras,
                       head_inputs):
  """The 1F1B program of one device: at tick t stage s runs the forward of microbatch (t - s) / 2
  when t - s is even, else the backward of microbatch (t - 2S + 1 + s) / 2; neighbours always run
  opposite kinds, so activations flow up and cotangents down one stage per tick. Stage 0 embeds a
  microbatch in its forward and finishes the embedding's backward in its own, so no per-microbatch
  activation or cotangent outlives its microbatch's backward."""
  s_count, m_count = cfg.stages, cfg.num_microbatches
  stage = jax.lax.axis_index(AXIS)
  is_first, is_last = stage == 0, stage == s_count - 1
  # Per-device copies: gradients accumulate locally and are summed over batch shards once at the
  # end (differentiating a replicated value would psum its cotangent inside the branch instead).
  layers = _varying(jax.tree.map(lambda a: a[0, 0], staged), specs.manual)  # [K, ...]
  params = _varying(params, specs.manual)
  run_stage = _stage_fn(layer_fn)
  microbatch = lambda tree, mb: jax.tree.map(lambda a: a[mb], tree)
  embed = lambda params, mb: embed_fn(params, microbatch(inputs, mb))
  blank = _blank(jax.eval_shape(embed, params, 0), cfg)
  mb_stats = jax.eval_shape(lambda: head_fn(params, blank, microbatch(head_inputs, 0))[1])
  num_shards = jax.lax.psum(1, specs.batch_axes)
  aux_cotangent = jnp.asarray(aux_weight / m_count, jnp.float32) / num_shards
  zeros = lambda t: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), t)

  class Acc(NamedTuple):
    grads: Any  # of this stage's layers
    param_grads: Any  # of `params`: the embedding's on stage 0, the head's on the last stage
    stats: Any  # [M, mb, ...] head stats (last stage)
    loss: jax.Array
    aux: jax.Array

  def forward_step(acc, mb, stashed, from_below, from_above):
    del stashed, from_above
    x = jax.lax.cond(is_first, lambda: _varying(embed(params, mb), specs.manual),
                     lambda: from_below)
    y, aux = run_stage(layers, x, extras[mb])
    return y, x, acc._replace(aux=acc.aux + aux)

  def backward_step(acc, mb, stashed, from_below, from_above):
    del from_below
    (y, _), pullback = jax.vjp(lambda p, x: run_stage(p, x, extras[mb]), layers, stashed)

    def head_grad():
      (loss, stats), (d_head, dy) = jax.value_and_grad(head_fn, argnums=(0, 1), has_aux=True)(
          params, y, microbatch(head_inputs, mb))
      return loss, stats, d_head, dy

    def passed_down():
      return _varying((jnp.zeros((), jnp.float32), zeros(mb_stats), zeros(params), from_above),
                      specs.manual)

    loss, stats, d_head, dy = jax.lax.cond(is_last, head_grad, passed_down)
    d_layers, dx = pullback((dy, aux_cotangent))
    embed_grad = lambda: _varying(jax.vjp(lambda p: embed(p, mb), params)[1](dx)[0], specs.manual)
    d_embed = jax.lax.cond(is_first, embed_grad, lambda: _varying(zeros(params), specs.manual))
    add = lambda *trees: jax.tree.map(lambda *a: sum(a), *trees)
    return dx, stashed, acc._replace(
        grads=add(acc.grads, d_layers), param_grads=add(acc.param_grads, d_head, d_embed),
        stats=jax.tree.map(lambda buf, s: buf.at[mb].set(s), acc.stats, stats),
        loss=acc.loss + loss)

  def idle(acc, mb, stashed, from_below, from_above):
    del mb, from_above
    return from_below, stashed, acc

  def tick(carry, t):
    from_below, from_above, stash, acc, useful = carry
    fwd_index, bwd_index = t - stage, t - (2 * s_count - 1 - stage)
    is_fwd = fwd_index % 2 == 0
    index = jnp.where(is_fwd, fwd_index, bwd_index)
    valid = (index >= 0) & (index < 2 * m_count)
    op = jnp.where(valid, jnp.where(is_fwd, 1, 2), 0)
    # Stage inputs wait in stash slot m % S for their backward. The stash stays out of the
    # branches (they return what the slot should hold): a carried buffer updated inside a branch
    # is copied by XLA, S more stage inputs of temporary memory.
    mb = index // 2
    slot = mb % s_count
    out, to_stash, acc = jax.lax.switch(op, (idle, forward_step, backward_step), acc, mb,
                                        stash[slot], from_below, from_above)
    stash = stash.at[slot].set(to_stash)
    # Every stage sends `out` both ways; a receiver's next tick needs exactly one of the two.
    return (_shift(out, s_count, 1), _shift(out, s_count, -1), stash, acc, useful + valid), None

  stats = jax.tree.map(lambda s: jnp.zeros((m_count, *s.shape), s.dtype), mb_stats)
  acc = Acc(grads=zeros(layers), param_grads=zeros(params), stats=stats,
            loss=jnp.zeros((), jnp.float32), aux=jnp.zeros((), jnp.float32))
  init = _varying((blank, blank, jnp.stack([blank] * s_count), acc, jnp.zeros((), jnp.int32)),
                  specs.manual)
  (_, _, _, acc, useful), _ = jax.lax.scan(tick, init, jnp.arange(cfg.ticks))
  total = lambda t: jax.lax.psum(t, specs.batch_axes)
  grads = jax.tree.map(lambda g: g[None, None], total(acc.grads))  # [S, R=1, K, ...] outside
  # Stage 0 holds the embedding's share, the last stage the head's: their sum is replicated.
  param_grads = jax.lax.psum(acc.param_grads, specs.manual)
  return (grads, param_grads, _per_stage(acc.stats), _per_stage(total(acc.loss)),
          _per_stage(jax.lax.pmean(acc.aux, specs.batch_axes)),
          _per_stage(jax.lax.pmax(useful, specs.batch_axes)))


def loss_and_grads(layer_fn: LayerFn, embed_fn: EmbedFn, head_fn: HeadFn, cfg: PipelineConfig,
                   stacked, params, inputs, extras, head_inputs, aux_weight: float = 0.0):
  """Loss and gradients of `sum_m head_fn(params, stack(embed_fn(params, inputs_m)),
  head_inputs_m)[0] + aux_weight * aux` over the M microbatches, with any schedule.

  `params` are what embed_fn and head_fn read (e.g. the model around its stack), inputs [B, ...]
  what embed_fn turns into the stack input (e.g. tokens), extras [B, ...] per-example side inputs
  every layer sees (e.g. positions), head_inputs [B, ...] what the head needs (e.g. targets); each
  may be a pytree. Under 1F1B, embed_fn and head_fn see a microbatch (its shard along
  `batch_axes`), on the first and the last stage; head_fn returns that part's additive share of
  the loss (e.g. a sum of token losses times weights normalized over the whole batch) and
  per-example stats. Returns (Stats, (stacked_grads, params_grads)).
  """
  cfg = cfg.for_mesh()
  if cfg.schedule != '1f1b':
    return _autodiff_loss_and_grads(layer_fn, embed_fn, head_fn, cfg, stacked, params, inputs,
                                    extras, head_inputs, aux_weight)
  cfg.check(jax.tree.leaves(stacked)[0].shape[0], jax.tree.leaves(inputs)[0].shape[0])
  m, specs = cfg.num_microbatches, _specs(cfg)
  program = jax.shard_map(
      functools.partial(_one_f_one_b_ticks, layer_fn, embed_fn, head_fn, cfg, specs, aux_weight),
      in_specs=(specs.staged, specs.replicated, specs.microbatched, specs.microbatched,
                specs.microbatched),
      out_specs=(specs.staged, specs.replicated, specs.stage_microbatched, specs.staged,
                 specs.staged, specs.staged),
      axis_names=set(specs.manual))
  grads, param_grads, stats, loss, aux, useful = program(
      to_stages(stacked, cfg), params, split_microbatches(inputs, m),
      split_microbatches(extras, m), split_microbatches(head_inputs, m))
  last = lambda t: jax.tree.map(lambda a: a[-1], t)
  result = Stats(loss=loss[-1], aux=jnp.sum(aux) / m, head_stats=merge_microbatches(last(stats)),
                 useful_ticks=useful)
  return result, (from_stages(grads), param_grads)


def _autodiff_loss_and_grads(layer_fn, embed_fn, head_fn, cfg, stacked, params, inputs, extras,
                             head_inputs, aux_weight):
  """gpipe / circular: JAX differentiates the embedding and the forward pipeline of the whole
  batch; the head runs per microbatch."""
  m = cfg.num_microbatches

  def objective(stacked, params):
    y, aux, useful = forward(layer_fn, cfg, stacked, embed_fn(params, inputs), extras)
    losses, stats = jax.vmap(head_fn, in_axes=(None, 0, 0))(
        params, split_microbatches(y, m), split_microbatches(head_inputs, m))
    loss = jnp.sum(losses)
    return loss + aux_weight * aux, Stats(loss, aux, merge_microbatches(stats), useful)

  grads, result = jax.grad(objective, argnums=(0, 1), has_aux=True)(stacked, params)
  return result, grads


def nnx_layer_fn(graphdef) -> LayerFn:
  """Adapts one layer of an nnx stack (`nnx.split` of a stacked module) to `layer_fn`."""

  def apply(layer_state, x, extras):
    out = nnx.merge(graphdef, layer_state)(x, extras)
    return out if isinstance(out, tuple) else (out, jnp.zeros((), jnp.float32))

  return apply


@dataclasses.dataclass(frozen=True)
class StackRunner:
  """A `Decoder.stack_runner` that runs the stacked layers as a pipeline. Hashable, so it can sit
  in an nnx graphdef. With the 1f1b schedule it runs gpipe's forward (evaluation); training steps
  go through `loss_and_grads` instead."""
  cfg: PipelineConfig

  def __call__(self, graphdef, stacked_state, x, positions):
    cfg = self.cfg.for_mesh()
    if cfg.schedule == '1f1b':
      cfg = dataclasses.replace(cfg, schedule='gpipe')
    y, aux, _ = forward(nnx_layer_fn(graphdef), cfg, stacked_state, x, positions)
    return y, aux


def batch_axes(rules) -> tuple[str, ...]:
  """The mesh axes of the first 'act_batch' rule: where a pipeline's microbatches are split."""
  for name, axes in rules:
    if name == 'act_batch':
      return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,) if axes else ()
  return ()
