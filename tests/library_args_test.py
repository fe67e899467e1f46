"""Bad library arguments: one clear ValueError or TypeError; low dtypes.

The second group (issue "Reliability, second round", item 9): values the
library cannot use are refused, naming the offending path: a negative,
NaN or infinite Fisher (eagerly; traced ones via `fisher.check_fisher`
under checkify), non-bool masks, complex params, non-scalar or non-numeric
α, empty batches and scalar batch leaves, `verify` on fewer than 2
examples, and a non-scalar loss declared ``reduction='mean'``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from jax.experimental import checkify

from wpl_jax import fisher, fisher_fast, loss


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


def _nested(value=1.0, dtype=jnp.float32):
  return {"a": {"w": jnp.full((3,), value, dtype)}}


def _bad_fisher(bad):
  return {"a": {"w": jnp.array([1.0, bad, 2.0], jnp.float32)}}


def _add_wpl_update(params, anchor, fisher_tree, alpha=1.0, **kwargs):
  tx = loss.add_wpl(alpha, **kwargs)
  zeros = jax.tree.map(jnp.zeros_like, params)
  return tx.update(
    zeros, tx.init(params), params, wpl_anchor=anchor, wpl_fisher=fisher_tree
  )


def _mean_loss(p, b):
  return jnp.mean((b["x"] @ p["w"]) ** 2)


_BAD_F = (("negative", -1.0), ("nan", math.nan), ("inf", math.inf))


class InvalidValuesTest(parameterized.TestCase):
  @parameterized.named_parameters(*_BAD_F)
  def test_bad_fisher_is_refused_naming_the_leaf(self, bad):
    params, anchor, f = _nested(), _nested(0.0), _bad_fisher(bad)
    what = "negative" if bad == -1.0 else "NaN or infinite"
    msg = rf"^fisher\['a'\]\['w'\]: {what} entries; a Fisher must be"
    with self.assertRaisesRegex(ValueError, msg):
      loss.wpl_penalty(params, anchor, f, alpha=1.0)
    with self.assertRaisesRegex(ValueError, r"^wpl_fisher\['a'\]\['w'\]"):
      _add_wpl_update(params, anchor, f)
    state = fisher.init_state(params)
    with self.assertRaisesRegex(ValueError, r"^new_fisher\['a'\]\['w'\]"):
      fisher.consolidate(state, params, f)
    with self.assertRaisesRegex(ValueError, r"^fisher\['a'\]\['w'\]"):
      fisher.check_fisher(f)
    # A concrete Fisher that a jitted function closes over is checked when
    # it is traced.
    with self.assertRaisesRegex(ValueError, msg):
      jax.jit(lambda p: loss.wpl_penalty(p, anchor, f, alpha=1.0))(params)

  def test_bad_fisher_outside_the_mask_is_ignored(self):
    params, anchor = _nested(), _nested(0.0)
    f = _bad_fisher(-1.0)
    off = {"a": {"w": False}}
    elems = {"a": {"w": np.array([True, False, True])}}
    for mask in (off, elems):
      loss.wpl_penalty(params, anchor, f, alpha=1.0, mask=mask)
      _add_wpl_update(params, anchor, f, mask=mask)
      fisher.consolidate(fisher.init_state(params), params, f, mask=mask)
      fisher.check_fisher(f, mask=mask)
    with self.assertRaisesRegex(ValueError, "negative"):
      loss.wpl_penalty(
        params, anchor, f, alpha=1.0, mask={"a": {"w": np.ones(3, bool)}}
      )

  def test_traced_fisher_is_checked_under_checkify_only(self):
    params, anchor, f = _nested(), _nested(0.0), _bad_fisher(-1.0)
    penalty = jax.jit(lambda ff: loss.wpl_penalty(params, anchor, ff, alpha=1))
    # Documented: a traced Fisher has no values to check (-1·1/2 + 1/2 + 1).
    self.assertAlmostEqual(float(penalty(f)), 1.0)

    def checked(ff):
      fisher.check_fisher(ff)
      return loss.wpl_penalty(params, anchor, ff, alpha=1.0)

    err, _ = checkify.checkify(jax.jit(checked))(f)
    self.assertIn("fisher['a']['w']: negative, NaN or infinite", err.get())
    with self.assertRaisesRegex(
      checkify.JaxRuntimeError, r"fisher\['a'\]\['w'\]"
    ):
      err.throw()
    err, out = checkify.checkify(jax.jit(checked))(_nested())
    self.assertIsNone(err.get())
    self.assertAlmostEqual(float(out), 1.5)

  @parameterized.named_parameters(
    ("half", 0.5),
    ("int_one", 1),
    ("int_array", jnp.array([0, 2, 0])),
    ("float_ones", np.ones(3, np.float32)),
  )
  def test_non_bool_mask_is_refused_naming_the_path(self, leaf):
    params, anchor, f = _nested(), _nested(0.0), _nested()
    mask = {"a": {"w": leaf}}
    msg = r"^mask\['a'\]\['w'\]: mask leaves must be bool.*astype\(bool\)"
    with self.assertRaisesRegex(TypeError, msg):
      loss.wpl_penalty(params, anchor, f, alpha=1.0, mask=mask)
    with self.assertRaisesRegex(TypeError, msg):
      _add_wpl_update(params, anchor, f, mask=mask)
    state = fisher.init_state(params)
    for fn in (
      lambda: fisher.update_fisher(state, f, mask=mask),
      lambda: fisher.reanchor(state, params, mask=mask),
      lambda: fisher.reset(state, mask=mask),
    ):
      with self.assertRaisesRegex(TypeError, msg):
        fn()
    if np.ndim(leaf):  # the dtype is static: refused under jit too
      with self.assertRaisesRegex(TypeError, msg):
        jax.jit(
          lambda m: loss.wpl_penalty(params, anchor, f, alpha=1.0, mask=m)
        )(mask)

  def test_bool_masks_still_pass(self):
    params, anchor, f = _nested(2.0), _nested(0.0), _nested()
    for leaf in (True, np.bool_(True), np.ones(3, bool), jnp.ones(3, bool)):
      v = loss.wpl_penalty(
        params, anchor, f, alpha=1.0, mask={"a": {"w": leaf}}
      )
      self.assertAlmostEqual(float(v), 6.0)

  def test_complex_params_are_refused(self):
    params = _nested(1.0, jnp.complex64)
    anchor, f = _nested(0.0), _nested()
    msg = r"^params\['a'\]\['w'\]: complex dtype complex64"
    with self.assertRaisesRegex(TypeError, msg):
      loss.wpl_penalty(params, anchor, f, alpha=1.0)
    with self.assertRaisesRegex(TypeError, msg):
      jax.jit(lambda p: loss.wpl_penalty(p, anchor, f, alpha=1.0))(params)
    with self.assertRaisesRegex(TypeError, msg):
      _add_wpl_update(params, anchor, f)
    with self.assertRaisesRegex(TypeError, r"^anchor\['a'\]\['w'\]: complex"):
      loss.wpl_penalty(f, params, f, alpha=1.0)
    state = fisher.init_state(f)
    with self.assertRaisesRegex(TypeError, r"^new_fisher\['a'\]\['w'\]"):
      jax.jit(fisher.update_fisher)(state, params)

  def test_non_scalar_alpha_is_refused_under_jit(self):
    params, anchor, f = _nested(), _nested(0.0), _nested()
    msg = r"^alpha must be a scalar, got shape \(3,\)$"
    with self.assertRaisesRegex(ValueError, msg):
      jax.jit(lambda a: loss.wpl_penalty(params, anchor, f, alpha=a))(
        jnp.ones(3)
      )
    with self.assertRaisesRegex(ValueError, msg):
      loss.wpl_penalty(params, anchor, f, alpha=np.ones(3))
    # A schedule's value is checked at each update, also under jit.
    tx = loss.add_wpl(lambda count: jnp.ones(3))
    zeros = jax.tree.map(jnp.zeros_like, params)
    with self.assertRaisesRegex(ValueError, msg):
      jax.jit(
        lambda p: tx.update(
          zeros, tx.init(p), p, wpl_anchor=anchor, wpl_fisher=f
        )
      )(params)
    with self.assertRaisesRegex(ValueError, "alpha=-1.0 must be finite"):
      _add_wpl_update(params, anchor, f, alpha=optax.constant_schedule(-1.0))

  @parameterized.named_parameters(
    ("string", "1"), ("none", None), ("bool", True), ("complex", 1j)
  )
  def test_non_numeric_alpha_is_refused(self, alpha):
    params, anchor, f = _nested(), _nested(0.0), _nested()
    msg = "^alpha must be a real number, got "
    with self.assertRaisesRegex(TypeError, msg):
      loss.wpl_penalty(params, anchor, f, alpha=alpha)
    with self.assertRaisesRegex(TypeError, msg):
      loss.add_wpl(alpha)
    state = fisher.init_state(params)
    with self.assertRaisesRegex(TypeError, msg):
      fisher.update_fisher(state, f, mode="reference", alpha=alpha)

  @parameterized.parameters(
    "per_example", "batch_grad_squared", "sampled", "taps"
  )
  def test_empty_batch_is_refused(self, estimator):
    params = {"w": jnp.ones((3, 2))}
    batch = {"x": jnp.ones((0, 3))}
    kwargs = {"estimator": estimator}
    if estimator == "sampled":
      kwargs.update(
        key=jax.random.key(0), logits_fn=lambda p, b: b["x"] @ p["w"]
      )
    loss_fn = _mean_loss
    if estimator == "taps":
      loss_fn = fisher_fast.tapped(
        lambda p, b, tap: jnp.mean(tap.dense("w", b["x"], p["w"]) ** 2)
      )
      kwargs = {"estimator": "per_example", "method": "taps"}
    msg = r"^batch\['x'\]: the batch has 0 examples"
    with self.assertRaisesRegex(ValueError, msg):
      fisher.fisher_diagonal(loss_fn, params, batch, **kwargs)
    with self.assertRaisesRegex(ValueError, msg):
      jax.jit(lambda b: fisher.fisher_diagonal(loss_fn, params, b, **kwargs))(
        batch
      )

  def test_scalar_batch_leaf_is_refused(self):
    params = {"w": jnp.ones((3, 2))}
    batch = {"x": jnp.ones((4, 3)), "t": jnp.float32(2.0)}
    msg = r"^batch\['t'\]: a scalar leaf has no example axis"
    for estimator in ("per_example", "batch_grad_squared"):
      with self.assertRaisesRegex(ValueError, msg):
        fisher.fisher_diagonal(_mean_loss, params, batch, estimator=estimator)
    tapped = fisher_fast.tapped(
      lambda p, b, tap: jnp.mean(tap.dense("w", b["x"], p["w"]) ** 2)
    )
    with self.assertRaisesRegex(ValueError, msg):
      fisher_fast.per_example_fisher(tapped.fn, params, batch)

  def test_verify_needs_two_examples(self):
    tapped = fisher_fast.tapped(
      lambda p, b, tap: jnp.mean(tap.dense("w", b["x"], p["w"]) ** 2)
    )
    params = {"w": jnp.ones((3, 2))}
    batch = {"x": jnp.arange(12.0).reshape(4, 3)}
    for k in (0, 1, -2, 2.5, True):
      with self.assertRaisesRegex(
        ValueError, "^verify needs num_examples >= 2"
      ):
        fisher_fast.verify(tapped, params, batch, num_examples=k)
    one = {"x": batch["x"][:1]}
    with self.assertRaisesRegex(ValueError, "at least 2 examples, it has 1"):
      fisher_fast.verify(tapped, params, one)
    self.assertLess(
      fisher_fast.verify(tapped, params, batch, num_examples=2), 1e-5
    )

  @parameterized.parameters("per_example", "batch_grad_squared")
  def test_vector_loss_under_mean_names_reduction(self, estimator):
    def vector_loss(p, b):
      return jnp.sum((b["x"] @ p["w"]) ** 2, axis=-1)  # [B]: per-example

    params = {"w": jnp.ones((3, 2))}
    batch = {"x": jnp.arange(12.0).reshape(4, 3)}
    msg = r"reduction='mean' declares the scalar batch mean.*reduction='none'"
    with self.assertRaisesRegex(ValueError, msg):
      fisher.fisher_diagonal(vector_loss, params, batch, estimator=estimator)
    with self.assertRaisesRegex(ValueError, msg):
      jax.jit(
        lambda b: fisher.fisher_diagonal(
          vector_loss, params, b, estimator=estimator
        )
      )(batch)
    # Declared, the same loss works.
    f = fisher.fisher_diagonal(
      vector_loss, params, batch, estimator=estimator, reduction="none"
    )
    self.assertEqual(f["w"].shape, (3, 2))


if __name__ == "__main__":
  absltest.main()
