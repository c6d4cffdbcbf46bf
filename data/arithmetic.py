"""Synthetic arithmetic problems with verifiable answers and graded difficulty, as a TFDS builder.

Difficulty d in 1..5 is the size of the problem: addition of two d-digit numbers, multiplication of
a d-digit number by a 1-digit one, or a chain of d operations (+, *) over d + 1 single digits
(chains need d >= 2). Questions read `12+345=`; answers are the decimal value. The test split holds
the same number of problems of every difficulty and shares no question with the train split.

Written as ArrayRecord so no TensorFlow is needed; examples carry an explicit `id` because TFDS
shuffles records by key hash when it writes them.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data import text

DIFFICULTIES = (1, 2, 3, 4, 5)
KINDS = ('add', 'mul', 'chain')
END = '\n'  # ends every answer; a completion without it does not parse


def _digits(rng: np.random.Generator, n: int) -> int:
  """A uniformly drawn number with exactly n digits (0..9 for n = 1)."""
  low = 0 if n == 1 else 10**(n - 1)
  return int(rng.integers(low, 10**n))


def _chain_value(question: str) -> int:
  return sum(int(np.prod([int(f) for f in term.split('*')])) for term in question.split('+'))


def make_problem(rng: np.random.Generator, difficulty: int) -> tuple[str, str, str]:
  """(kind, question, answer) of one problem of the given difficulty."""
  kinds = KINDS if difficulty >= 2 else KINDS[:2]
  kind = kinds[int(rng.integers(len(kinds)))]
  if kind == 'add':
    a, b = _digits(rng, difficulty), _digits(rng, difficulty)
    return kind, f'{a}+{b}=', str(a + b)
  if kind == 'mul':
    a, b = _digits(rng, difficulty), _digits(rng, 1)
    return kind, f'{a}*{b}=', str(a * b)
  ops = rng.choice(['+', '*'], size=difficulty)
  digits = rng.integers(0, 10, size=difficulty + 1)
  expr = str(digits[0]) + ''.join(f'{o}{d}' for o, d in zip(ops, digits[1:]))
  return kind, expr + '=', str(_chain_value(expr))


def generate(num_train: int, num_test_per_difficulty: int, seed: int) -> dict[str, list[dict]]:
  """Both splits as lists of examples. Test questions come first and are excluded from train.

  Easy difficulties have few distinct problems (200 at d = 1), so a split may hold fewer of them
  than a uniform share; duplicates are never kept.
  """
  rng = np.random.default_rng(seed)
  seen: set[str] = set()

  def draw(difficulty, max_tries=200):
    for _ in range(max_tries):
      kind, question, answer = make_problem(rng, difficulty)
      if question not in seen:
        seen.add(question)
        return dict(question=question, answer=answer, difficulty=difficulty, kind=kind)
    return None

  test = [p for d in DIFFICULTIES for _ in range(num_test_per_difficulty) if (p := draw(d))]
  train = []
  while len(train) < num_train:
    p = draw(int(rng.choice(DIFFICULTIES)), max_tries=20)
    if p:
      train.append(p)
  return {split: [dict(p, id=i) for i, p in enumerate(ps)]
          for split, ps in (('train', train), ('test', test))}


@dataclasses.dataclass(kw_only=True)
class ArithmeticConfig(tfds.core.BuilderConfig):
  num_train: int = 20_000
  num_test_per_difficulty: int = 100
  seed: int = 0


class ArithmeticProblems(tfds.core.GeneratorBasedBuilder):
  """Seeded synthetic arithmetic; build other sizes with `config=ArithmeticConfig(...)`."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [ArithmeticConfig(name='default')]

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        'id': tfds.features.Tensor(shape=(), dtype=np.int64),
        'question': tfds.features.Text(),
        'answer': tfds.features.Text(),
        'difficulty': tfds.features.Tensor(shape=(), dtype=np.int32),
        'kind': tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    splits = generate(cfg.num_train, cfg.num_test_per_difficulty, cfg.seed)
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples):
    for ex in examples:
      yield ex['id'], ex


def load(data_dir: str, split: str, num_train: int = 20_000, num_test_per_difficulty: int = 100,
         seed: int = 0) -> dict[str, np.ndarray]:
  """Prepares the dataset under `data_dir` if needed; one split as arrays in id order."""
  config = ArithmeticConfig(name=f'n{num_train}_t{num_test_per_difficulty}_s{seed}',
                            num_train=num_train, num_test_per_difficulty=num_test_per_difficulty,
                            seed=seed)
  builder = ArithmeticProblems(config=config, data_dir=data_dir)
  builder.download_and_prepare(file_format='array_record')
  source = builder.as_data_source(split=split)
  rows = sorted((source[i] for i in range(len(source))), key=lambda r: int(r['id']))
  as_str = lambda key: np.array([r[key].decode() for r in rows])
  return dict(id=np.array([int(r['id']) for r in rows], np.int64), question=as_str('question'),
              answer=as_str('answer'), kind=as_str('kind'),
              difficulty=np.array([int(r['difficulty']) for r in rows], np.int32))


def encode_problems(questions, answers, prompt_len: int,
                    answer_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Byte tokens: prompts [N, prompt_len] and answers [N, answer_len], both int32.

  Prompts are BOS + question, left-padded with PAD so that every completion starts at the same
  position (the sampler writes one column per step). Answers are the digits, END, then PAD.
  """
  prompts = np.full((len(questions), prompt_len), text.PAD, np.int32)
  targets = np.full((len(answers), answer_len), text.PAD, np.int32)
  for i, (q, a) in enumerate(zip(questions, answers)):
    q_tok = np.concatenate([[text.BOS], text.encode(q)])
    a_tok = text.encode(a + END)
    if len(q_tok) > prompt_len:
      raise ValueError(f'prompt_len={prompt_len} is too short for question {q!r} '
                       f'({len(q_tok)} tokens with BOS)')
    if len(a_tok) > answer_len:
      raise ValueError(f'answer_len={answer_len} is too short for answer {a!r} '
                       f'({len(a_tok)} tokens with the end marker)')
    prompts[i, prompt_len - len(q_tok):] = q_tok
    targets[i, :len(a_tok)] = a_tok
  return prompts, targets
