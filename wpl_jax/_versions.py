"""The JAX/Flax pairs wpl_jax runs on, checked at import.

Tested stacks (CI runs both): jax 0.10.2 + flax 0.12.8 (Python 3.11,
requirements.txt) and jax 0.11.2 + flax 0.12.12 (Python 3.12,
requirements-jax011.txt). flax 0.12.8 cannot import `flax.nnx` on jax 0.11
(`jax.experimental.hijax` lost `HiPrimitive`); flax >= 0.12.9 needs jax >=
0.11.1. pyproject.toml's bounds cannot couple the two, so the import of
wpl_jax refuses that pair with one line saying what to install.
"""

from importlib import metadata


def _parse(version: str) -> tuple[int, ...]:
  parts = []
  for p in version.split(".")[:3]:
    digits = "".join(ch for ch in p if ch.isdigit())
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def incompatibility(jax_version: str, flax_version: str | None) -> str | None:
  """Why this jax/flax pair does not work, or None if it does."""
  if flax_version is None:
    return None
  if _parse(jax_version) >= (0, 11) and _parse(flax_version) < (0, 12, 9):
    return (
      f"wpl_jax: flax {flax_version} does not work with jax {jax_version} "
      "(flax.nnx fails to import); install flax>=0.12.9 "
      "(see requirements-jax011.txt)"
    )
  return None


def check() -> None:
  """Raises ImportError naming the fix if the installed pair is broken."""
  try:
    flax_version = metadata.version("flax")
  except metadata.PackageNotFoundError:
    flax_version = None
  problem = incompatibility(metadata.version("jax"), flax_version)
  if problem:
    raise ImportError(problem)
