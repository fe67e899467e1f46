"""Every numeric config field is range-checked before any work (issue 13)."""

import math

from absl.testing import absltest, parameterized

from experiments import enas_ptb, space32, two_models
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import truth as enas_truth
from wpl_jax.runtime import validation
from wpl_jax.two_models import study as two_models_train


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[leaf] = value


class EnasValidationTest(parameterized.TestCase):
  @parameterized.parameters(
    ("wpl.alpha", -1.0),
    ("wpl.alpha", math.nan),
    ("wpl.alpha", math.inf),
    ("shared.lr", -1.0),
    ("shared.lr", 0.0),
    ("controller.lr", -3.5e-4),
    ("data.batch_size", 0),
    ("data.bptt", 0),
    ("search.epochs", 0),
    ("model.hidden", 0),
    ("model.dropout_input", 1.0),
    ("wpl.ema_new", 1.5),
    ("wpl.clip", -1.0),
    ("retrain.lr", -20.0),
    ("controller.baseline_decay", 2.0),
  )
  def test_bad_value_names_the_field(self, path, value):
    config = enas_ptb.get_config("smoke")
    _set(config, path, value)
    with self.assertRaisesRegex(ValueError, f"config.{path}="):
      enas_search.validate(config)

  def test_epochs_zero_allowed_with_a_given_arch(self):
    config = enas_ptb.get_config("smoke")
    config.search.epochs = 0
    config.retrain.arch = "tanh|0:relu|1:tanh"
    enas_search.validate(config)

  @parameterized.parameters(
    ("truth.lr", -1.0), ("truth.epochs", 0), ("truth.lr_final", 2.0)
  )
  def test_truth(self, path, value):
    config = space32.get_config("truth,smoke")
    _set(config, path, value)
    with self.assertRaisesRegex(ValueError, f"config.{path}="):
      enas_truth.validate(config)

  def test_defaults_are_valid(self):
    for arg in ("paper", "cpu", "smoke", "cpu,wpl", "cpu,clean"):
      enas_search.validate(enas_ptb.get_config(arg))
    for arg in ("enas,off", "random,reference", "enas,clean,smoke"):
      enas_search.validate(space32.get_config(arg))
    enas_truth.validate(space32.get_config("truth"))


class TwoModelsValidationTest(parameterized.TestCase):
  @parameterized.parameters(
    ("wpl.alpha", -1.0),
    ("wpl.alpha", math.nan),
    ("wpl.alphas", (1.0, -1.0)),
    ("wpl.alphas", (math.nan,)),
    ("l2.strength", -1.0),
    ("opt_b.lr", -1e-3),
    ("opt_a.lr", 0.0),
    ("protocol.batch_size", 0),
    ("fisher.batch_size", 0),
    ("model.width", 0),
  )
  def test_bad_value_names_the_field(self, path, value):
    config = two_models.get_config("smoke")
    _set(config, path, value)
    with self.assertRaisesRegex(ValueError, f"config.{path}="):
      two_models_train.validate(config)

  def test_defaults_are_valid(self):
    for arg in ("digits", "mnist", "smoke", "smoke_mnist"):
      two_models_train.validate(two_models.get_config(arg))


class MessageTest(absltest.TestCase):
  def test_one_line_with_range(self):
    config = enas_ptb.get_config("smoke")
    config.wpl.alpha = -1.0
    with self.assertRaises(ValueError) as e:
      validation.number(config, "wpl.alpha", min=0)
    self.assertEqual(
      str(e.exception), "config.wpl.alpha=-1.0 must be a number >= 0"
    )
    config.wpl.ema_new = 0.0
    with self.assertRaises(ValueError) as e:
      validation.number(config, "wpl.ema_new", min=0, max=1, open_min=True)
    self.assertEqual(
      str(e.exception), "config.wpl.ema_new=0.0 must be a number in (0, 1]"
    )


if __name__ == "__main__":
  absltest.main()
