"""Logical axis names -> mesh axes by an ordered rule list; the first matching rule wins.

Rules are `[(logical_name, mesh_axis or tuple of mesh axes or None), ...]`. A logical name may
appear several times: the first entry whose mesh axes are all still unused by the tensor (and of
size > 1) is taken, later ones are fallbacks. Each mesh axis shards a tensor at most once.
A list, never a dict: turning rules into a dict silently drops fallbacks (MaxText PR #4205).
"""

import contextlib
import contextvars
from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, object]]

_RULES: contextvars.ContextVar = contextvars.ContextVar('paceline_logical_rules', default=None)


@contextlib.contextmanager
def use_rules(rules: Rules):
  """Makes `constrain` active while tracing a function under a mesh (`jax.set_mesh`)."""
  token = _RULES.set(tuple((k, v) for k, v in rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def logical_to_spec(logical: Sequence[str | None], rules: Rules, mesh_shape: dict) -> P:
  """PartitionSpec for a tensor whose dimensions carry `logical` names."""
  used: set[str] = set()
  out = []
  for name in logical:
    chosen = None
    for rule_name, axes in rules if name is not None else ():
      if rule_name != name:
        continue
      axes = tuple(a for a in _as_tuple(axes) if mesh_shape.get(a, 1) > 1)
      if axes and not used.intersection(axes):
        chosen = axes
        break
    if chosen:
      used.update(chosen)
      out.append(chosen[0] if len(chosen) == 1 else chosen)
    else:
      out.append(None)
  return P(*out)


def tree_shardings(logical_specs, mesh: jax.sharding.Mesh, rules: Rules):
  """Maps a pytree of logical PartitionSpecs (from `nnx.get_partition_spec`) to NamedShardings."""
  shape = dict(mesh.shape)
  return jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules, shape)),
                      logical_specs, is_leaf=lambda x: isinstance(x, P))


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside a mesh or without rules."""
  rules = _RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  # Inside shard_map (pipeline stages) the manual axes are already split; only the rest can shard.
  shape = {a: 1 if a in mesh.manual_axes else s for a, s in mesh.shape.items()}
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, rules, shape))


def replicated_fraction(shardings, shapes) -> float:
  """Fraction of elements left fully replicated (MaxText fails a run above 2% on a big mesh)."""
  total = replicated = 0
  for sh, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes)):
    n = int(x.size)
    total += n
    if all(a is None for a in sh.spec):
      replicated += n
  return replicated / max(total, 1)
