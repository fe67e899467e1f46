"""Range checks of config fields: one clear line naming the field and range.

Example:
  validation.number(config, "wpl.alpha", min=0)  # finite, >= 0
  validation.number(config, "shared.lr", min=0, open_min=True)  # > 0
  validation.integer(config, "data.batch_size", min=1)
"""

import math
import numbers

import ml_collections


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _range(min, max, open_min, open_max) -> str:
  lo = "" if min is None else f"{'(' if open_min else '['}{min}"
  hi = "" if max is None else f"{max}{')' if open_max else ']'}"
  if min is not None and max is not None:
    return f"in {lo}, {hi}"
  if min is not None:
    return f"{'>' if open_min else '>='} {min}"
  if max is not None:
    return f"{'<' if open_max else '<='} {max}"
  return "finite"


def number(
  config: ml_collections.ConfigDict,
  path: str,
  *,
  min: float | None = None,  # noqa: A002
  max: float | None = None,  # noqa: A002
  open_min: bool = False,
  open_max: bool = False,
  allow_none: bool = False,
) -> None:
  """Raises ValueError unless `config.<path>` is a finite number in range.

  Args:
    config: the experiment config.
    path: dotted field name, e.g. "wpl.alpha".
    min, max: bounds (None = unbounded); `open_min`/`open_max` exclude them.
    allow_none: None is accepted (a disabled option).
  """
  value = _get(config, path)
  if value is None and allow_none:
    return
  what = _range(min, max, open_min, open_max)
  ok = (
    isinstance(value, numbers.Real)
    and not isinstance(value, bool)
    and math.isfinite(value)
  )
  if ok and min is not None:
    ok = value > min if open_min else value >= min
  if ok and max is not None:
    ok = value < max if open_max else value <= max
  if not ok:
    raise ValueError(f"config.{path}={value!r} must be a number {what}")


def integer(
  config: ml_collections.ConfigDict,
  path: str,
  *,
  min: int | None = None,  # noqa: A002
  max: int | None = None,  # noqa: A002
) -> None:
  """Raises ValueError unless `config.<path>` is an integer in [min, max]."""
  value = _get(config, path)
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if ok and min is not None:
    ok = value >= min
  if ok and max is not None:
    ok = value <= max
  if not ok:
    what = _range(min, max, False, False)
    raise ValueError(f"config.{path}={value!r} must be an integer {what}")


def numbers_in(
  config: ml_collections.ConfigDict,
  path: str,
  *,
  min: float,  # noqa: A002
) -> None:
  """Raises ValueError unless every entry of the sequence is finite, >= min."""
  values = _get(config, path)
  for v in values:
    if (
      not isinstance(v, numbers.Real)
      or isinstance(v, bool)
      or not math.isfinite(v)
      or v < min
    ):
      raise ValueError(
        f"config.{path}={tuple(values)!r}: every entry must be a number "
        f">= {min}, got {v!r}"
      )


def choice(config: ml_collections.ConfigDict, path: str, options) -> None:
  """Raises ValueError unless `config.<path>` is one of `options`."""
  value = _get(config, path)
  if value not in tuple(options):
    raise ValueError(f"config.{path}={value!r} must be one of {tuple(options)}")
