"""RevFFN at tiny scale: pretrain an MoE decoder on Shakespeare, convert it to the reversible
two-stream form, recover (stage 1, adapters only), then fine-tune all parameters on the KJV with
plain autodiff, per-layer remat and reversible backprop (stage 2).

Writes results/revffn/summary.json (headline: final KJV held-out loss of reversible fine-tuning
minus plain full fine-tuning, in nats per byte), the loss curves, per-layer reconstruction error
of the stack inputs in float32, with bfloat16 blocks on float32 streams (the design) and on
bfloat16 streams, and the rate at which top-k routing would flip if recomputed on reconstructed
inputs.

  python experiments/revffn.py [--quick]
"""

import argparse
import dataclasses
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from data import lm, text  # noqa: E402
from models import moe  # noqa: E402
from models import reversible as rv  # noqa: E402
from models.transformer import Decoder  # noqa: E402

# Sized for a 2-core machine shared by several jobs: a few CPU-minutes.
FULL = dict(num_layers=4, d_model=64, num_heads=4, mlp_dim=128, num_experts=4, top_k=2,
            seq_len=64, batch=8, pretrain_steps=300, stage1_steps=100, stage2_steps=150,
            pretrain_lr=3e-3, stage1_lr=3e-3, stage2_lr=1e-3, eval_every=25, eval_batches=2)
QUICK = dict(num_layers=2, d_model=32, num_heads=2, mlp_dim=64, num_experts=4, top_k=2,
             seq_len=32, batch=8, pretrain_steps=30, stage1_steps=20, stage2_steps=20,
             pretrain_lr=3e-3, stage1_lr=3e-3, stage2_lr=1e-3, eval_every=10, eval_batches=2)
AUX_COEF = 0.01


def corpus_windows(documents: dict, heldout, seq_len: int):
  """(train, held-out) byte windows [n, seq_len + 1] of a {name: text} corpus."""
  split = {False: [], True: []}
  for name, body in documents.items():
    split[name in heldout].append(text.encode(body))
  return tuple(lm.windows(np.concatenate(split[h]), seq_len) for h in (False, True))


def lm_loss(model, tokens):
  logits, aux = model(tokens[:, :-1])
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
  return jnp.mean(nll), aux


def objective(model, tokens):
  loss, aux = lm_loss(model, tokens)
  return loss + AUX_COEF * aux, loss


class Run:
  """Trains one model with one optimizer, logging held-out loss every `eval_every` steps."""

  def __init__(self, model, tx, train, heldout, setup, seed):
    self.model, self.train, self.setup = model, train, setup
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.rng = np.random.default_rng(seed)
    self.eval_batches = heldout[:setup['eval_batches'] * setup['batch']].reshape(
        setup['eval_batches'], setup['batch'], -1)
    self.curve = []

    @nnx.jit
    def step(model, optimizer, tokens):
      (_, loss), grads = nnx.value_and_grad(objective, has_aux=True)(model, tokens)
      optimizer.update(model, grads)
      return loss

    self.step = step
    self.evaluate_batch = nnx.jit(lambda model, tokens: lm_loss(model, tokens)[0])

  def evaluate(self) -> float:
    return float(np.mean([self.evaluate_batch(self.model, b) for b in self.eval_batches]))

  def fit(self, steps: int, offset: int = 0):
    self.curve.append((offset, self.evaluate()))
    for i in range(1, steps + 1):
      batch = self.train[self.rng.integers(0, len(self.train), self.setup['batch'])]
      self.step(self.model, self.optimizer, jnp.asarray(batch))
      if i % self.setup['eval_every'] == 0 or i == steps:
        self.curve.append((offset + i, self.evaluate()))
        print(f'step {offset + i}: held-out loss {self.curve[-1][1]:.4f}', file=sys.stderr,
              flush=True)
    return self


def schedule(lr, steps):
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps, lr * 0.1)


def reconstruction(model: rv.ReversibleDecoder, tokens, stream_dtype=jnp.float32):
  """Per layer: relative error of the layer's input rebuilt from the top of the stack, and the
  fraction of tokens whose top-k experts would change if routed on the rebuilt Y1. A bfloat16
  `stream_dtype` rounds the streams after every addition and subtraction (what bf16 streams do)."""
  graphdef, state = nnx.split(model.layers)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  rounded = lambda pair: tuple(t.astype(stream_dtype).astype(jnp.float32) for t in pair)
  x1, x2 = rounded(rv.split_streams(model.embed_tokens(tokens), model.cfg))

  def forward(carry, layer):
    y1, y2, _, ids = rv.forward_layer(graphdef, layer, *carry, positions)
    return rounded((y1, y2)), (carry, ids)

  def backward(carry, layer_and_ids):
    layer, ids = layer_and_ids
    y1, y2 = carry
    _, _, fresh = nnx.merge(graphdef, layer).ffn_branch(y1)
    flipped = jnp.any(jnp.sort(fresh, -1) != jnp.sort(ids, -1), axis=-1)
    x1, x2 = rounded(rv.invert_layer(graphdef, model.rev, layer, y1, y2, ids, positions))
    return (x1, x2), ((x1, x2), jnp.mean(flipped))

  top, (inputs, ids) = jax.lax.scan(forward, (x1, x2), state)
  _, (rebuilt, flips) = jax.lax.scan(backward, top, (state, ids), reverse=True)
  norm = lambda pair: jnp.sqrt(sum(jnp.sum(p.reshape(p.shape[0], -1)**2, -1) for p in pair))
  error = norm(jax.tree.map(jnp.subtract, rebuilt, inputs)) / norm(inputs)
  return np.asarray(error), np.asarray(flips)


def with_dtype(model: rv.ReversibleDecoder, dtype: str) -> rv.ReversibleDecoder:
  copy = rv.ReversibleDecoder(dataclasses.replace(model.cfg, dtype=dtype), nnx.Rngs(0), model.rev)
  nnx.update(copy, nnx.state(model))
  return copy


def plot(out_dir, original_loss, stage1, stage2, recon, setup):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps, losses = zip(*stage1)
  axes[0].plot(steps, losses, label='converted, adapters only')
  axes[0].axhline(original_loss, color='k', ls='--', label='original MoE decoder')
  axes[0].set(title='Stage 1: recovery (Shakespeare held-out)', xlabel='step', ylabel='nats/byte')
  for arm, curve in stage2.items():
    steps, losses = zip(*curve)
    axes[1].plot(steps, losses, label=arm, ls=':' if arm == 'remat' else '-')
  axes[1].set(title='Stage 2: full fine-tuning (KJV held-out)', xlabel='step', ylabel='nats/byte')
  layers = np.arange(setup['num_layers'])
  for dtype, (error, flips) in recon.items():
    axes[2].semilogy(layers, np.maximum(error, 1e-12), 'o-',
                     label=f'{dtype} (flips {np.mean(flips):.1e})')
  axes[2].set(title='Reconstruction error of layer inputs', xlabel='layer', ylabel='relative L2')
  for ax in axes:
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'revffn.png'), dpi=100)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes, about a minute')
  parser.add_argument('--out', default=os.path.join(REPO, 'results', 'revffn'))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  setup = QUICK if args.quick else FULL
  start = time.time()
  cfg = moe.MoEConfig(vocab_size=264, max_len=setup['seq_len'],
                      **{k: setup[k] for k in ('num_layers', 'd_model', 'num_heads', 'mlp_dim',
                                               'num_experts', 'top_k')})
  seq = setup['seq_len']
  shakespeare = corpus_windows(text.shakespeare_plays(), text.HELDOUT_PLAYS, seq)
  kjv = corpus_windows(text.kjv_books(), lm.KJV_HELDOUT_BOOKS, seq)
  key = jax.random.key(args.seed)

  n = setup['pretrain_steps']
  pretrain = Run(Decoder(cfg, nnx.Rngs(key), block_factory=moe.MoEBlock),
                 optax.adamw(schedule(setup['pretrain_lr'], n)), *shakespeare, setup,
                 args.seed).fit(n)
  original = pretrain.model
  original_loss = pretrain.evaluate()

  n1 = setup['stage1_steps']
  stage1_tx = rv.two_stage(optax.adam(schedule(setup['stage1_lr'], n1)), stage1_steps=n1)
  stage1 = Run(rv.to_reversible(original), stage1_tx, *shakespeare, setup, args.seed + 1).fit(n1)

  n2, lr2 = setup['stage2_steps'], setup['stage2_lr']
  remat_model = Decoder(dataclasses.replace(cfg, remat='full'), nnx.Rngs(0),
                        block_factory=moe.MoEBlock)
  nnx.update(remat_model, nnx.state(original))
  arms = {'plain': original, 'remat': remat_model, 'reversible': stage1.model}
  stage2 = {}
  for arm, model in arms.items():
    stage2[arm] = Run(model, optax.adamw(schedule(lr2, n2)), *kjv, setup, args.seed + 2).fit(n2)

  probe = jnp.asarray(kjv[1][:setup['batch']])
  tuned = stage2['reversible'].model
  recon = {'float32': reconstruction(tuned, probe),
           'bfloat16 blocks, float32 streams': reconstruction(with_dtype(tuned, 'bfloat16'), probe),
           'bfloat16 blocks, bfloat16 streams': reconstruction(with_dtype(tuned, 'bfloat16'), probe,
                                                               jnp.bfloat16)}

  final = {arm: run.curve[-1][1] for arm, run in stage2.items()}
  summary = {
      'headline': {'metric': 'stage-2 final KJV held-out loss, reversible minus plain (nats/byte)',
                   'value': final['reversible'] - final['plain'], 'target': 0.0,
                   'seeds': 1, 'std': None},
      'arms': {arm: {'final_kjv_loss': loss, 'curve': stage2[arm].curve}
               for arm, loss in final.items()},
      'stage1': {'original_shakespeare_loss': original_loss,
                 'converted_before_stage1': stage1.curve[0][1],
                 'converted_after_stage1': stage1.curve[-1][1], 'curve': stage1.curve},
      'pretrain_curve': pretrain.curve,
      'reconstruction': {dtype: {'relative_error_per_layer': err.tolist(),
                                 'routing_flip_rate_per_layer': flips.tolist()}
                         for dtype, (err, flips) in recon.items()},
      'config': dict(setup, aux_loss_coef=AUX_COEF, quick=args.quick, seed=args.seed,
                     coupling=rv.ReversibleConfig().coupling),
      'device': jax.devices()[0].device_kind,
      'seconds': round(time.time() - start, 1),
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  plot(args.out, original_loss, stage1.curve, {a: r.curve for a, r in stage2.items()}, recon,
       setup)
  print(json.dumps(summary['headline']))


if __name__ == '__main__':
  main()
