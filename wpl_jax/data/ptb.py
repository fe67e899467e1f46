"""Penn Treebank (Mikolov's 10k-word split): token ids and LM batches."""

import os
import pathlib
from typing import NamedTuple

import numpy as np

from wpl_jax.data._errors import DataError

__all__ = ["EOS", "PTBData", "batchify", "get_batch", "load_ptb", "ptb_files"]

EOS = "<eos>"  # appended to every line, as in the reference code bases
_SPLITS = ("train", "valid", "test")


class PTBData(NamedTuple):
  """The three PTB splits as token ids over one vocabulary.

  Attributes:
    train: int32 [num_train_tokens] token ids, `<eos>` ending each line.
    valid: int32 [num_valid_tokens].
    test: int32 [num_test_tokens].
    vocab: id -> word, in order of first appearance in the training split.
  """

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  vocab: list[str]


def _find(data_dir: pathlib.Path, split: str) -> pathlib.Path:
  """Returns `ptb.{split}.txt` if present, else `{split}.txt`."""
  for name in (f"ptb.{split}.txt", f"{split}.txt"):
    if (data_dir / name).is_file():
      return data_dir / name
  raise DataError(
    f"PTB file not found: {data_dir / f'ptb.{split}.txt'} "
    f"(or {split}.txt in the same directory)"
  )


def _read_lines(path: pathlib.Path) -> list[list[str]]:
  """Returns each line of `path` split on whitespace, with EOS appended.

  A UTF-8 byte-order mark (some editors write one) is not a word.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      return [line.split() + [EOS] for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from None


def _encode(path: pathlib.Path, word_to_id: dict[str, int]) -> np.ndarray:
  """Maps the words of `path` to ids; a word outside the vocab -> DataError."""
  ids = []
  for lineno, words in enumerate(_read_lines(path), start=1):
    try:
      ids.extend(map(word_to_id.__getitem__, words))
    except KeyError as e:
      raise DataError(
        f"{path}:{lineno}: word {e.args[0]!r} is not in the training vocabulary"
      ) from None
  return np.asarray(ids, np.int32)


def ptb_files(data_dir: str | os.PathLike) -> list[pathlib.Path]:
  """The train, valid and test files `load_ptb` reads from `data_dir`.

  Raises:
    DataError: a file is missing.
  """
  data_dir = pathlib.Path(data_dir)
  return [_find(data_dir, split) for split in _SPLITS]


def load_ptb(data_dir: str | os.PathLike) -> PTBData:
  """Loads the PTB train, valid and test splits from `data_dir`.

  Files may be named `ptb.train.txt` (Mikolov's release) or `train.txt` (the
  ENAS and multi-model-forgetting code bases); the first is used if both exist.
  Each line is split on whitespace and `<eos>` appended. The vocabulary is the
  training words in order of first appearance (10,000 words for the standard
  files, `<unk>` and `<eos>` included); valid and test may not add words.

  Args:
    data_dir: directory holding the three files.

  Returns:
    PTBData with int32 [num_tokens] id arrays per split and the vocabulary.
    The standard files give 929,589 / 73,760 / 82,430 tokens.

  Raises:
    DataError: a file is missing or unreadable, the training split is empty,
      or a valid/test word is not in the training vocabulary (the message
      names the word, the file and the line).
  """
  paths = dict(zip(_SPLITS, ptb_files(data_dir), strict=True))
  word_to_id: dict[str, int] = {}
  train = [
    word_to_id.setdefault(word, len(word_to_id))
    for words in _read_lines(paths["train"])
    for word in words
  ]
  if not train:
    raise DataError(f"{paths['train']}: empty, expected training text")
  return PTBData(
    train=np.asarray(train, np.int32),
    valid=_encode(paths["valid"], word_to_id),
    test=_encode(paths["test"], word_to_id),
    vocab=list(word_to_id),
  )


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts a token stream into `batch_size` contiguous columns.

  Column b holds tokens [b * T, (b + 1) * T) of the stream, with
  T = len(ids) // batch_size; the last len(ids) % batch_size tokens are
  dropped. Truncated BPTT then walks down the rows.

  Args:
    ids: [num_tokens] token ids.
    batch_size: number of columns B, >= 1.

  Returns:
    [T, B] array (time-major) of the same dtype as `ids`, C-contiguous.

  Raises:
    ValueError: `ids` is not 1-D, `batch_size` < 1, or there are fewer than
      `batch_size` tokens.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  num_steps = len(ids) // batch_size
  if num_steps == 0:
    raise ValueError(f"{len(ids)} tokens cannot fill {batch_size} columns")
  columns = ids[: num_steps * batch_size].reshape(batch_size, num_steps)
  return np.ascontiguousarray(columns.T)


def get_batch(
  source: np.ndarray, i: int, bptt: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns the BPTT window of `source` starting at row `i`.

  Args:
    source: [T, B] time-major ids from `batchify`.
    i: first row, 0 <= i < T - 1.
    bptt: window length; the window is shortened to L = min(bptt, T - 1 - i)
      so that every input has a target.

  Returns:
    (inputs, targets), both [L, B]: rows [i, i + L) and [i + 1, i + 1 + L),
    views into `source`.

  Raises:
    ValueError: `bptt` < 1 or the window would be empty.
  """
  if bptt < 1:
    raise ValueError(f"bptt must be >= 1, got {bptt}")
  length = min(bptt, len(source) - 1 - i)
  if i < 0 or length < 1:
    raise ValueError(f"row {i} leaves no targets in a source of {len(source)}")
  return source[i : i + length], source[i + 1 : i + 1 + length]


def eval_windows(
  ids: np.ndarray, batch_size: int, bptt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts a token stream into equal BPTT windows with a padding mask.

  The stream is split into `batch_size` contiguous columns (`ptb.batchify`;
  with 1 column every token but the first is a target) and the L - 1
  targets are padded to a multiple of `bptt`.

  Returns:
    `(inputs, targets, mask)`: int32[W, bptt, batch_size] twice and
    float32[W, bptt, batch_size] (1 on real targets, 0 on padding).
  """
  src = batchify(ids, batch_size)
  n = len(src) - 1
  w = -(-n // bptt)
  pad = w * bptt - n
  x = np.concatenate([src[:-1], np.zeros((pad, batch_size), src.dtype)])
  y = np.concatenate([src[1:], np.zeros((pad, batch_size), src.dtype)])
  m = np.concatenate(
    [
      np.ones((n, batch_size), np.float32),
      np.zeros((pad, batch_size), np.float32),
    ]
  )
  shape = (w, bptt, batch_size)
  return (
    x.reshape(shape).astype(np.int32),
    y.reshape(shape).astype(np.int32),
    m.reshape(shape),
  )
