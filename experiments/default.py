"""The default preset as an experiment: trains it and records the held-out loss.

`python experiments/default.py [--quick]` runs `configs/default.py` (what the README's first command
runs) in runs/default and writes results/default/{summary.json, loss.png}.
"""

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default  # noqa: E402
from training import loop  # noqa: E402
from training.metrics import read_jsonl  # noqa: E402

TARGET = 1.60  # nats per byte on the three held-out plays


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='the tiny variant, for a smoke test')
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'default'))
  parser.add_argument('--out', default=os.path.join(ROOT, 'results', 'default'))
  args = parser.parse_args()
  config = default.get_config('tiny' if args.quick else None)
  shutil.rmtree(args.workdir, ignore_errors=True)
  start = time.time()
  result = loop.run(config, args.workdir)
  wall = time.time() - start
  rows = read_jsonl(os.path.join(args.workdir, 'metrics.jsonl'))
  os.makedirs(args.out, exist_ok=True)
  shutil.copy(os.path.join(args.workdir, 'loss.png'), os.path.join(args.out, 'loss.png'))
  summary = {
      'headline': {'metric': 'heldout_loss_nats_per_byte', 'value': result['eval/loss'],
                   'target': f'<= {TARGET}', 'seeds': 1, 'std': None},
      'wall_seconds': wall,
      'params': result['params'],
      'steps': result['step'],
      'tokens': result['step'] * config.train.batch_size * config.data.seq_len,
      'tokens_per_s': result['perf/tokens_per_s'],
      'mfu': result['perf/mfu'],
      'peak_flops': result['peak_flops'],
      'heldout': 'hamlet, the-tempest, twelfth-night (data/text.py HELDOUT_PLAYS)',
      'unigram_baseline_nats_per_byte': 3.29,
      'curve': [{k: r[k] for k in ('step', 'loss', 'eval/loss') if k in r} for r in rows],
      'config': config.to_dict(),
  }
  with open(os.path.join(args.out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, default=str)
  print(json.dumps(summary['headline']))


if __name__ == '__main__':
  main()
