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


def dtype(x) -> np.dtype | None:
  """The dtype of an array leaf or Python scalar (None if it has none)."""
  dt = getattr(x, "dtype", None)
  if dt is not None:
    return np.dtype(dt)
  try:
    return np.asarray(x).dtype
  except (TypeError, ValueError):
    return None


def path_str(name: str, path: tuple) -> str:
  """`name` followed by `path` as in the errors, e.g. "fisher['a']['w']"."""
  return f"{name}{jax.tree_util.keystr(_key(path))}"


def leaf_path(tree: PyTree, index: int) -> tuple:
  """The path of the `index`-th leaf of `tree` (flatten order)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return flat[index][0]


def check_real(name: str, path: tuple, x) -> None:
  """TypeError naming `path` if the leaf `x` is complex."""
  dt = dtype(x)
  if dt is not None and np.issubdtype(dt, np.complexfloating):
    raise TypeError(
      f"{path_str(name, path)}: complex dtype {dt}; WPL needs real arrays"
    )


def check_bool(name: str, path: tuple, x) -> None:
  """TypeError naming `path` unless the mask leaf `x` is boolean.

  Python bools, NumPy bools and bool arrays pass; a float or integer mask
  (even of 0s and 1s) is refused rather than read as "nonzero = True".
  """
  dt = dtype(x)
  if dt != np.bool_:
    what = type(x).__name__ if dt is None else f"dtype {dt}"
    raise TypeError(
      f"{path_str(name, path)}: mask leaves must be bool, got {what} "
      "(use True/False or m.astype(bool))"
    )


def flatten_like(
  params: PyTree,
  broadcast: frozenset = frozenset(),
  *,
  boolean: frozenset = frozenset(),
  real: frozenset = frozenset(),
  **others: PyTree,
) -> tuple[list, object, dict[str, list]]:
  """Flattens `params` and every tree in `others`, checking they match.

  Trees must hold the same leaf paths as `params`, in the same order, with
  the same shapes (paths compared without a trailing NNX `.value`), except
  those named in `broadcast`, whose leaves need only
  broadcast to the params leaf (e.g. a mask of Python bools or of shape
  `[E, 1, 1]` for stacked `[E, H, H]` weights). Checks run at trace time on
  static shapes and dtypes, so they cost nothing under `jax.jit`.

  Args:
    params: the reference tree.
    broadcast: names in `others` whose leaves may broadcast.
    boolean: names in `others` whose leaves must be bool (masks).
    real: names (in `others`, or "params") whose leaves must not be complex.
    **others: trees to flatten, by name (the name appears in errors).

  Returns:
    `(params_leaves, params_treedef, {name: leaves})`.

  Raises:
    ValueError: naming the first offending path, e.g.
      "params['dense_1']['kernel']: shape (3, 4) vs anchor (4, 3)".
    TypeError: a complex leaf in a `real` tree or a non-bool one in a
      `boolean` tree, naming its path.
  """
  p_flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  p_paths = [_key(p) for p, _ in p_flat]
  p_leaves = [x for _, x in p_flat]
  if "params" in real:
    for path, x in p_flat:
      check_real("params", path, x)
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
    for (path, _), y in zip(o_flat, leaves, strict=True):
      if name in boolean:
        check_bool(name, path, y)
      if name in real:
        check_real(name, path, y)
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
