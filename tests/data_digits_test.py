"""Tests for wpl_jax.data.digits: shapes, split determinism, normalization."""

import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax.data import load_digits

NUM_EXAMPLES = 1797
# Examples per class in scikit-learn's bundled digits.
CLASS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


class LoadDigitsTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = load_digits()

  def test_shapes_and_dtypes(self):
    data = self.data
    self.assertEqual(data.x_train.shape[1:], (64,))
    self.assertEqual(data.x_test.shape[1:], (64,))
    self.assertLen(data.y_train, len(data.x_train))
    self.assertLen(data.y_test, len(data.x_test))
    self.assertEqual(len(data.x_train) + len(data.x_test), NUM_EXAMPLES)
    self.assertEqual(data.x_train.dtype, np.float32)
    self.assertEqual(data.y_train.dtype, np.int32)
    self.assertEqual(data.x_test.dtype, np.float32)
    self.assertEqual(data.y_test.dtype, np.int32)
    self.assertEqual(data.num_classes, 10)

  @parameterized.parameters(0.2, 0.1, 0.5)
  def test_split_is_stratified(self, test_fraction):
    data = load_digits(test_fraction=test_fraction)
    expected = np.round(test_fraction * np.array(CLASS_SIZES))
    np.testing.assert_array_equal(np.bincount(data.y_test), expected)
    np.testing.assert_array_equal(
      np.bincount(data.y_train) + np.bincount(data.y_test), CLASS_SIZES
    )

  def test_deterministic(self):
    again = load_digits()
    for got, want in zip(again, self.data, strict=True):
      np.testing.assert_array_equal(got, want)

  def test_seed_changes_split(self):
    other = load_digits(seed=1)
    self.assertEqual(other.x_test.shape, self.data.x_test.shape)
    self.assertFalse(np.array_equal(other.x_test, self.data.x_test))

  def test_standardized_with_train_statistics(self):
    self.assertAlmostEqual(self.data.x_train.mean(), 0.0, delta=1e-5)
    self.assertAlmostEqual(self.data.x_train.std(), 1.0, delta=1e-5)
    # Zero pixels map to one value below the mean in both splits.
    zero = self.data.x_train.min()
    self.assertLess(zero, 0.0)
    self.assertEqual(self.data.x_test.min(), zero)

  @parameterized.parameters(0.0, 1.0, -0.1, 1.5)
  def test_bad_test_fraction(self, test_fraction):
    with self.assertRaisesRegex(ValueError, "test_fraction"):
      load_digits(test_fraction=test_fraction)


if __name__ == "__main__":
  absltest.main()
