"""Readers of standard data files (MNIST, PTB) and the bundled digits."""

from wpl_jax.data._errors import DataError
from wpl_jax.data._types import ClassificationData
from wpl_jax.data.digits import load_digits
from wpl_jax.data.mnist import (
  DEFAULT_MIRROR,
  MNIST_FILES,
  download_mnist,
  load_mnist,
  read_idx,
)
from wpl_jax.data.ptb import PTBData, batchify, get_batch, load_ptb

__all__ = [
  "DEFAULT_MIRROR",
  "MNIST_FILES",
  "ClassificationData",
  "DataError",
  "PTBData",
  "batchify",
  "download_mnist",
  "get_batch",
  "load_digits",
  "load_mnist",
  "load_ptb",
  "read_idx",
]
