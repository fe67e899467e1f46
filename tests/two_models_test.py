"""Tests of the two-model MLPs and their training loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from experiments import two_models as two_models_config
from wpl_jax import fisher as fisher_lib
from wpl_jax import partition
from wpl_jax.two_models import model as model_lib
from wpl_jax.two_models import study as train_lib


def _joint(num_shared: int, width: int = 8, in_dim: int = 5):
  params_a = model_lib.init_a(
    jax.random.key(0), in_dim=in_dim, width=width, num_classes=3
  )
  return params_a, model_lib.attach_b(
    params_a, jax.random.key(1), num_shared=num_shared
  )


def _bump(params, name):
  out = dict(params)
  out[name] = {
    "kernel": params[name]["kernel"] + 0.5,
    "bias": params[name]["bias"],
  }
  return out


class ModelTest(parameterized.TestCase):
  @parameterized.parameters(1, 2, 3)
  def test_layout(self, k):
    _, params = _joint(k)
    names = set(params)
    self.assertEqual(
      {f"shared_{i}" for i in range(k)},
      {n for n in names if n.startswith("shared_")},
    )
    self.assertEqual(
      {f"a_{i}" for i in range(k, 4)} | {"a_head"},
      {n for n in names if n.startswith("a_")},
    )
    self.assertEqual(
      {f"b_{i}" for i in range(k, 6)} | {"b_head"},
      {n for n in names if n.startswith("b_")},
    )
    mask = partition.make_mask(params, model_lib.SHARED_REGEX)
    for name, leaves in mask.items():
      for value in leaves.values():
        self.assertEqual(value, name.startswith("shared_"))

  @parameterized.parameters(1, 2, 3)
  def test_attach_keeps_a(self, k):
    params_a, params = _joint(k)
    x = jax.random.normal(jax.random.key(2), (4, 5))
    np.testing.assert_allclose(
      model_lib.forward_a(params_a, x),
      model_lib.forward_a(params, x),
      rtol=1e-6,
    )

  @parameterized.parameters(1, 2, 3)
  def test_sharing(self, k):
    _, params = _joint(k)
    x = jax.random.normal(jax.random.key(2), (4, 5))
    fa = jax.jit(model_lib.forward_a)
    fb = jax.jit(model_lib.forward_b)
    a0, b0 = fa(params, x), fb(params, x)
    # A shared leaf changes both models.
    for i in range(k):
      bumped = _bump(params, f"shared_{i}")
      self.assertGreater(float(jnp.abs(fa(bumped, x) - a0).max()), 1e-4)
      self.assertGreater(float(jnp.abs(fb(bumped, x) - b0).max()), 1e-4)
    # B's private leaves do not touch A; A's private leaves do not touch B.
    for name in [n for n in params if n.startswith("b_")]:
      np.testing.assert_array_equal(fa(_bump(params, name), x), a0)
    for name in [n for n in params if n.startswith("a_")]:
      np.testing.assert_array_equal(fb(_bump(params, name), x), b0)

  def test_attach_rejects_bad_k(self):
    params_a, _ = _joint(1)
    with self.assertRaisesRegex(ValueError, "num_shared=5"):
      model_lib.attach_b(params_a, jax.random.key(1), num_shared=5)


class ConfigTest(parameterized.TestCase):
  @parameterized.parameters(None, "mnist", "smoke", "smoke_mnist")
  def test_variants_validate(self, arg):
    train_lib.validate(two_models_config.get_config(arg))

  def test_unknown_arg(self):
    with self.assertRaisesRegex(ValueError, "unknown variant 'bogus'"):
      two_models_config.get_config("bogus")

  @parameterized.named_parameters(
    ("variant", "variants", ("plain", "ewc"), "variants"),
    ("estimator", "fisher.estimators", ("exact",), "fisher.estimators"),
    ("k", "protocol.shared_layers", (5,), "shared_layers"),
    ("steps", "protocol.b_steps", 45, "multiple"),
  )
  def test_validate_rejects(self, field, value, message):
    config = two_models_config.get_config("smoke")
    *path, last = field.split(".")
    node = config
    for p in path:
      node = node[p]
    node[last] = value
    with self.assertRaisesRegex(ValueError, message):
      train_lib.validate(config)

  def test_runs(self):
    config = two_models_config.get_config("smoke")
    runs = train_lib.make_runs(config)
    l2_grid = {config.l2.strength, *config.l2.strengths}
    wpl_grid = {config.wpl.alpha, *config.wpl.alphas}
    per_seed = 1 + len(l2_grid) + len(config.fisher.estimators) * len(wpl_grid)
    self.assertLen(runs, config.num_seeds * per_seed)
    self.assertLen({r.name for r in runs}, per_seed)


class FisherOfATest(absltest.TestCase):
  def test_fast_per_example_fisher_equals_vmap(self):
    """loss_a is tap-aware: the default path equals vmap(grad) exactly."""
    params = model_lib.init_a(
      jax.random.key(0), in_dim=6, width=5, num_classes=3
    )
    rng = np.random.default_rng(0)
    batch = (
      rng.normal(size=(7, 6)).astype(np.float32),
      rng.integers(0, 3, size=(7,)).astype(np.int32),
    )
    fast = fisher_lib.fisher_diagonal(
      train_lib.loss_a, params, batch, estimator="per_example"
    )
    slow = fisher_lib.fisher_diagonal(
      train_lib.loss_a, params, batch, estimator="per_example", method="vmap"
    )
    chex.assert_trees_all_close(fast, slow, rtol=1e-5, atol=1e-9)


class TrainTest(parameterized.TestCase):
  def test_train_step_lowers_loss_and_keeps_a_private(self):
    params_a, params = _joint(2)
    mask = partition.make_mask(params, model_lib.SHARED_REGEX)
    x = jax.random.normal(jax.random.key(3), (16, 5))
    y = jnp.arange(16) % 3
    tx = train_lib.make_optimizer(two_models_config.get_config("smoke").opt_b)
    ones = jax.tree.map(jnp.ones_like, params)
    penalty = train_lib.Penalty(params, ones, jnp.float32(1.0))
    state = train_lib.TrainState(params, tx.init(params), jnp.zeros([]))
    step = jax.jit(
      lambda s, b, k: train_lib.train_step(
        s,
        b,
        k,
        loss_fn=lambda p, bb: train_lib.loss_b(p, bb, penalty, mask=mask),
        tx=tx,
      )
    )
    losses = []
    for i in range(20):
      state, metrics = step(state, (x, y), jax.random.key(i))
      losses.append(float(metrics["ce"]))
    self.assertLess(losses[-1], losses[0])
    for name in ("a_2", "a_3", "a_head"):
      np.testing.assert_array_equal(
        state.params[name]["kernel"], params[name]["kernel"]
      )
    self.assertFalse(
      np.array_equal(
        state.params["shared_0"]["kernel"], params["shared_0"]["kernel"]
      )
    )
    self.assertGreater(float(metrics["penalty"]), 0.0)
    del params_a

  @pytest.mark.slow
  def test_wpl_protects_a(self):
    """WPL's drop of A is smaller than plain cross-entropy's drop.

    Config: digits, width 32, k = 3 shared layers, converged A (300 Adam
    steps, test accuracy ~0.93), B trained 300 steps with Adam 3e-3 (a
    forgetting regime), WPL with the per-example Fisher, mean-normalised,
    alpha = 10. Measured for seeds 0..5 (one vmapped run of 6 seeds): plain
    drops A by 0.025, 0.056, 0.042, 0.019, 0.058, 0.072; WPL by 0.011, 0.003,
    -0.006, 0.003, 0.006, 0.014: smaller for every seed. The test runs seeds
    0..2 and asks for a mean margin of 0.01 (measured: 0.041 vs 0.003).
    """
    config = _robust_config()
    out = train_lib.train_and_evaluate(config, self.create_tempdir().full_path)
    drop = {r["variant"]: r["drop"]["mean"] for r in out["rows"]}
    self.assertLess(drop["wpl"], drop["plain"] - 0.01, msg=str(drop))


def _robust_config(seed: int = 0, num_seeds: int = 3):
  config = two_models_config.get_config("smoke")
  config.seed = seed
  config.num_seeds = num_seeds
  config.model.width = 32
  config.opt_b.lr = 3e-3
  config.variants = ("plain", "wpl")
  config.fisher.estimators = ("per_example",)
  config.fisher.num_examples = 256
  config.fisher.batch_size = 64
  config.wpl.alpha = 10.0
  config.wpl.alphas = ()
  config.protocol.shared_layers = (3,)
  config.protocol.a_settings = ("converged",)
  config.protocol.a_steps_converged = 300
  config.protocol.a_steps_weak = 10
  config.protocol.a_log_every = 300
  config.protocol.b_steps = 300
  config.protocol.eval_every = 150
  config.protocol.checkpoint_every = 150  # a multiple of eval_every
  config.protocol.early_step = 150
  config.protocol.batch_size = 32
  config.protocol.eval_examples = 0
  return config


if __name__ == "__main__":
  absltest.main()
