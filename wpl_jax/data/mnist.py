"""MNIST: read, verify and download the four standard IDX files."""

import gzip
import hashlib
import http.client
import math
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

from wpl_jax.data._errors import DataError
from wpl_jax.data._types import ClassificationData

__all__ = [
  "DEFAULT_MIRROR",
  "MEAN",
  "MNIST_FILES",
  "STD",
  "ClassificationData",
  "DataError",
  "download_mnist",
  "load_mnist",
  "mnist_files",
  "read_idx",
]

# Filename stem -> md5 of the UNCOMPRESSED content. Mirrors re-compress the
# files, so the .gz bytes differ between copies while the content does not.
MNIST_FILES: dict[str, str] = {
  "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
  "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
  "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
  "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# The mirror TensorFlow and JAX examples use; yann.lecun.com is unreliable.
DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"

# Pixel statistics of the training set, on the [0, 1] scale.
MEAN = 0.1307
STD = 0.3081

# (images stem, labels stem, number of examples) of each split.
_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000)
_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000)
_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08


def _decompress(raw: bytes, name: str) -> bytes:
  """Returns `raw` gunzipped if it starts with the gzip magic, else as is."""
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(
      f"{name}: not a valid gzip file ({e}); corrupt or truncated"
    ) from None


def _read_content(path: pathlib.Path) -> bytes:
  """Reads a file and returns its uncompressed bytes."""
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror})") from None
  return _decompress(raw, str(path))


def _parse_idx(content: bytes, name: str) -> np.ndarray:
  """Parses uncompressed IDX bytes into a read-only uint8 array."""
  if len(content) < 4:
    raise DataError(f"{name}: {len(content)} bytes, too short for an IDX file")
  zero0, zero1, type_code, ndim = content[:4]
  if zero0 or zero1:
    raise DataError(
      f"{name}: bad IDX magic {content[:4].hex()}, expected 0000XXNN"
    )
  if type_code != _IDX_UBYTE:
    raise DataError(
      f"{name}: IDX type code 0x{type_code:02x}, expected 0x08 (uint8)"
    )
  if ndim == 0:
    raise DataError(f"{name}: IDX header has 0 dimensions, expected >= 1")
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise DataError(
      f"{name}: truncated IDX header, expected {header_size} bytes"
    )
  shape = tuple(
    int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4)
  )
  expected = header_size + math.prod(shape)  # exact: no int64 overflow
  if len(content) != expected:
    problem = "truncated" if len(content) < expected else "trailing bytes"
    raise DataError(
      f"{name}: {problem}: {len(content)} bytes, expected {expected} for "
      f"an IDX array of shape {shape}"
    )
  return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file, raw or gzip-compressed.

  Args:
    path: the file; gzip compression is detected from its first bytes, not its
      name.

  Returns:
    A writable uint8 array with the shape stored in the file's header.

  Raises:
    DataError: the file is missing, is not gzip or IDX, holds another element
      type than uint8, or is shorter or longer than its header says.
  """
  path = pathlib.Path(path)
  return _parse_idx(_read_content(path), str(path)).copy()


def _find(data_dir: pathlib.Path, stem: str) -> pathlib.Path:
  """Returns the raw file for `stem` if present, else the .gz one."""
  for name in (stem, stem + ".gz"):
    if (data_dir / name).is_file():
      return data_dir / name
  raise DataError(
    f"MNIST file not found: {data_dir / stem}[.gz]; run download_mnist"
  )


def mnist_files(data_dir: str | os.PathLike) -> list[pathlib.Path]:
  """The four files `load_mnist` reads from `data_dir` (raw or .gz).

  Raises:
    DataError: a file is missing.
  """
  data_dir = pathlib.Path(data_dir)
  return [_find(data_dir, stem) for stem in MNIST_FILES]


def _stem(path: pathlib.Path) -> str:
  """Returns the MNIST filename stem of `path` (its name without .gz)."""
  return path.name.removesuffix(".gz")


def _check_md5(content: bytes, expected: str, name: str) -> None:
  """Raises DataError unless md5(content) == expected."""
  actual = hashlib.md5(content).hexdigest()
  if actual != expected:
    raise DataError(
      f"{name}: md5 of uncompressed content is {actual}, expected {expected}"
      " (corrupt or wrong file)"
    )


def _read_checked(path: pathlib.Path, verify: bool) -> np.ndarray:
  """Reads one IDX file, checking its md5 if `verify`."""
  content = _read_content(path)
  # Parse before hashing: a structural error says more than an md5 one.
  array = _parse_idx(content, str(path))
  if verify:
    _check_md5(content, MNIST_FILES[_stem(path)], str(path))
  return array


def _check_split(
  arrays: dict[str, np.ndarray],
  paths: dict[str, pathlib.Path],
  split: tuple[str, str, int],
  verify: bool,
) -> None:
  """Checks a split's image shape, label count and range (and size)."""
  images_stem, labels_stem, count = split
  images, labels = arrays[images_stem], arrays[labels_stem]
  images_path, labels_path = paths[images_stem], paths[labels_stem]
  if images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE:
    raise DataError(
      f"{images_path}: images of shape {images.shape}, expected [N, 28, 28]"
    )
  if labels.ndim != 1 or len(labels) != len(images):
    raise DataError(
      f"{labels_path}: labels of shape {labels.shape}, expected [{len(images)}]"
      f" to match {images_path.name}"
    )
  if verify and len(images) != count:
    raise DataError(f"{images_path}: {len(images)} images, expected {count}")
  if labels.size and labels.max() >= _NUM_CLASSES:
    raise DataError(
      f"{labels_path}: label {labels.max()}, expected labels in [0, 10)"
    )


def _normalize(images: np.ndarray) -> np.ndarray:
  """Maps uint8 [N, 28, 28] to float32 [N, 784] (x / 255 - MEAN) / STD."""
  # One multiply and one in-place subtract, in float32 throughout.
  scale = np.float32(1.0 / (255.0 * STD))
  shift = np.float32(MEAN / STD)
  x = np.multiply(images.reshape(len(images), -1), scale, dtype=np.float32)
  x -= shift
  return x


def load_mnist(
  data_dir: str | os.PathLike, *, verify: bool = True
) -> ClassificationData:
  """Loads MNIST from the four standard IDX files in `data_dir`.

  Each file may be raw (`train-images-idx3-ubyte`) or gzip-compressed
  (`train-images-idx3-ubyte.gz`); the raw one is used when both exist.

  Args:
    data_dir: directory holding the files.
    verify: check the md5 of each file's uncompressed content against
      `MNIST_FILES` and the example counts (60,000 train, 10,000 test). With
      False, only the IDX structure, 28x28 images, matching label counts and
      the label range are checked, so small synthetic sets can be read.

  Returns:
    ClassificationData with x float32 [N, 784] scaled as
    (pixel / 255 - 0.1307) / 0.3081, y int32 [N] in [0, 10), num_classes 10.

  Raises:
    DataError: a file is missing, corrupt, truncated or of the wrong shape;
      the message names the file.
  """
  # Find, read and check all four files before converting any, so that a
  # missing or corrupt file fails fast.
  paths = dict(zip(MNIST_FILES, mnist_files(data_dir), strict=True))
  arrays = {stem: _read_checked(path, verify) for stem, path in paths.items()}
  for split in (_TRAIN, _TEST):
    _check_split(arrays, paths, split, verify)
  return ClassificationData(
    x_train=_normalize(arrays[_TRAIN[0]]),
    y_train=arrays[_TRAIN[1]].astype(np.int32),
    x_test=_normalize(arrays[_TEST[0]]),
    y_test=arrays[_TEST[1]].astype(np.int32),
    num_classes=_NUM_CLASSES,
  )


def _is_valid(path: pathlib.Path, md5: str) -> bool:
  """Whether `path` exists and its uncompressed content has this md5."""
  if not path.is_file():
    return False
  try:
    content = _read_content(path)
  except DataError:
    return False
  return hashlib.md5(content).hexdigest() == md5


def _fetch(url: str, timeout: float) -> bytes:
  """Returns the body of `url`; any HTTP or network failure -> DataError."""
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      return response.read()
  except urllib.error.HTTPError as e:
    raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
  except urllib.error.URLError as e:
    raise DataError(f"{url}: cannot download ({e.reason})") from None
  except (OSError, http.client.HTTPException) as e:  # e.g. a cut connection
    raise DataError(f"{url}: cannot download ({e!r})") from None


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to a temp file beside `path`, then renames it over."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it 0o600: private, unlike the data.
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def download_mnist(
  data_dir: str | os.PathLike,
  *,
  base_url: str = DEFAULT_MIRROR,
  checksums: dict[str, str] = MNIST_FILES,
  timeout: float = 30.0,
) -> None:
  """Downloads the MNIST .gz files into `data_dir`, verifying each one.

  For each stem in `checksums`, fetches `{base_url}/{stem}.gz`, checks the md5
  of its uncompressed content and only then moves it into place (temp file +
  rename), so `data_dir` never holds a partial or unverified file. Files
  already present (raw or .gz) with the right content are not fetched again;
  a .gz file with the wrong content is replaced.

  Args:
    data_dir: directory to write into; created if missing.
    base_url: URL of the directory holding the .gz files.
    checksums: filename stem -> md5 of the uncompressed content.
    timeout: seconds to wait for the connection and for each read.

  Raises:
    DataError: a download failed (the message names the URL), its content has
      the wrong md5, or a raw file with the wrong content is in the way.
  """
  data_dir = pathlib.Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  for stem, md5 in checksums.items():
    raw_path, gz_path = data_dir / stem, data_dir / (stem + ".gz")
    if _is_valid(raw_path, md5) or _is_valid(gz_path, md5):
      continue
    if raw_path.exists():
      # load_mnist prefers the raw file, so a fresh .gz would not be read;
      # the raw file is the user's, so do not delete it either.
      raise DataError(
        f"{raw_path}: exists but its md5 is not {md5}; remove it and retry"
      )
    url = f"{base_url.rstrip('/')}/{stem}.gz"
    data = _fetch(url, timeout)
    _check_md5(_decompress(data, url), md5, url)
    _write_atomically(gz_path, data)
