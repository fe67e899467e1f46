"""Test helpers for the data readers: tiny IDX files and a local HTTP server."""

import contextlib
import gzip
import hashlib
import http.server
import os
import pathlib
import struct
import tempfile
import threading
import unittest
from collections.abc import Iterator
from unittest import mock

import numpy as np

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def make_tempdir(test: unittest.TestCase) -> pathlib.Path:
  """Returns a fresh directory removed when `test` ends.

  absltest's create_tempdir needs parsed absl flags, which pytest never parses.
  """
  return pathlib.Path(test.enter_context(tempfile.TemporaryDirectory()))


def idx_bytes(array: np.ndarray) -> bytes:
  """Encodes a uint8 array as IDX: 00 00 08 ndim, big-endian dims, data."""
  header = bytes([0, 0, 0x08, array.ndim])
  dims = struct.pack(f">{array.ndim}I", *array.shape)
  return header + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def tiny_mnist(num_train: int = 5, num_test: int = 3) -> dict[str, np.ndarray]:
  """Returns random MNIST-shaped uint8 arrays, stem -> array."""
  rng = np.random.default_rng(0)
  return {
    TRAIN_IMAGES: rng.integers(0, 256, (num_train, 28, 28), np.uint8),
    TRAIN_LABELS: rng.integers(0, 10, (num_train,), np.uint8),
    TEST_IMAGES: rng.integers(0, 256, (num_test, 28, 28), np.uint8),
    TEST_LABELS: rng.integers(0, 10, (num_test,), np.uint8),
  }


def write_idx_files(
  directory: pathlib.Path, arrays: dict[str, np.ndarray], *, compress: bool
) -> dict[str, str]:
  """Writes arrays as `{stem}[.gz]`; returns stem -> md5 of the IDX bytes."""
  checksums = {}
  for stem, array in arrays.items():
    content = idx_bytes(array)
    if compress:
      (directory / f"{stem}.gz").write_bytes(gzip.compress(content, mtime=0))
    else:
      (directory / stem).write_bytes(content)
    checksums[stem] = hashlib.md5(content).hexdigest()
  return checksums


@contextlib.contextmanager
def serve_directory(directory: pathlib.Path) -> Iterator[tuple[str, list]]:
  """Serves `directory` over HTTP on 127.0.0.1; yields (base URL, paths hit)."""
  requested = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves `directory`, records each GET path and logs nothing."""

    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(directory), **kwargs)

    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

    def log_message(self, format, *args):
      del format, args

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  # A short poll interval keeps shutdown() from adding 0.5 s to every test.
  thread = threading.Thread(
    target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
  )
  thread.start()
  host, port = server.server_address[:2]
  # A proxy set in the environment must not intercept local requests.
  no_proxy = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1"}
  try:
    with mock.patch.dict(os.environ, no_proxy):
      yield f"http://{host}:{port}/", requested
  finally:
    server.shutdown()
    server.server_close()
    thread.join()
