"""Private pytree helpers: flatten several trees with a checked structure."""

import jax
import numpy as np

from wpl_jax.types import PyTree


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _key(path: tuple) -> tuple:
  """A leaf path without a trailing `.value` (an NNX Variable's array).

  `nnx.Optimizer` hands transforms plain arrays while a mask, anchor or
  Fisher built from `nnx.state(model)` holds Variables: the same leaves,
  with "/value" at the end of each path (`partition.path_str` agrees).
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey):
    if path[-1].name == "value":
      return path[:-1]
  return path


def flatten_like(
  params: PyTree, broadcast: frozenset = frozenset(), **others: PyTree
) -> tuple[list, object, dict[str, list]]:
  """Flattens `params` and every tree in `others`, checking they match.

  Trees must hold the same leaf paths as `params`, in the same order, with
  the same shapes (paths compared without a trailing NNX `.value`), except
  those named in `broadcast`, whose leaves need only
  broadcast to the params leaf (e.g. a mask of Python bools or of shape
  `[E, 1, 1]` for stacked `[E, H, H]` weights). Checks run at trace time on
  static shapes, so they cost nothing under `jax.jit`.

  Args:
    params: the reference tree.
    broadcast: names in `others` whose leaves may broadcast.
    **others: trees to flatten, by name (the name appears in errors).

  Returns:
    `(params_leaves, params_treedef, {name: leaves})`.

  Raises:
    ValueError: naming the first offending path, e.g.
      "params['dense_1']['kernel']: shape (3, 4) vs anchor (4, 3)".
  """
  p_flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  p_paths = [_key(p) for p, _ in p_flat]
  p_leaves = [x for _, x in p_flat]
  out = {}
  for name, tree in others.items():
    o_flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    o_paths = [_key(p) for p, _ in o_flat]
    if o_paths != p_paths:
      _raise_structure(name, p_paths, o_paths)
    leaves = [x for _, x in o_flat]
    for path, x, y in zip(p_paths, p_leaves, leaves, strict=True):
      sx, sy = _shape(x), _shape(y)
      ok = _broadcasts(sy, sx) if name in broadcast else sx == sy
      if not ok:
        raise ValueError(
          f"params{jax.tree_util.keystr(path)}: shape {sx} vs {name} {sy}"
        )
    out[name] = leaves
  return p_leaves, treedef, out


def _broadcasts(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
  if len(src) > len(dst):
    return False
  return all(s in (1, d) for s, d in zip(src[::-1], dst[::-1], strict=False))


def _raise_structure(name: str, p_paths: list, o_paths: list) -> None:
  o_set, p_set = set(o_paths), set(p_paths)
  for p in p_paths:
    if p not in o_set:
      raise ValueError(f"params{jax.tree_util.keystr(p)}: missing in {name}")
  for p in o_paths:
    if p not in p_set:
      raise ValueError(f"{name}{jax.tree_util.keystr(p)}: not in params")
  raise ValueError(f"{name}: leaves are in a different order than params")
