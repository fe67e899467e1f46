"""Containers shared by the data readers."""

from typing import NamedTuple

import numpy as np


class ClassificationData(NamedTuple):
  """A classification data set split into train and test, as NumPy arrays.

  Attributes:
    x_train: float32 [N, D] normalized inputs.
    y_train: int32 [N] labels in [0, num_classes).
    x_test: float32 [M, D] inputs, normalized with the training statistics.
    y_test: int32 [M] labels in [0, num_classes).
    num_classes: number of classes.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
