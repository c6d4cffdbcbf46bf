"""GRPO with verifiable rewards as one jitted step over the mesh, plus the supervised warm-up.

The decoder has no KV cache, so sampling recomputes the forward pass over a fixed-size buffer
[prompt | answer_len] once per generated token (`lax.fori_loop`): quadratic, and fine at the tiny
sizes this runs at. Prompts are left-padded, so generated token t always sits in column P + t.

The policy is the softmax over the 256 byte logits divided by the temperature; sampling and the
log-probabilities of the loss use the same distribution. The reward is exact match of the decimal
answer followed by the end marker; a completion that does not parse scores 0 and is counted.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from curriculum.api import Curriculum, Feedback
from data import text
from data.arithmetic import END
from parallel.sharding import use_rules

NUM_BYTES = 256
_END = ord(END)
_ZERO, _NINE = ord('0'), ord('9')
DATA_PARALLEL_RULES = (('act_batch', 'data'),)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  group_size: int = 8
  answer_len: int = 8
  temperature: float = 1.0
  clip_eps: float = 0.2
  kl_coef: float = 0.0  # > 0 adds the k3 KL estimate to a frozen reference policy
  adv_eps: float = 1e-6
  updates_per_batch: int = 1  # optimizer steps on one batch of rollouts; > 1 makes the clip bite

  def __post_init__(self):
    if self.group_size < 2:
      raise ValueError(f'grpo.group_size must be >= 2 (advantages are normalized within a group), '
                       f'got {self.group_size}')
    if self.temperature <= 0:
      raise ValueError(f'grpo.temperature must be > 0 for training, got {self.temperature}')
    if self.updates_per_batch < 1:
      raise ValueError(f'grpo.updates_per_batch must be >= 1, got {self.updates_per_batch}')
    if self.answer_len < 2:
      raise ValueError(f'grpo.answer_len must be >= 2, got {self.answer_len}')
    if self.clip_eps <= 0 or self.kl_coef < 0:
      raise ValueError(f'grpo.clip_eps must be > 0 and grpo.kl_coef >= 0, got {self.clip_eps}, '
                       f'{self.kl_coef}')


def _model(graphdef, params):
  return nnx.merge(graphdef, params)


def completion_logprobs(graphdef, params, prompts, completions, temperature: float = 1.0):
  """log pi(completion token | prefix) [N, A] for prompts [N, P] and completions [N, A]."""
  model = _model(graphdef, params)
  seq = jnp.concatenate([prompts, completions], axis=1)
  h, _ = model.hidden(seq[:, :-1])
  logits = model.logits(h[:, prompts.shape[1] - 1:])[..., :NUM_BYTES] / temperature
  logp = jax.nn.log_softmax(logits, axis=-1)
  safe = jnp.where(completions < NUM_BYTES, completions, 0)  # PAD in SFT targets is masked later
  return jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


def sample(graphdef, params, prompts, key, group_size: int, answer_len: int,
           temperature: float) -> jax.Array:
  """[B, G, A] completions; temperature 0 decodes greedily. Deterministic per key."""
  model = _model(graphdef, params)
  n, plen = prompts.shape[0] * group_size, prompts.shape[1]
  seq = jnp.concatenate([jnp.repeat(prompts, group_size, axis=0),
                         jnp.full((n, answer_len), text.PAD, prompts.dtype)], axis=1)

  def write_next(t, seq):
    h, _ = model.hidden(seq)
    last = jax.lax.dynamic_index_in_dim(h, plen - 1 + t, axis=1, keepdims=True)
    logits = model.logits(last)[:, 0, :NUM_BYTES]
    if temperature > 0:
      tok = jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)
    else:
      tok = jnp.argmax(logits, axis=-1)
    return jax.lax.dynamic_update_slice_in_dim(seq, tok[:, None].astype(seq.dtype), plen + t, 1)

  seq = jax.lax.fori_loop(0, answer_len, write_next, seq)
  return seq[:, plen:].reshape(prompts.shape[0], group_size, answer_len)


def verify(completions, answers) -> tuple[jax.Array, jax.Array]:
  """Exact match of completions [B, G, A] against answers [B, A] (digits, END, PAD...).

  Returns (correct, parsed), float32 [B, G]: parsed means one or more digits then END.
  """
  pos = jnp.arange(answers.shape[-1])
  checked = pos <= jnp.argmax(answers == _END, axis=-1)[:, None]  # through the answer's END
  correct = jnp.all((completions == answers[:, None]) | ~checked[:, None], axis=-1)
  is_end = completions == _END
  first_end = jnp.argmax(is_end, axis=-1)
  is_digit = (completions >= _ZERO) & (completions <= _NINE)
  digits_first = jnp.all(is_digit | (pos >= first_end[..., None]), axis=-1)
  parsed = jnp.any(is_end, axis=-1) & (first_end > 0) & digits_first
  return correct.astype(jnp.float32), parsed.astype(jnp.float32)


def completion_mask(completions) -> jax.Array:
  """1 on tokens up to and including the first END (all tokens when there is none)."""
  is_end = completions == _END
  last = jnp.where(jnp.any(is_end, axis=-1), jnp.argmax(is_end, axis=-1), completions.shape[-1])
  return (jnp.arange(completions.shape[-1]) <= last[..., None]).astype(jnp.float32)


def group_advantages(rewards, eps: float = 1e-6) -> jax.Array:
  """(r - group mean) / (group std + eps) over the last axis; population std (ddof 0)."""
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  std = jnp.std(rewards, axis=-1, keepdims=True)
  return (rewards - mean) / (std + eps)


def policy_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float,
                kl_coef: float) -> jax.Array:
  """Clipped surrogate (+ k3 KL) per sequence, token-averaged: [...] from [..., A] inputs."""
  ratio = jnp.exp(logp - old_logp)
  adv = advantages[..., None]
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
  per_token = -surrogate
  if kl_coef:
    log_ref_ratio = ref_logp - logp
    per_token = per_token + kl_coef * (jnp.exp(log_ref_ratio) - log_ref_ratio - 1)
  return jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def make_grpo_step(graphdef, tx: optax.GradientTransformation, curriculum: Curriculum,
                   cfg: GRPOConfig, mesh: jax.sharding.Mesh) -> Callable:
  """Jitted `step(params, opt_state, cstate, ref_params, pool, key)`.

  `pool` is (prompts [N, P], answers [N, A]), resident on device; the step gathers its batch from
  the curriculum's indices. Examples are data-parallel over the mesh's `data` axis; parameters are
  replicated. Returns (params, opt_state, cstate, metrics) with per-prompt `idx` and `solve_rate`
  in the metrics so that callers can follow the curriculum's choices.
  """
  g = cfg.group_size

  def step(params, opt_state, cstate, ref_params, pool, key):
    idx, cstate = curriculum.next_batch(cstate)
    prompts, answers = pool[0][idx], pool[1][idx]
    completions = sample(graphdef, params, prompts, key, g, cfg.answer_len, cfg.temperature)
    correct, parsed = verify(completions, answers)
    advantages = group_advantages(correct, cfg.adv_eps)
    flat_prompts = jnp.repeat(prompts, g, axis=0)
    flat = completions.reshape(-1, cfg.answer_len)
    mask = completion_mask(completions)
    logp_of = lambda p: completion_logprobs(graphdef, p, flat_prompts, flat, cfg.temperature
                                            ).reshape(completions.shape)
    old_logp = jax.lax.stop_gradient(logp_of(params))
    ref_logp = jax.lax.stop_gradient(logp_of(ref_params)) if cfg.kl_coef else old_logp

    def loss_fn(p):
      per_seq = policy_loss(logp_of(p), old_logp, ref_logp, advantages, mask, cfg.clip_eps,
                            cfg.kl_coef)
      return jnp.mean(per_seq), per_seq

    def update(carry, _):
      params, opt_state = carry
      (loss, per_seq), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (loss, per_seq,
                                                                  optax.global_norm(grads))

    # Statistics of the first update: the on-policy loss of these rollouts.
    (params, opt_state), (losses, per_seqs, grad_norms) = jax.lax.scan(
        update, (params, opt_state), length=cfg.updates_per_batch)
    loss, per_seq = losses[0], per_seqs[0]
    solve_rate = jnp.mean(correct, axis=-1)
    feedback = Feedback(loss=jnp.mean(per_seq, axis=-1), tokens=jnp.sum(mask, axis=(1, 2)),
                        reward=solve_rate, correct=correct)
    cstate = curriculum.update(cstate, idx, feedback)
    metrics = dict(loss=loss, reward=jnp.mean(correct), parsed=jnp.mean(parsed),
                   grad_norm=grad_norms[0], idx=idx, solve_rate=solve_rate)
    return params, opt_state, cstate, metrics

  replicated = NamedSharding(mesh, P())

  def traced(*args):
    with use_rules(DATA_PARALLEL_RULES):
      return step(*args)

  jitted = jax.jit(traced, in_shardings=replicated, out_shardings=replicated,
                   donate_argnums=(0, 1, 2))

  def run(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)

  return run


def sft_loss(graphdef, params, prompts, answers) -> jax.Array:
  """Teacher-forced cross entropy on the answer tokens (digits and END)."""
  mask = (answers != text.PAD).astype(jnp.float32)
  logp = completion_logprobs(graphdef, params, prompts, answers)
  return -jnp.sum(logp * mask) / jnp.sum(mask)


def make_sft_step(graphdef, tx: optax.GradientTransformation) -> Callable:
  """Jitted supervised step `(params, opt_state, prompts, answers) -> (params, opt_state, loss)`."""

  def step(params, opt_state, prompts, answers):
    loss, grads = jax.value_and_grad(lambda p: sft_loss(graphdef, p, prompts, answers))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def make_solver(graphdef, group_size: int, answer_len: int, temperature: float) -> Callable:
  """Jitted `(params, prompts, answers, key) -> correct [B, group_size]` (0/1 float32)."""

  def solve(params, prompts, answers, key):
    completions = sample(graphdef, params, prompts, key, group_size, answer_len, temperature)
    return verify(completions, answers)[0]

  return jax.jit(solve)


def solve_all(solver: Callable, params, prompts, answers, key, batch_size: int) -> jax.Array:
  """`solver` over a whole set in fixed-size batches (the last one padded): correct [N, G]."""
  n = prompts.shape[0]
  pad = -n % batch_size
  prompts = jnp.pad(prompts, ((0, pad), (0, 0)), constant_values=text.PAD)
  answers = jnp.pad(answers, ((0, pad), (0, 0)), constant_values=text.PAD)
  out = [solver(params, prompts[i:i + batch_size], answers[i:i + batch_size],
                jax.random.fold_in(key, i)) for i in range(0, n + pad, batch_size)]
  return jnp.concatenate(out)[:n]
