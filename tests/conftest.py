"""Shared pytest configuration: strict JAX flags and the shared data dir."""

import os
import pathlib

# Tests are dominated by XLA compile time on CPU; the backend's optimization
# passes roughly double it and buy nothing at test sizes. Set before JAX
# starts (subprocesses such as main.py smoke runs inherit it).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# On a GPU each pytest-xdist worker would otherwise take 75 % of the
# device's memory at start-up, and the second worker would run out.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)

# absltest helpers such as create_tempdir read flags, which pytest never
# parses.
flags.FLAGS.mark_as_parsed()

# Tests and CI read real data from ../shared/data beside the project root,
# unless WPL_DATA_DIR points elsewhere.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(
  os.environ.get("WPL_DATA_DIR", _ROOT.parent / "shared" / "data")
)
