"""Tests for wpl_jax.data.mnist: IDX parsing, loading, errors, download."""

import gzip
import hashlib
import shutil
import socket

import numpy as np
from _data_fixtures import (
  TEST_IMAGES,
  TEST_LABELS,
  TRAIN_IMAGES,
  TRAIN_LABELS,
  idx_bytes,
  make_tempdir,
  serve_directory,
  tiny_mnist,
  write_idx_files,
)
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

from wpl_jax.data import (
  MNIST_FILES,
  DataError,
  download_mnist,
  load_mnist,
  read_idx,
)

MNIST_DIR = DATA_DIR / "mnist"
STEMS = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def _normalize(images: np.ndarray) -> np.ndarray:
  """The documented normalization, written independently of the library."""
  flat = images.reshape(len(images), -1).astype(np.float64)
  return (flat / 255.0 - 0.1307) / 0.3081


def _mean_std(x: np.ndarray) -> tuple[float, float]:
  """Mean and std of a 2-D array, accumulated in float64 without big copies."""
  mean = x.mean(dtype=np.float64)
  mean_square = np.einsum("ij,ij->", x, x, dtype=np.float64) / x.size
  return mean, np.sqrt(mean_square - mean**2)


class ReadIdxTest(parameterized.TestCase):
  @parameterized.named_parameters(("raw", False), ("gzip", True))
  def test_round_trip(self, compress):
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    content = idx_bytes(array)
    path = make_tempdir(self) / "idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    got = read_idx(path)
    self.assertEqual(got.dtype, np.uint8)
    np.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 7  # the result is the caller's to modify

  @parameterized.named_parameters(
    ("bad_magic", lambda c: b"\x01" + c[1:], "magic"),
    ("int32_type", lambda c: c[:2] + b"\x0c" + c[3:], "type code"),
    ("truncated", lambda c: c[:-1], "truncated"),
    ("trailing_bytes", lambda c: c + b"\x00", "trailing"),
    ("truncated_header", lambda c: c[:6], "header"),
    ("empty", lambda c: b"", "too short"),
  )
  def test_malformed_file_names_file(self, corrupt, problem):
    content = corrupt(idx_bytes(np.zeros((2, 3), np.uint8)))
    path = make_tempdir(self) / "bad-idx"
    path.write_bytes(content)
    with self.assertRaisesRegex(DataError, f"bad-idx.*{problem}"):
      read_idx(path)

  def test_truncated_gzip_names_file(self):
    gz = gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8)))
    path = make_tempdir(self) / "cut.gz"
    path.write_bytes(gz[: len(gz) // 2])
    with self.assertRaisesRegex(DataError, "cut.gz.*gzip"):
      read_idx(path)

  def test_missing_file_names_file(self):
    path = make_tempdir(self) / "absent-idx"
    with self.assertRaisesRegex(DataError, "absent-idx"):
      read_idx(path)


class LoadMnistRealTest(parameterized.TestCase):
  """The real files in the shared data directory."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = load_mnist(MNIST_DIR)

  def test_shapes_and_dtypes(self):
    data = self.data
    self.assertEqual(data.x_train.shape, (60_000, 784))
    self.assertEqual(data.y_train.shape, (60_000,))
    self.assertEqual(data.x_test.shape, (10_000, 784))
    self.assertEqual(data.y_test.shape, (10_000,))
    self.assertEqual(data.x_train.dtype, np.float32)
    self.assertEqual(data.x_test.dtype, np.float32)
    self.assertEqual(data.y_train.dtype, np.int32)
    self.assertEqual(data.y_test.dtype, np.int32)
    self.assertEqual(data.num_classes, 10)

  def test_labels(self):
    for y in (self.data.y_train, self.data.y_test):
      np.testing.assert_array_equal(np.unique(y), np.arange(10))
    # The well-known first labels of each split.
    np.testing.assert_array_equal(
      self.data.y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    )
    np.testing.assert_array_equal(
      self.data.y_test[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    )

  def test_raw_train_pixel_statistics(self):
    pixels = read_idx(MNIST_DIR / f"{TRAIN_IMAGES}.gz").reshape(-1, 784)
    mean, std = np.divide(_mean_std(pixels), 255.0)
    self.assertAlmostEqual(mean, 0.1307, delta=1e-4)
    self.assertAlmostEqual(std, 0.3081, delta=1e-4)

  def test_normalized_train_statistics(self):
    mean, std = _mean_std(self.data.x_train)
    self.assertAlmostEqual(mean, 0.0, delta=1e-3)
    self.assertAlmostEqual(std, 1.0, delta=1e-3)

  def test_normalization_matches_formula(self):
    images = read_idx(MNIST_DIR / f"{TEST_IMAGES}.gz")[:100]
    np.testing.assert_allclose(
      self.data.x_test[:100], _normalize(images), atol=1e-5
    )

  def test_present_files_are_not_downloaded(self):
    # Also checks MNIST_FILES against the real files.
    self.assertEqual(tuple(MNIST_FILES), STEMS)
    with serve_directory(make_tempdir(self)) as (url, requested):
      download_mnist(MNIST_DIR, base_url=url)
    self.assertEmpty(requested)


class LoadMnistErrorsTest(parameterized.TestCase):
  """Damaged copies of the real files."""

  def setUp(self):
    super().setUp()
    self.dir = make_tempdir(self)
    for stem in STEMS:
      shutil.copy(MNIST_DIR / f"{stem}.gz", self.dir)

  def _raw(self, stem: str) -> bytearray:
    """Replaces `stem`.gz by its uncompressed copy; returns the content."""
    gz_path = self.dir / f"{stem}.gz"
    content = bytearray(gzip.decompress(gz_path.read_bytes()))
    gz_path.unlink()
    return content

  @parameterized.parameters(*STEMS)
  def test_missing_file(self, stem):
    (self.dir / f"{stem}.gz").unlink()
    with self.assertRaisesRegex(DataError, f"not found: .*{stem}"):
      load_mnist(self.dir)

  @parameterized.parameters(TRAIN_IMAGES, TEST_LABELS)
  def test_flipped_bytes_in_raw_file(self, stem):
    content = self._raw(stem)
    content[-3:] = bytes(255 - b for b in content[-3:])
    (self.dir / stem).write_bytes(content)
    with self.assertRaisesRegex(DataError, f"{stem}: md5"):
      load_mnist(self.dir)

  def test_flipped_bytes_in_gzip_file(self):
    path = self.dir / f"{TRAIN_IMAGES}.gz"
    gz = bytearray(path.read_bytes())
    middle = len(gz) // 2
    gz[middle : middle + 8] = bytes(255 - b for b in gz[middle : middle + 8])
    path.write_bytes(gz)
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}.gz"):
      load_mnist(self.dir)

  def test_truncated_gzip_file(self):
    path = self.dir / f"{TRAIN_LABELS}.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with self.assertRaisesRegex(DataError, f"{TRAIN_LABELS}.gz.*truncated"):
      load_mnist(self.dir)

  def test_truncated_raw_file(self):
    content = self._raw(TRAIN_IMAGES)
    (self.dir / TRAIN_IMAGES).write_bytes(content[:-784])
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}: truncated"):
      load_mnist(self.dir)

  def test_wrong_magic(self):
    content = self._raw(TRAIN_IMAGES)
    content[0] = 0x01  # IDX magic starts with two zero bytes
    (self.dir / TRAIN_IMAGES).write_bytes(content)
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}: bad IDX magic"):
      load_mnist(self.dir)

  def test_raw_file_preferred_over_gzip(self):
    # A bad raw copy beside the good .gz is what gets read, and reported.
    (self.dir / TRAIN_IMAGES).write_bytes(b"\x00\x00\x08")
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}: 3 bytes"):
      load_mnist(self.dir)


class LoadMnistTinyTest(parameterized.TestCase):
  """Synthetic files, read with verify=False."""

  @parameterized.named_parameters(("raw", False), ("gzip", True))
  def test_loads_small_set(self, compress):
    arrays = tiny_mnist()
    tmp = make_tempdir(self)
    write_idx_files(tmp, arrays, compress=compress)
    data = load_mnist(tmp, verify=False)
    self.assertEqual(data.x_train.shape, (5, 784))
    self.assertEqual(data.x_test.shape, (3, 784))
    np.testing.assert_allclose(
      data.x_train, _normalize(arrays[TRAIN_IMAGES]), atol=1e-5
    )
    np.testing.assert_array_equal(data.y_test, arrays[TEST_LABELS])

  def test_verify_rejects_small_set(self):
    tmp = make_tempdir(self)
    write_idx_files(tmp, tiny_mnist(), compress=True)
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}.gz: md5"):
      load_mnist(tmp)

  @parameterized.named_parameters(
    ("label_count", TRAIN_LABELS, np.zeros(4, np.uint8), "labels of shape"),
    ("label_range", TEST_LABELS, np.full(3, 10, np.uint8), "label 10"),
    ("image_size", TEST_IMAGES, np.zeros((3, 28, 27), np.uint8), "28, 28"),
    ("image_rank", TRAIN_IMAGES, np.zeros((5, 784), np.uint8), "28, 28"),
  )
  def test_structure_checked_without_verify(self, stem, array, problem):
    arrays = tiny_mnist() | {stem: array}
    tmp = make_tempdir(self)
    write_idx_files(tmp, arrays, compress=False)
    with self.assertRaisesRegex(DataError, f"{stem}: .*{problem}"):
      load_mnist(tmp, verify=False)


class DownloadMnistTest(parameterized.TestCase):
  """download_mnist against a local server holding a tiny .gz set."""

  def setUp(self):
    super().setUp()
    self.served = make_tempdir(self)
    self.arrays = tiny_mnist()
    self.checksums = write_idx_files(self.served, self.arrays, compress=True)
    self.dest = make_tempdir(self) / "mnist"
    self.server = self.enter_context(serve_directory(self.served))
    self.url, self.requested = self.server

  def _download(self, **kwargs):
    kwargs = {"base_url": self.url, "checksums": self.checksums} | kwargs
    download_mnist(self.dest, timeout=5.0, **kwargs)

  def test_download_then_load(self):
    self._download()
    self.assertEqual(
      sorted(p.name for p in self.dest.iterdir()),
      sorted(f"{stem}.gz" for stem in STEMS),
    )
    self.assertLen(self.requested, 4)
    data = load_mnist(self.dest, verify=False)
    np.testing.assert_array_equal(data.y_train, self.arrays[TRAIN_LABELS])
    self.assertEqual(data.x_train.shape, (5, 784))

  def test_checksum_mismatch_leaves_no_file(self):
    checksums = self.checksums | {TEST_IMAGES: hashlib.md5(b"x").hexdigest()}
    with self.assertRaisesRegex(DataError, f"{TEST_IMAGES}.gz: md5"):
      self._download(checksums=checksums)
    names = [p.name for p in self.dest.iterdir()]
    self.assertNotIn(f"{TEST_IMAGES}.gz", names)
    self.assertEmpty([n for n in names if n.startswith(".")])  # no temp files

  def test_valid_files_not_downloaded_again(self):
    self._download()
    before = {p.name: p.stat().st_mtime_ns for p in self.dest.iterdir()}
    self.requested.clear()
    self._download()
    self.assertEmpty(self.requested)
    after = {p.name: p.stat().st_mtime_ns for p in self.dest.iterdir()}
    self.assertEqual(before, after)

  def test_corrupt_gzip_file_replaced(self):
    self._download()
    (self.dest / f"{TRAIN_LABELS}.gz").write_bytes(b"garbage")
    self.requested.clear()
    self._download()
    self.assertEqual(self.requested, [f"/{TRAIN_LABELS}.gz"])
    load_mnist(self.dest, verify=False)

  def test_bad_raw_file_in_the_way(self):
    self.dest.mkdir()
    (self.dest / TRAIN_IMAGES).write_bytes(b"mine")
    with self.assertRaisesRegex(DataError, f"{TRAIN_IMAGES}: exists"):
      self._download()
    self.assertEqual((self.dest / TRAIN_IMAGES).read_bytes(), b"mine")

  def test_not_found_names_url(self):
    url = f"{self.url}nowhere/"
    with self.assertRaisesRegex(DataError, f"{url}{TRAIN_IMAGES}.gz: HTTP 404"):
      self._download(base_url=url)
    self.assertEmpty(list(self.dest.iterdir()))

  def test_unreachable_server_names_url(self):
    with socket.socket() as s:  # a port that nothing listens on
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with self.assertRaisesRegex(DataError, f"{url}{TRAIN_IMAGES}.gz"):
      self._download(base_url=url)


if __name__ == "__main__":
  absltest.main()
