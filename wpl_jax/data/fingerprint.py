"""What data a run read: size and SHA-256 of each file, for run.json.

`wpl_jax.runtime.workdir.claim` stores it (`extra={"data": ...}`) and refuses a
resume on other data, naming the file. Keys are file names, not paths, so
the data may move (`--data_dir` may change on resume) but not change.

Example:
  fingerprint.ptb("../shared/data/ptb")
  # {"ptb.train.txt": {"bytes": 5101618, "sha256": "..."}, ...}
"""

import hashlib
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from wpl_jax.data._errors import DataError
from wpl_jax.data.mnist import mnist_files
from wpl_jax.data.ptb import ptb_files

__all__ = ["digits", "files", "mnist", "ptb"]

Fingerprint = dict[str, dict[str, Any]]
DIGITS = "digits (scikit-learn)"


def files(paths: Iterable[str | os.PathLike]) -> Fingerprint:
  """{file name: {"bytes": size, "sha256": hex digest}}, each read once.

  Raises:
    DataError: a file cannot be read (the message names it).
  """
  out = {}
  for path in map(pathlib.Path, paths):
    try:
      with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        size = f.tell()
    except OSError as e:
      raise DataError(f"{path}: cannot read ({e.strerror})") from None
    out[path.name] = {"bytes": size, "sha256": digest.hexdigest()}
  return out


def ptb(data_dir: str | os.PathLike) -> Fingerprint:
  """The PTB files `load_ptb(data_dir)` reads."""
  return files(ptb_files(data_dir))


def mnist(data_dir: str | os.PathLike) -> Fingerprint:
  """The MNIST files `load_mnist(data_dir)` reads, as stored (raw or .gz)."""
  return files(mnist_files(data_dir))


def digits() -> Fingerprint:
  """scikit-learn's bundled digits (no file of ours): pixels and labels.

  The 1,797 x 64 pixel counts (0-16) and labels as uint8 bytes, so that
  the fingerprint does not depend on how scikit-learn stores them.
  """
  from sklearn import datasets  # noqa: PLC0415 (a second to import)

  bunch = datasets.load_digits()
  content = (
    np.asarray(bunch.data, np.uint8).tobytes()
    + np.asarray(bunch.target, np.uint8).tobytes()
  )
  sha = hashlib.sha256(content).hexdigest()
  return {DIGITS: {"bytes": len(content), "sha256": sha}}
