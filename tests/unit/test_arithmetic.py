import numpy as np
import pytest

from data import arithmetic, text


def test_generate_is_seeded_correct_and_keeps_test_questions_out_of_train():
  a = arithmetic.generate(300, 10, seed=3)
  assert a == arithmetic.generate(300, 10, seed=3)
  assert a != arithmetic.generate(300, 10, seed=4)
  train_q = {p['question'] for p in a['train']}
  assert len(train_q) == 300 and not train_q & {p['question'] for p in a['test']}
  assert np.bincount([p['difficulty'] for p in a['test']]).tolist() == [0] + [10] * 5
  for p in a['train'] + a['test']:
    assert int(p['answer']) == eval(p['question'][:-1])  # the generator's own arithmetic
    if p['kind'] == 'add':
      assert len(p['question'].split('+')[0]) == p['difficulty']


def test_builder_writes_array_record_and_loads_in_id_order(tmp_path):
  train = arithmetic.load(str(tmp_path), 'train', num_train=50, num_test_per_difficulty=2, seed=1)
  expected = arithmetic.generate(50, 2, seed=1)['train']
  np.testing.assert_array_equal(train['id'], np.arange(50))
  assert train['question'].tolist() == [p['question'] for p in expected]
  assert train['difficulty'].tolist() == [p['difficulty'] for p in expected]
  assert len(arithmetic.load(str(tmp_path), 'test', 50, 2, 1)['id']) == 10


def test_encode_left_pads_prompts_and_ends_answers():
  prompts, answers = arithmetic.encode_problems(['1+2=', '10*3='], ['3', '30'], 7, 4)
  assert prompts[0].tolist() == [text.PAD, text.PAD, text.BOS] + [ord(c) for c in '1+2=']
  assert answers[1].tolist() == [ord('3'), ord('0'), ord('\n'), text.PAD]
  with pytest.raises(ValueError, match='prompt_len'):
    arithmetic.encode_problems(['12345+12345='], ['24690'], 8, 8)
  with pytest.raises(ValueError, match='answer_len'):
    arithmetic.encode_problems(['1+2='], ['123456'], 8, 4)
