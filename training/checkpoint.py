"""Orbax checkpoints: items `state`, `curriculum`, `data` (JSON) and `config` (JSON) per step.

Restores always go against an abstract target built from the current mesh, so a checkpoint
restores onto another mesh or device count; stored sharding metadata is never trusted. A step that
cannot be read is reported and skipped in favour of the previous complete one.
"""

import json
from typing import Any, NamedTuple, Optional

import orbax.checkpoint as ocp
from absl import logging

ITEMS = ('state', 'curriculum', 'data', 'config')

# Keys that may change between a checkpoint and its resumption; any other difference is refused.
RESUMABLE_CHANGES = ('train.steps', 'train.log_every', 'train.progress', 'train.peak_flops',
                     'train.max_nonfinite', 'checkpoint.', 'eval.', 'parallel.', 'data.data_dir',
                     'data.mode')


class Restored(NamedTuple):
  step: int
  state: Any
  curriculum: Any
  data: dict
  config: dict


class Checkpoints:

  def __init__(self, directory: str, max_to_keep: int, async_save: bool):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)

  def save(self, step: int, state, cstate, data: dict, config: dict):
    self._manager.check_for_errors()  # a failed earlier async save surfaces here, not never
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), curriculum=ocp.args.StandardSave(cstate),
        data=ocp.args.JsonSave(data), config=ocp.args.JsonSave(config)))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, abstract_state, abstract_cstate, config: dict) -> Optional[Restored]:
    """The newest readable checkpoint, or None when there is none at all.

    The saved config is compared with `config` before any array is read, so an incompatible
    config is refused by name instead of surfacing as a shape error.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        saved = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
      except Exception as e:  # orbax raises many types for damaged files
        self._report_unreadable(step, e)
        continue
      refuse_incompatible(saved, config, step)
      try:
        r = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            curriculum=ocp.args.StandardRestore(abstract_cstate),
            data=ocp.args.JsonRestore()))
      except Exception as e:
        self._report_unreadable(step, e)
        continue
      return Restored(step, r.state, r.curriculum, r.data, saved)
    if steps:
      raise RuntimeError(f'no readable checkpoint among steps {steps} in {self._manager.directory}')
    return None

  @staticmethod
  def _report_unreadable(step: int, error: Exception):
    logging.warning('checkpoint step %d: %s: %s', step, type(error).__name__,
                    str(error).splitlines()[0][:300] if str(error) else '')
    print(f'warning: checkpoint step {step} is incomplete or corrupted; falling back to the '
          'previous complete step')

  def close(self):
    self._manager.wait_until_finished()
    self._manager.check_for_errors()
    self._manager.close()


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def incompatible_keys(saved: dict, current: dict) -> list[str]:
  """Config keys whose change would make resuming from `saved` wrong."""
  a, b = flatten(saved), flatten(json.loads(json.dumps(current)))
  changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]


def refuse_incompatible(saved: dict, current: dict, step: int):
  bad = incompatible_keys(saved, current)
  if bad:
    raise ValueError(f'config differs from the checkpoint at step {step} in {", ".join(bad)}; '
                     'use a new --workdir or restore these values')
