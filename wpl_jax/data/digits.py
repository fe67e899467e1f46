"""scikit-learn's bundled 8x8 digits: the default data set, no download."""

import numpy as np

from wpl_jax.data._types import ClassificationData

__all__ = ["load_digits"]

_NUM_CLASSES = 10
_MAX_PIXEL = 16.0  # pixels are counts in [0, 16]


def _stratified_split(
  labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted (train, test) indices holding each class in proportion."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    # Keep at least one example of each class on each side.
    n_test = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1)
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(
  *, test_fraction: float = 0.2, seed: int = 0
) -> ClassificationData:
  """Loads the 1,797 8x8 digit images bundled with scikit-learn.

  The split is stratified: each class is shuffled with `seed` and
  `round(test_fraction * class_size)` of its examples go to the test set, so
  the same arguments always give the same split. Pixels are divided by 16,
  then standardized with the scalar mean and std of the training pixels (one
  statistic for all pixels, as for MNIST: per-pixel statistics would blow up
  the border pixels that are almost always zero).

  Args:
    test_fraction: fraction of each class held out for testing, in (0, 1).
    seed: seed of the shuffle that chooses the split.

  Returns:
    ClassificationData with x float32 [N, 64], y int32 [N] in [0, 10) and
    num_classes 10; N is about 1,438 train and 359 test with the defaults.
    Examples keep the bundled order within each split.

  Raises:
    ValueError: `test_fraction` is not in (0, 1).
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  # Imported here: sklearn.datasets takes about a second to import, which
  # users of the other readers should not pay.
  from sklearn import datasets

  bunch = datasets.load_digits()
  x = np.asarray(bunch.data, np.float32) / np.float32(_MAX_PIXEL)
  y = np.asarray(bunch.target, np.int32)
  train, test = _stratified_split(y, test_fraction, seed)
  mean = x[train].mean()
  std = x[train].std()
  x = (x - mean) / std
  return ClassificationData(x[train], y[train], x[test], y[test], _NUM_CLASSES)
