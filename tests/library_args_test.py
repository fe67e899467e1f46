"""Bad Python-valued library arguments: one clear ValueError; low dtypes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax import fisher, loss


def _tree(value=1.0, dtype=jnp.float32):
  return {"w": jnp.full((3,), value, dtype)}


class LibraryArgsTest(parameterized.TestCase):
  @parameterized.parameters(-1.0, math.nan, math.inf, np.float32(-2.0))
  def test_penalty_alpha(self, alpha):
    with self.assertRaisesRegex(ValueError, "alpha="):
      loss.wpl_penalty(_tree(), _tree(0.0), _tree(), alpha=alpha)
    with self.assertRaisesRegex(ValueError, "alpha="):
      loss.add_wpl(alpha)

  def test_penalty_accepts_any_valid_scalar(self):
    for alpha in (2.0, 2, np.float32(2.0), jnp.float32(2.0)):
      v = loss.wpl_penalty(_tree(), _tree(0.0), _tree(), alpha=alpha)
      self.assertAlmostEqual(float(v), 3.0)
    # Traced alpha passes (it cannot be inspected).
    v = jax.jit(
      lambda a: loss.wpl_penalty(_tree(), _tree(0.0), _tree(), alpha=a)
    )(2.0)
    self.assertAlmostEqual(float(v), 3.0)

  @parameterized.named_parameters(
    ("negative_clip", {"clip": -1.0}, "clip="),
    ("zero_clip", {"clip": 0.0}, "clip="),
    ("decay", {"decay": 1.5}, "decay="),
    ("nan_alpha", {"alpha": math.nan, "mode": "reference"}, "alpha="),
    ("negative_alpha", {"alpha": -60.0, "mode": "reference"}, "alpha="),
    ("clean_alpha", {"alpha": 60.0, "mode": "clean"}, "clean mode"),
  )
  def test_update_fisher(self, kwargs, fragment):
    state = fisher.init_state(_tree())
    with self.assertRaisesRegex(ValueError, fragment):
      fisher.update_fisher(state, _tree(), **kwargs)

  def test_clean_mode_accepts_numpy_and_traced_one(self):
    state = fisher.init_state(_tree())
    for alpha in (1, 1.0, np.float32(1.0), jnp.float32(1.0)):
      fisher.update_fisher(state, _tree(), mode="clean", alpha=alpha)
    jax.jit(
      lambda a: fisher.update_fisher(state, _tree(), mode="clean", alpha=a)
    )(1.0)

  @parameterized.parameters(0, -3, 2.5, True)
  def test_chunk_size(self, chunk):
    def loss_fn(p, b):
      return jnp.mean((b["x"] @ p["w"]) ** 2)

    batch = {"x": jnp.ones((4, 3))}
    with self.assertRaisesRegex(ValueError, "chunk_size"):
      fisher.fisher_diagonal(
        loss_fn, _tree(), batch, estimator="per_example", chunk_size=chunk
      )

  @parameterized.parameters(jnp.float16, jnp.bfloat16, jnp.float32)
  def test_add_wpl_low_precision_matches_penalty_gradient(self, dtype):
    anchor = _tree(0.0, dtype)
    # F = 1e-8 is 0 in float16: computed in the parameter dtype the update
    # was exactly 0; in float32 it is F·(θ − θ̂) = 1e-4, representable.
    for f_value, theta in ((1e-8, 1e4), (600.0, 0.5)):
      params = _tree(theta, dtype)
      fisher_tree = {"w": jnp.full((3,), f_value, jnp.float32)}
      tx = loss.add_wpl(1.0)
      zeros = jax.tree.map(jnp.zeros_like, params)
      upd, _ = tx.update(
        zeros,
        tx.init(params),
        params,
        wpl_anchor=anchor,
        wpl_fisher=fisher_tree,
      )
      self.assertEqual(upd["w"].dtype, dtype)
      # Independent value: α·F·(θ − θ̂) with θ as stored in the dtype,
      # rounded once to the dtype.
      stored = float(np.asarray(params["w"][0], np.float32))
      want = np.float32(np.asarray(f_value * stored, dtype))
      self.assertNotEqual(want, 0.0)
      np.testing.assert_allclose(
        np.asarray(upd["w"], np.float32), want, rtol=1e-6
      )
      # And the same as the penalty's gradient (also computed in float32).
      grad = jax.grad(
        lambda p, ft=fisher_tree: loss.wpl_penalty(p, anchor, ft, alpha=1.0)
      )(params)
      np.testing.assert_allclose(
        np.asarray(grad["w"], np.float32), want, rtol=1e-6
      )


if __name__ == "__main__":
  absltest.main()
