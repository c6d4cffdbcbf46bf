"""The device mesh from the config: axes data, stage, fsdp, expert, tensor; one -1 fills."""

from typing import Sequence

import jax
import numpy as np

AXES = ('data', 'stage', 'fsdp', 'expert', 'tensor')


def resolve_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
  """Mesh sizes in AXES order with the single -1 filled so that the product is `num_devices`."""
  unknown = set(sizes) - set(AXES)
  if unknown:
    raise ValueError(f'parallel: unknown mesh axes {sorted(unknown)}; known: {AXES}')
  shape = [int(sizes.get(a, 1)) for a in AXES]
  fills = [a for a, s in zip(AXES, shape) if s == -1]
  bad = [f'parallel.{a}={s}' for a, s in zip(AXES, shape) if s < 1 and s != -1]
  if bad:
    raise ValueError(f'mesh sizes must be positive or -1: {", ".join(bad)}')
  if len(fills) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {fills}')
  fixed = int(np.prod([s for s in shape if s != -1]))
  if fills:
    if num_devices % fixed:
      raise ValueError(f'parallel.{fills[0]}=-1 cannot fill {num_devices} devices: the other axes '
                       f'multiply to {fixed}')
    shape[AXES.index(fills[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f'mesh {dict(zip(AXES, shape))} has {fixed} devices but {num_devices} are '
                     'available (set one parallel axis to -1 to fill)')
  return tuple(shape)


def make_mesh(sizes: dict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """An Auto-typed mesh, so GSPMD propagates shardings and constraints work inside jit."""
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_shape(dict(sizes), len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def initialize_distributed():
  """Multi-host runs (TPU pods, GPU clusters) join the job here; single-process runs skip it."""
  if jax.process_count() == 1 and _cluster_env_present():
    jax.distributed.initialize()


def _cluster_env_present() -> bool:
  import os
  return any(k in os.environ for k in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES',
                                       'MEGASCALE_COORDINATOR_ADDRESS'))
