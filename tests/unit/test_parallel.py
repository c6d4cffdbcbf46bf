import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs.base import DEFAULT_RULES
from parallel import mesh, sharding


def test_minus_one_fills_the_remaining_devices():
  assert mesh.resolve_shape({'data': -1, 'tensor': 2}, 8) == (4, 1, 1, 1, 2)
  assert mesh.resolve_shape({'data': 2, 'fsdp': 2, 'tensor': 2}, 8) == (2, 1, 2, 1, 2)


@pytest.mark.parametrize('sizes,match', [
    ({'data': -1, 'fsdp': -1}, 'at most one'),
    ({'data': 3}, '3 devices but 8'),
    ({'data': -1, 'tensor': 3}, 'cannot fill'),
    ({'data': 0}, 'parallel.data=0'),
    ({'pipeline': 2}, 'unknown mesh axes'),
])
def test_bad_mesh_sizes_name_the_axis(sizes, match):
  with pytest.raises(ValueError, match=match):
    mesh.resolve_shape(sizes, 8)


def test_make_mesh_is_auto_typed():
  m = mesh.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert m.axis_names == mesh.AXES and set(m.axis_types) == {jax.sharding.AxisType.Auto}


SHAPE = {'data': 2, 'stage': 1, 'fsdp': 2, 'expert': 1, 'tensor': 2}


def test_first_matching_rule_wins_and_fallbacks_apply():
  rules = [('act_batch', ('data', 'fsdp')), ('act_batch', 'data'), ('embed', 'fsdp'),
           ('mlp', 'tensor'), ('embed', 'tensor')]
  assert sharding.logical_to_spec(('act_batch', None), rules, SHAPE) == P(('data', 'fsdp'), None)
  assert sharding.logical_to_spec(('embed', 'mlp'), rules, SHAPE) == P('fsdp', 'tensor')
  # fsdp is taken by the batch: embed falls back to tensor, and mlp then finds tensor used.
  assert sharding.logical_to_spec(('act_batch', 'embed', 'mlp'), rules, SHAPE) == P(
      ('data', 'fsdp'), 'tensor', None)


def test_size_one_axes_are_skipped_and_unknown_names_replicate():
  rules = [('layers', 'stage'), ('layers', 'fsdp')]
  assert sharding.logical_to_spec(('layers', 'whatever'), rules, SHAPE) == P('fsdp', None)


def test_default_rules_shard_the_decoder_weights():
  assert sharding.logical_to_spec(('layers', 'embed', 'mlp'), DEFAULT_RULES, SHAPE) == P(
      None, 'fsdp', 'tensor')
  assert sharding.logical_to_spec(('vocab', 'embed'), DEFAULT_RULES, SHAPE) == P('tensor', 'fsdp')


def test_constrain_is_a_no_op_without_mesh_or_rules():
  x = jax.numpy.ones((4, 4))
  assert sharding.constrain(x, ('act_batch', None)) is x
