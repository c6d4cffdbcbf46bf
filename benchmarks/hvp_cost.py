"""Cost of one forward-over-reverse Hessian-vector product relative to one gradient.

The tournament planner spends N gradients and N HVPs; its price in gradient units is 1 + N(1 + r)
with r = this ratio (METHODS.md §3.4: about 2.5 on a 3.3M-parameter LM). Both are jitted, timed
side by side on the same decoder and batch, medians of several calls.

  python benchmarks/hvp_cost.py [--quick]  -> one JSON line, name "hvp_vs_grad"
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import median_times  # noqa: E402
from curriculum.commutator import hvp  # noqa: E402
from models.transformer import Decoder, DecoderConfig  # noqa: E402

FULL = dict(cfg=DecoderConfig(num_layers=3, d_model=256, num_heads=4, mlp_dim=1024, max_len=128),
            batch=8, seq_len=128, reps=5)
QUICK = dict(cfg=DecoderConfig(num_layers=2, d_model=64, num_heads=4, mlp_dim=128, max_len=32),
             batch=8, seq_len=32, reps=20)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  setup = QUICK if args.quick else FULL
  cfg = setup['cfg']
  graphdef, params = nnx.split(Decoder(cfg, nnx.Rngs(0)), nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (setup['batch'], setup['seq_len'] + 1), 0,
                              cfg.vocab_size)

  def loss_fn(p, tokens):
    logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

  v = jax.tree.map(lambda x: jnp.full_like(x, 1e-2), params)
  grad_fn = jax.jit(jax.grad(loss_fn))
  hvp_fn = jax.jit(lambda p, v, t: hvp(loss_fn, p, v, t))
  grad_s, hvp_s = median_times([lambda: grad_fn(params, tokens),
                                  lambda: hvp_fn(params, v, tokens)], setup['reps'])
  print(json.dumps({
      'name': 'hvp_vs_grad', 'ratio': hvp_s / grad_s, 'baseline': 'jax.grad of the same loss',
      'target': 3.0, 'hvp_ms': 1e3 * hvp_s, 'grad_ms': 1e3 * grad_s,
      'params': int(sum(x.size for x in jax.tree.leaves(params))),
      'batch': setup['batch'], 'seq_len': setup['seq_len'], 'quick': args.quick,
      'device': jax.devices()[0].device_kind}))


if __name__ == '__main__':
  main()
