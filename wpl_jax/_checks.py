"""Argument checks of the library's Python-valued arguments (one line each).

Traced values (inside `jit`/`grad`) cannot be inspected: only their static
shape and dtype are checked. Python, NumPy and concrete JAX values are
checked in full.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from wpl_jax import _trees
from wpl_jax.types import PyTree


def concrete_float(value) -> float | None:
  """`value` as a Python float, or None if it is traced or not a scalar."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except (TypeError, ValueError):
    return None
  if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
    return None
  return float(arr)


def scalar(
  name: str,
  value,
  *,
  min: float | None = None,  # noqa: A002
  max: float | None = None,  # noqa: A002
  open_min: bool = False,
) -> None:
  """Raises unless `value` is a real scalar, finite and in range.

  TypeError: not a real number (None, a string, a bool, complex). ValueError:
  not a scalar (checked on the static shape, so also under `jit`), or a
  concrete value that is NaN/inf or out of range.
  """
  dt = _trees.dtype(value) if value is not None else None
  real = dt is not None and (
    np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)
  )
  if not real or isinstance(value, bool):
    raise TypeError(f"{name} must be a real number, got {value!r}")
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  v = concrete_float(value)
  if v is None:
    return
  ok = math.isfinite(v)
  if ok and min is not None:
    ok = v > min if open_min else v >= min
  if ok and max is not None:
    ok = v <= max
  if not ok:
    lo = "" if min is None else f"{'>' if open_min else '>='} {min}"
    hi = "" if max is None else f"<= {max}"
    what = " and ".join(x for x in (lo, hi) if x) or "finite"
    raise ValueError(f"{name}={v!r} must be finite and {what}")


def chunk_size(value) -> None:
  """None or an integer >= 1."""
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise ValueError(
      f"chunk_size must be None or an integer >= 1, got {value!r}"
    )
  if value < 1:
    raise ValueError(f"chunk_size must be None or an integer >= 1, got {value}")


def num_examples(batch: PyTree, *, allow_empty: bool = False) -> int:
  """The size of the leading (example) axis shared by every leaf of `batch`.

  Static shapes only, so it works under `jit`. Raises ValueError naming the
  first scalar leaf (it has no example axis), if the leaves disagree, or
  (unless `allow_empty`) if the batch has no leaves or 0 examples.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(batch)
  if not flat:
    if allow_empty:
      return 0
    raise ValueError("batch has no leaves: it needs at least one example")
  for path, x in flat:
    if np.ndim(x) == 0:
      raise ValueError(
        f"{_trees.path_str('batch', path)}: a scalar leaf has no example "
        "axis (every batch leaf needs the leading example axis B)"
      )
  sizes = {np.shape(x)[0] for _, x in flat}
  if len(sizes) != 1:
    raise ValueError(
      f"batch leaves disagree on the leading (example) axis: {sorted(sizes)}"
    )
  n = sizes.pop()
  if n == 0 and not allow_empty:
    raise ValueError(
      f"{_trees.path_str('batch', flat[0][0])}: the batch has 0 examples "
      "(leading axis); a Fisher needs at least one"
    )
  return n


@jax.jit
def _bad_entries(leaves: list, masks: list) -> jax.Array:
  """[n, 2] bool: does leaf i hold (negative, NaN/inf) entries where masked."""
  rows = []
  for f, m in zip(leaves, masks, strict=True):
    f = jnp.asarray(f)
    neg, nonfinite = f < 0, ~jnp.isfinite(f)
    if m is not None:
      m = jnp.broadcast_to(m, f.shape)
      neg, nonfinite = neg & m, nonfinite & m
    rows.append(jnp.stack([jnp.any(neg), jnp.any(nonfinite)]))
  return jnp.stack(rows)


def fisher_values(
  name: str, tree: PyTree, leaves: list, masks: list | None = None
) -> None:
  """Raises ValueError if a concrete Fisher leaf is negative, NaN or inf.

  `leaves` are the flattened leaves of `tree` (for the path in the message)
  and `masks` the matching mask leaves (None: every entry counts; a leaf
  whose mask is False is skipped, an array mask limits the check to its True
  entries). Leaves that are traced, or whose mask is, are not checked (their
  values do not exist yet), so under `jit` this adds nothing to the
  computation. Concrete leaves are checked on their device, also while a
  function that closes over them is traced, with one transfer of a few
  bools. Complex leaves raise TypeError.
  """
  idx, fs, ms = [], [], []
  for i, f in enumerate(leaves):
    m = None if masks is None else masks[i]
    dt = _trees.dtype(f)
    if dt is not None and np.issubdtype(dt, np.complexfloating):
      _trees.check_real(name, _trees.leaf_path(tree, i), f)
    if m is False or (isinstance(m, np.bool_) and not m):
      continue
    if isinstance(f, jax.core.Tracer) or isinstance(m, jax.core.Tracer):
      continue
    if m is True or isinstance(m, np.bool_):
      m = None
    idx.append(i)
    fs.append(f)
    ms.append(m)
  if not idx:
    return
  with jax.ensure_compile_time_eval():
    bad = np.asarray(_bad_entries(fs, ms))
  for i, (neg, nonfinite) in zip(idx, bad, strict=True):
    if neg or nonfinite:
      what = "NaN or infinite" if nonfinite else "negative"
      raise ValueError(
        f"{_trees.path_str(name, _trees.leaf_path(tree, i))}: {what} "
        "entries; a Fisher must be finite and >= 0"
      )
