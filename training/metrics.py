"""metrics.jsonl, TensorBoard events, the progress bar, MFU and the loss plot."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per device, from the vendors' published figures.
PUBLISHED_PEAKS = (
    ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5', 197e12), ('TPU v4', 275e12),
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12),
)


def measure_matmul_peak(n: int = 1024, repeats: int = 10) -> float:
  """Best float32 matmul rate of the first device, FLOP/s: the CPU's practical peak."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops(configured: float, devices) -> tuple[float, str]:
  """Peak FLOP/s of the whole job and where the figure comes from."""
  if configured > 0:
    return configured * len(devices), 'config'
  kind = devices[0].device_kind
  for name, peak in PUBLISHED_PEAKS:
    if name.lower() in kind.lower():
      return peak * len(devices), f'published ({name})'
  # Fake CPU devices share the host's cores: the host's matmul rate is the peak of all of them.
  return measure_matmul_peak(), 'measured matmul'


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._file = open(self.path, 'a', encoding='utf-8')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict):
    clean = {k: float(v) for k, v in scalars.items()}
    self._file.write(json.dumps({'step': step, **clean}) + '\n')
    self._file.flush()
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    self._file.close()
    self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: str, out_path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows = read_jsonl(metrics_path)
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (('loss', 'train'), ('eval/loss', 'held-out')):
    pts = [(r['step'], r[key]) for r in rows if key in r]
    if pts:
      ax.plot(*np.array(pts).T, label=label, marker='o' if label == 'held-out' else None)
  ax.set_xlabel('step')
  ax.set_ylabel('loss (nats per byte)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
