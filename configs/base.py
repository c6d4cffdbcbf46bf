"""Defaults for every preset, and `validate`, which rejects contradictions naming the key.

A preset's `get_config(arg)` starts from `base.get_config()` and changes what it needs; main.py
loads it with `config_flags.DEFINE_config_file(lock_config=True)`, so an override of a key that does
not exist is an error, never a silent new key.
"""

import ml_collections

CURRICULUM_KINDS = ('uniform', 'ordered', 'phased', 'tournament')
MODEL_KINDS = ('decoder', 'multimodal', 'moe', 'revffn')
DATA_MODES = ('pool', 'stream')
CORPORA = ('shakespeare', 'kjv')

# Ordered, first match wins (parallel/sharding.py). Batch-like names are restated for every mesh.
DEFAULT_RULES = (
    ('act_batch', ('data', 'fsdp')),
    ('act_batch', 'data'),
    ('act_batch', 'fsdp'),
    ('act_len', None),
    ('act_embed', None),
    ('act_mlp', 'tensor'),
    ('act_heads', 'tensor'),
    ('act_vocab', 'tensor'),
    ('layers', 'stage'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('expert', 'expert'),
    ('act_expert', 'expert'),  # the capacity-mode MoE dispatch buffer [experts, capacity, d]
)


def get_config():
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      kind='decoder', vocab_size=264, num_layers=4, d_model=128, num_heads=4, mlp_dim=384,
      max_len=256, rope_base=10000.0, dtype='float32', param_dtype='float32', remat='none',
      init_scale=0.02,
      num_experts=8, top_k=2, capacity_factor=0.0))  # moe, revffn; capacity_factor 0 = dropless

  # model.kind='revffn': RevFFN reversible stack (models/reversible.py) and its two-stage schedule.
  c.reversible = ml_collections.ConfigDict(dict(
      coupling='explicit', fixed_point_tol=1e-6, fixed_point_max_iters=50,
      stage1_steps=0,  # the first stage1_steps updates train the adapters only
      init_from=''))  # workdir of a finished model.kind='moe' run to convert; '' = fresh init

  c.data = ml_collections.ConfigDict(dict(
      corpus='shakespeare',  # comma-separated list: each corpus is one `source`
      seq_len=128,
      mode='pool',  # pool: device-resident, gathered in the step; stream: grain over ArrayRecord
      data_dir='',  # '' = $PACELINE_DATA_DIR or ~/.cache/paceline/tfds
      score='none',  # pool.score of the train split: none | length | ngram (data/scores.py)
  ))

  c.curriculum = ml_collections.ConfigDict(dict(
      kind='uniform',
      seed=0,
      steps_per_source=100,  # phased
      source_order=(),  # phased; empty = sources in corpus order
      order='',  # ordered: a name in curriculum.ordering.ORDERS ('' = corpus order)
      order_args=ml_collections.ConfigDict(),  # ordered: keyword arguments of that order
      replan_every=0,  # tournament: re-plan every P steps (a multiple of steps_per_source); 0 = once
      plan_batch_size=16,  # tournament: examples per source (and per source in the target batch)
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, warmup_steps=100, decay_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.98, eps=1e-8,
      weight_decay=0.01, grad_clip=1.0, aux_loss_coef=0.01))  # decay_steps 0 = train.steps

  c.parallel = ml_collections.ConfigDict(dict(
      data=-1, stage=1, fsdp=1, expert=1, tensor=1, rules=DEFAULT_RULES))

  # Used when parallel.stage != 1; schedule gpipe | circular | 1f1b, microbatches 0 = 2 x stages.
  c.pipeline = ml_collections.ConfigDict(dict(schedule='gpipe', microbatches=0, repeats=1))

  c.checkpoint = ml_collections.ConfigDict(dict(every=500, max_to_keep=2, async_save=True))

  c.train = ml_collections.ConfigDict(dict(
      steps=1100, batch_size=32, log_every=50, seed=0,
      max_nonfinite=5,  # stop after this many non-finite steps in a row (checked at log steps)
      peak_flops=0.0,  # per device; 0 = published peak on known accelerators, measured on CPU
      progress=True))

  c.eval = ml_collections.ConfigDict(dict(every=250, batches=8, batch_size=32))
  return c


def _positive(c, *keys):
  for key in keys:
    section, name = key.split('.')
    if c[section][name] < 1:
      raise ValueError(f'{key} must be >= 1, got {c[section][name]}')


def validate(c, num_devices: int) -> dict:
  """Rejects contradictions, naming the key; returns the resolved mesh sizes."""
  from parallel.mesh import AXES, resolve_shape

  _positive(c, 'model.num_layers', 'model.d_model', 'model.num_heads', 'model.mlp_dim',
            'data.seq_len', 'train.steps', 'train.batch_size', 'train.log_every',
            'checkpoint.every', 'checkpoint.max_to_keep', 'eval.batch_size', 'train.max_nonfinite')
  for key, value, allowed in (('model.kind', c.model.kind, MODEL_KINDS),
                              ('curriculum.kind', c.curriculum.kind, CURRICULUM_KINDS),
                              ('data.mode', c.data.mode, DATA_MODES)):
    if value not in allowed:
      raise ValueError(f'{key}={value!r} is unknown; choose one of {list(allowed)}')
  for corpus in c.data.corpus.split(','):
    if corpus not in CORPORA:
      raise ValueError(f'data.corpus: unknown corpus {corpus!r}; choose from {list(CORPORA)}')
  if c.data.mode == 'stream' and c.data.score != 'none':
    raise ValueError(f"data.score={c.data.score!r} needs data.mode='pool': scores are computed "
                     'over the whole pool in memory')
  if c.optim.lr <= 0:
    raise ValueError(f'optim.lr must be > 0, got {c.optim.lr}')
  if c.data.seq_len > c.model.max_len:
    raise ValueError(f'data.seq_len={c.data.seq_len} exceeds model.max_len={c.model.max_len}')
  sizes = dict(zip(AXES, resolve_shape({a: c.parallel[a] for a in AXES}, num_devices)))
  batch_shards = sizes['data'] * sizes['fsdp']
  for key in ('train.batch_size', 'eval.batch_size'):
    section, name = key.split('.')
    if c[section][name] % batch_shards:
      raise ValueError(f'{key}={c[section][name]} is not divisible by the {batch_shards} batch '
                       'shards (parallel.data x parallel.fsdp)')
  for key in ('num_heads', 'mlp_dim'):
    if c.model[key] % sizes['tensor']:
      raise ValueError(f'model.{key}={c.model[key]} is not divisible by '
                       f'parallel.tensor={sizes["tensor"]}')
  if c.model.num_layers % sizes['stage']:
    raise ValueError(f'model.num_layers={c.model.num_layers} is not divisible by '
                     f'parallel.stage={sizes["stage"]}')
  if c.parallel.stage != 1:
    _validate_pipeline(c, sizes)
  return sizes


def _validate_pipeline(c, sizes):
  import jax
  from parallel.pipeline import PipelineConfig

  if c.model.kind not in ('decoder', 'multimodal'):
    raise ValueError(f"parallel.stage={c.parallel.stage} needs model.kind='decoder' or "
                     f"'multimodal' (pipeline stages are not wired into {c.model.kind!r})")
  inner = [a for a in ('fsdp', 'expert', 'tensor') if sizes[a] > 1]
  if inner and jax.default_backend() == 'cpu':
    # Collectives inside the bubble-skipping branches wait forever on the CPU runtime.
    raise ValueError(f'parallel.stage > 1 with parallel.{inner[0]} > 1 hangs on CPU devices; '
                     'use stage x data meshes here')
  pipe = PipelineConfig(stages=sizes['stage'], **c.pipeline)  # raises naming pipeline.* keys
  if c.model.num_layers % (pipe.stages * pipe.repeats):
    raise ValueError(f'model.num_layers={c.model.num_layers} is not divisible by parallel.stage='
                     f'{pipe.stages} x pipeline.repeats={pipe.repeats}')
  for key in ('train.batch_size', 'eval.batch_size'):
    section, name = key.split('.')
    if c[section][name] % (pipe.num_microbatches * sizes['data'] * sizes['fsdp']):
      raise ValueError(f'{key}={c[section][name]} does not split into pipeline.microbatches='
                       f'{pipe.num_microbatches} of parallel.data x parallel.fsdp shards')
