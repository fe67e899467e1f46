"""Which leaves are shared: boolean mask pytrees from path regexes or callables.

Shared vs private is data, not class structure: one params tree
holds every leaf once, and a mask tree of the same structure says which leaves
the weight plasticity loss touches.

A leaf's *path string* joins its keys with "/", e.g. ``"shared_0/kernel"`` for
``params["shared_0"]["kernel"]``; sequence indices and dataclass attribute
names are joined the same way (``"layers/0/w"``). The ``value`` attribute that
ends every Flax NNX `Variable` path is dropped, so ``"kernel$"`` selects the
kernels of an `nnx.State` exactly as it does those of a Linen params dict.
"""

import re
from collections.abc import Callable, Mapping, Sequence

import jax
import optax

from wpl_jax.types import PyTree

MaskSpec = str | Sequence[str] | Callable[[str, object], bool]


def path_str(path: tuple) -> str:
  """Returns the "/"-joined path string of a `tree_flatten_with_path` path.

  A trailing `.value` attribute (a Flax NNX Variable's array) is dropped:
  `nnx.state(model)` paths read "linear/kernel", not "linear/kernel/value".
  """
  parts = []
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey):
    if path[-1].name == "value":
      path = path[:-1]
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      parts.append(entry.name)
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
      parts.append(str(entry.key))
    else:  # Unknown key type: fall back to its printed form.
      parts.append(str(entry).strip(".[]'\""))
  return "/".join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
  """Returns the path strings of all leaves of `tree`, in flatten order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(p) for p, _ in flat]


def _as_predicate(spec: MaskSpec) -> Callable[[str, object], bool]:
  if callable(spec):
    return spec
  patterns = [spec] if isinstance(spec, str) else list(spec)
  compiled = [re.compile(p) for p in patterns]
  return lambda path, leaf: any(c.search(path) for c in compiled)


def make_mask(
  params: PyTree, spec: MaskSpec, *, allow_empty: bool = False
) -> PyTree:
  """Builds a boolean mask tree shaped like `params`.

  Args:
    params: any pytree (nested dicts, Flax params, NNX State, tuples, ...).
    spec: a regex, a sequence of regexes (a leaf is True if any matches with
      `re.search` against its path string), or a callable
      `(path_str, leaf) -> bool`.
    allow_empty: accept a spec that selects no leaf. By default that raises:
      a WPL mask that selects nothing makes the penalty silently 0.

  Returns:
    A pytree with the structure of `params` and a Python bool per leaf.

  Raises:
    ValueError: `spec` selects no leaf (and not `allow_empty`); the message
      shows some of the paths it was matched against.

  Examples:
    >>> params = {"shared_0": {"kernel": 1.0}, "head": {"kernel": 2.0}}
    >>> make_mask(params, r"^shared_")
    {'head': {'kernel': False}, 'shared_0': {'kernel': True}}
  """
  pred = _as_predicate(spec)
  mask = jax.tree_util.tree_map_with_path(
    lambda p, x: bool(pred(path_str(p), x)), params
  )
  if not allow_empty and not any(jax.tree.leaves(mask)):
    paths = leaf_paths(params)
    shown = ", ".join(repr(p) for p in paths[:4])
    what = spec if not callable(spec) else getattr(spec, "__name__", "spec")
    raise ValueError(
      f"mask {what!r} selects none of the {len(paths)} leaves (paths look "
      f"like {shown}); fix the pattern or pass allow_empty=True"
    )
  return mask


def label_params(
  params: PyTree,
  groups: Mapping[str, MaskSpec],
  *,
  exhaustive: bool = True,
  default: str | None = None,
) -> PyTree:
  """Labels every leaf with the name of the first group whose spec matches.

  Args:
    params: any pytree.
    groups: ordered mapping from group name to a mask spec (see `make_mask`).
    exhaustive: if True, a leaf matched by no group raises `ValueError`
      naming the leaf (unless `default` is given).
    default: the label for unmatched leaves when not exhaustive.

  Returns:
    A pytree of strings shaped like `params` (usable with `optax.partition`).

  Raises:
    ValueError: a leaf matches no group and `exhaustive` is set.
  """
  preds = [(name, _as_predicate(spec)) for name, spec in groups.items()]

  def label(p, x):
    s = path_str(p)
    for name, pred in preds:
      if pred(s, x):
        return name
    if exhaustive and default is None:
      raise ValueError(
        f"parameter {s!r} matches no group of {list(groups)}; add a pattern "
        "for it or pass a default group"
      )
    return default

  return jax.tree_util.tree_map_with_path(label, params)


def resolve_mask(mask, params: PyTree) -> PyTree | None:
  """`mask(params)` if callable, else `mask`: a bool tree like `params`."""
  return mask(params) if callable(mask) else mask


def split(params: PyTree, mask: PyTree) -> tuple[PyTree, PyTree]:
  """Splits `params` into (shared, private) trees by a boolean mask.

  Both outputs keep the structure of `params`; leaves that belong to the other
  part are replaced by `optax.MaskedNode()` (an empty pytree), so each part
  holds only its own arrays and can be passed to `jax.grad`, an optimizer or a
  checkpointer on its own.

  Args:
    params: any pytree.
    mask: a tree of Python bools shaped like `params` (or a callable
      `params -> mask`).

  Returns:
    `(shared, private)`; `merge(shared, private)` gives back `params`.
  """
  mask = resolve_mask(mask, params)
  _check_bool_mask(params, mask)
  shared = jax.tree.map(
    lambda m, x: x if m else optax.MaskedNode(), mask, params
  )
  private = jax.tree.map(
    lambda m, x: optax.MaskedNode() if m else x, mask, params
  )
  return shared, private


def merge(shared: PyTree, private: PyTree) -> PyTree:
  """Inverse of `split`: one tree like both, each leaf from its part."""
  is_node = lambda x: isinstance(x, optax.MaskedNode)

  def pick(a, b):
    if is_node(a) == is_node(b):
      raise ValueError("merge: a leaf is present in both or neither part")
    return b if is_node(a) else a

  return jax.tree.map(pick, shared, private, is_leaf=is_node)


def _check_bool_mask(params: PyTree, mask: PyTree) -> None:
  p_paths = leaf_paths(params)
  m_flat, _ = jax.tree_util.tree_flatten_with_path(mask)
  m_paths = [path_str(p) for p, _ in m_flat]
  if p_paths != m_paths:
    missing = next((p for p in p_paths if p not in set(m_paths)), "<structure>")
    raise ValueError(f"mask does not match params at {missing!r}")
  for p, m in m_flat:
    if not isinstance(m, bool):
      raise ValueError(
        f"split needs a Python bool per leaf; got {type(m).__name__} at "
        f"{path_str(p)!r}"
      )
