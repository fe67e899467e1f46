"""Argument checks of the library's Python-valued arguments (one line each).

Traced values (inside `jit`/`grad`) cannot be inspected and pass through;
Python, NumPy and concrete JAX scalars are checked.
"""

import math

import jax
import numpy as np


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
  """Raises ValueError if a concrete `value` is NaN/inf or out of range."""
  v = concrete_float(value)
  if v is None:
    if not isinstance(value, jax.core.Tracer) and np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
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
