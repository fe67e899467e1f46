"""Shared pytest configuration: strict JAX flags and the shared data dir."""

import os
import pathlib

import jax
from absl import flags

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
