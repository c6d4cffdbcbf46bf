"""The training loop: set-up, resume, jitted steps between log points, eval, checkpoints.

Between log points the loop only dispatches steps (`jax.transfer_guard("disallow")` holds there in
pool mode); metrics are fetched from the device once per log interval.
"""

import contextlib
import json
import os
import signal
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from configs import base
from data import pool as pool_lib
from data.stream import RecordStream
from data.text import PAD
from models.transformer import flops_per_token
from parallel.mesh import make_mesh
from parallel.sharding import use_rules
from training import checkpoint as ckpt_lib
from training import curricula, metrics as metrics_lib, state as state_lib, step as step_lib
from training import planning


def prepare_workdir(workdir: str):
  if os.path.isfile(workdir):
    raise ValueError(f'workdir {workdir!r} is a file, not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} is not writable: {e.strerror}') from e


class _StopSignal:
  """SIGTERM (preemption) asks the loop to save and exit at the next step boundary."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _in_mesh(fn, mesh, rules):
  """Calls `fn` (and traces it, on first call) with the mesh and logical rules active."""

  def call(*args):
    with jax.set_mesh(mesh), use_rules(rules):
      return fn(*args)

  return call


def _next_boundary(step: int, total: int, *periods: int) -> int:
  return min([total] + [(step // p + 1) * p for p in periods])


def _train_pool(config, data_cfg):
  if data_cfg.mode == 'pool':
    return pool_lib.load(data_cfg, 'train'), None
  stream = RecordStream(data_cfg, 'train')
  # The curriculum needs the metadata only; the rows stay in the ArrayRecord files.
  meta = pool_lib.from_tokens(np.zeros((len(stream), 0), np.int32), stream.source)
  return meta, stream


class Trainer:
  """Holds what one run needs; `run()` trains to `train.steps` and returns the final metrics."""

  def __init__(self, config, workdir: str, devices=None):
    prepare_workdir(workdir)
    self.config, self.workdir = config, workdir
    devices = list(devices if devices is not None else jax.devices())
    sizes = base.validate(config, len(devices))
    self.mesh = make_mesh(sizes, devices)
    self.rules = tuple(tuple(r) for r in config.parallel.rules)
    self.pool, self.stream = _train_pool(config, config.data)
    self.eval_pool = pool_lib.load(config.data, 'validation')
    self.curriculum = curricula.build(config, self.pool)
    self.graphdef, abstract, self.shardings = state_lib.abstract_state(config, self.mesh,
                                                                       self.rules)
    self.planner = planning.make_planner(config, self.graphdef, self.pool, self.stream,
                                         self.eval_pool, self.mesh, self.rules)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = step_lib.batch_sharding(self.mesh, self.rules)
    key = jax.random.key(config.train.seed)
    self.init_key, self.curriculum_key = jax.random.split(key)
    abstract_c = jax.eval_shape(self.curriculum.init, self.curriculum_key)
    self.c_shardings = jax.tree.map(lambda _: self.replicated, abstract_c)
    self.abstract_c = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract_c)
    self.abstract = abstract
    self.checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                            config.checkpoint.max_to_keep,
                                            config.checkpoint.async_save)
    self._compile_steps()

  def _compile_steps(self):
    aux = self.config.optim.aux_loss_coef
    m, r = self.mesh, self.rules
    sh, csh = self.shardings, self.c_shardings
    if self.stream is None:
      fn = step_lib.jit_pool_step(self.graphdef, self.curriculum, aux, sh, csh, self.pool, m)
    else:
      fn = jax.jit(step_lib.make_stream_step(self.graphdef, self.curriculum, aux),
                   in_shardings=(sh, csh, self.replicated, self.batch_sharding),
                   out_shardings=(sh, csh, self.replicated, self.replicated),
                   donate_argnums=(0, 1))
    self.train_step = _in_mesh(fn, m, r)
    self.eval_step = _in_mesh(jax.jit(step_lib.make_eval_step(self.graphdef),
                                      in_shardings=(sh, self.batch_sharding)), m, r)
    self.first_indices = _in_mesh(jax.jit(self.curriculum.next_batch, in_shardings=(csh,),
                                          out_shardings=(self.replicated, csh)), m, r)

  # ----------------------------------------------------------------------------- state

  def initial_state(self):
    """(step, state, cstate, data item) from the latest readable checkpoint, or fresh."""
    restored = self.checkpoints.restore(self.abstract, self.abstract_c, self.config.to_dict())
    if restored is None:
      _, state, _ = state_lib.init_state(self.config, self.mesh, self.rules, self.init_key)
      cstate = jax.jit(self.curriculum.init, out_shardings=self.c_shardings)(self.curriculum_key)
      return 0, state, cstate, {}
    logging.info('resuming from step %d', restored.step)
    return restored.step, restored.state, restored.curriculum, restored.data

  def save(self, step, state, cstate, next_indices):
    data = {'mode': self.config.data.mode}
    if next_indices is not None:
      data['next_indices'] = np.asarray(next_indices).tolist()
    self.checkpoints.save(step, state, cstate, data, self.config.to_dict())

  # ----------------------------------------------------------------------------- eval

  def evaluate(self, state, max_batches: int = 0) -> float:
    """Mean NLL per byte over the held-out split (its first `max_batches` batches if > 0)."""
    tokens = np.asarray(self.eval_pool.tokens)
    b = self.config.eval.batch_size
    n = len(tokens) if max_batches <= 0 else min(len(tokens), max_batches * b)
    padded = np.full((-(-n // b) * b, tokens.shape[1]), PAD, np.int32)
    padded[:n] = tokens[:n]
    total = count = 0.0
    for i in range(0, len(padded), b):
      # Fetching each batch's sums keeps one eval program in flight: independent multi-device
      # programs dispatched together can deadlock in the CPU runtime's collectives.
      s, c = self.eval_step(state, jax.device_put(padded[i:i + b], self.batch_sharding))
      total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)

  # ----------------------------------------------------------------------------- loop

  def run(self) -> dict:
    c = self.config
    total = c.train.steps
    step, state, cstate, data = self.initial_state()
    if self.planner is not None and step == 0:  # a resumed run keeps its checkpointed plan
      cstate = self.planner(state, cstate, step)
    pool = None if self.stream is not None else jax.device_put(
        self.pool, jax.tree.map(lambda _: self.replicated, self.pool))
    next_idx = None
    if self.stream is not None:
      if 'next_indices' in data:
        next_idx = np.asarray(data['next_indices'], np.int32)
      else:
        first, cstate = self.first_indices(cstate)
        next_idx = np.asarray(jax.device_get(first))
    model_cfg = state_lib.decoder_config(c)
    fpt = flops_per_token(model_cfg, c.data.seq_len)
    peak, peak_source = metrics_lib.peak_flops(c.train.peak_flops, self.mesh.devices.ravel())
    tokens_per_step = c.train.batch_size * c.data.seq_len
    writer = metrics_lib.MetricsWriter(self.workdir)
    bar = tqdm(total=total, initial=step, disable=not c.train.progress, unit='step',
               dynamic_ncols=True)
    logging.info('%d parameters, %.3g FLOP/token, peak %.3g FLOP/s (%s)',
                 state_lib.param_count(state), fpt, peak, peak_source)
    pending, last_time, last = [], time.perf_counter(), {}
    preempted = False
    with _StopSignal() as stop:
      while step < total and not preempted:
        end = _next_boundary(step, total, c.train.log_every, c.checkpoint.every, c.eval.every,
                             *([c.curriculum.replan_every] if self.planner is not None
                               and c.curriculum.replan_every else []))
        guard = jax.transfer_guard('disallow') if self.stream is None else contextlib.nullcontext()
        with guard:
          while step < end and not stop.requested:
            if self.stream is None:
              state, cstate, m = self.train_step(state, cstate, pool)
            else:
              batch = jax.device_put(self.stream.read(next_idx)['tokens'], self.batch_sharding)
              idx = jax.device_put(next_idx, self.replicated)
              state, cstate, m, nxt = self.train_step(state, cstate, idx, batch)
              next_idx = np.asarray(jax.device_get(nxt))
            pending.append(m)
            step += 1
            bar.update(1)
        preempted = stop.requested
        if self.planner is not None and self.planner.due(step) and step < total:
          cstate = self.planner(state, cstate, step)
        if pending:
          jax.block_until_ready(pending[-1])  # time the steps, not the eval or save below
        elapsed = time.perf_counter() - last_time
        evaluating = not preempted and (step % c.eval.every == 0 or step == total)
        extra = {}
        if evaluating:  # the full held-out split at the end, a fixed slice of it before
          extra['eval/loss'] = self.evaluate(state, 0 if step == total else c.eval.batches)
        if pending and (step % c.train.log_every == 0 or step == total or preempted or evaluating):
          last = self._log(writer, bar, step, pending, elapsed, tokens_per_step, fpt, peak, extra)
          pending = []
        if step % c.checkpoint.every == 0 or step == total or preempted:
          self.save(step, state, cstate, next_idx)
        if not pending:
          last_time = time.perf_counter()
    bar.close()
    result = dict(last)
    writer.close()
    self.checkpoints.close()
    if preempted:
      print(f'SIGTERM: saved step {step} to {self.workdir}/checkpoints; rerun to resume')
    else:
      metrics_lib.plot_losses(writer.path, os.path.join(self.workdir, 'loss.png'))
    result.update(step=step, preempted=preempted, params=state_lib.param_count(state),
                  peak_flops=peak, peak_source=peak_source)
    with open(os.path.join(self.workdir, 'summary.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
    self.final_state, self.final_cstate = state, cstate
    return result

  def _log(self, writer, bar, step, pending, seconds, tokens_per_step, fpt, peak, extra) -> dict:
    fetched = jax.device_get(pending)
    streak = int(fetched[-1]['nonfinite_streak'])
    if streak >= self.config.train.max_nonfinite:
      raise FloatingPointError(
          f'loss or gradients were non-finite for {streak} steps in a row (up to step {step}); '
          'those updates were skipped and the run stopped (train.max_nonfinite='
          f'{self.config.train.max_nonfinite}). Lower optim.lr or check the data.')
    n = len(fetched)
    finite = [f['loss'] for f in fetched if np.isfinite(f['loss'])]
    tokens_per_s = n * tokens_per_step / seconds
    scalars = {
        'loss': float(np.mean(finite)) if finite else float('nan'),
        'grad_norm': float(np.mean([f['grad_norm'] for f in fetched])),
        'perf/step_time_s': seconds / n,
        'perf/tokens_per_s': tokens_per_s,
        'perf/tokens_per_s_per_device': tokens_per_s / self.mesh.size,
        'perf/mfu': tokens_per_s * fpt / peak,
        'nonfinite_streak': streak,
        **extra,
    }
    writer.write(step, scalars)
    bar.set_postfix(loss=f'{scalars["loss"]:.3f}', tok_s=f'{tokens_per_s:.0f}')
    return scalars


def run(config, workdir: str, devices=None) -> dict:
  if 'grpo' in config:  # RL fine-tuning with verifiable rewards (SPaCe) has its own loop
    from training.spaced import run_spaced
    return run_spaced(config, workdir)
  if config.model.kind == 'multimodal':  # packed, DFLOP-balanced rows: training/multimodal.py
    from training import multimodal
    return multimodal.run(config, workdir, devices)
  return Trainer(config, workdir, devices).run()
