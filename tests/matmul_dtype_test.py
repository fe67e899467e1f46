"""`model.matmul_dtype = "bfloat16"`: the cell's recurrent matmuls in bf16.

`low_dot` is checked against NumPy in float64 on the bf16-rounded operands
(so the arithmetic is tested, not the rounding); the supernet and the
search steps with bf16 products against the float32 ones (close, not
equal), and the option's limits (taps, the fast per-example Fisher).
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from experiments import enas_ptb
from wpl_jax import tapped_grad
from wpl_jax.enas import losses, search_space, supernet
from wpl_jax.enas.train import search_config
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps


def _bf16_f64(v):
  """The values as bfloat16 stores them, in float64."""
  return np.asarray(jnp.asarray(v).astype(jnp.bfloat16), np.float64)


class LowDotTest(absltest.TestCase):
  def test_row_major_t(self):
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    got = jax.jit(supernet.row_major_t)(a)
    np.testing.assert_array_equal(got, np.swapaxes(a, -1, -2))

  def test_forward_and_vjp_against_numpy(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    w = rng.normal(size=(7, 6)).astype(np.float32)
    g = rng.normal(size=(5, 6)).astype(np.float32)
    low = jnp.asarray(w).astype(jnp.bfloat16)
    low_t = supernet.row_major_t(low)
    y, vjp = jax.vjp(supernet.low_dot, x, w, low, low_t)
    dx, dw, dlow, dlow_t = vjp(jnp.asarray(g))
    xr, wr, gr = _bf16_f64(x), _bf16_f64(w), _bf16_f64(g)
    self.assertEqual(y.dtype, jnp.float32)
    self.assertEqual(dw.dtype, jnp.float32)
    # bf16 x bf16 products are exact in float32; only the sums round.
    np.testing.assert_allclose(y, xr @ wr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gr @ wr.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, xr.T @ gr, rtol=1e-5, atol=1e-5)
    # The float32 answer is further away than float32 rounding: the
    # operands really were rounded to bf16.
    self.assertGreater(np.max(np.abs(np.asarray(y) - x @ w)), 1e-4)
    np.testing.assert_array_equal(dlow, 0)
    np.testing.assert_array_equal(dlow_t, 0)


def _config(dtype, unroll=0, **wpl):
  c = enas_ptb.get_config("smoke,wpl")
  c.model.vocab_size, c.model.hidden, c.model.num_nodes = 20, 16, 4
  c.data.batch_size, c.data.bptt = 3, 5
  for name in ("dropout_output", "dropout_input", "dropout_embed"):
    c.model[name] = 0.0
  c.model.dropconnect = 0.0
  c.model.node_unroll = unroll
  c.model.matmul_dtype = dtype
  c.wpl.update(wpl)
  return c


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  t, b = config.data.bptt, config.data.batch_size
  x = rng.integers(0, 20, size=(t, b)).astype(np.int32)
  y = rng.integers(0, 20, size=(t, b)).astype(np.int32)
  h = (0.3 * rng.normal(size=(b, config.model.hidden))).astype(np.float32)
  return x, y, h


_ARCH = search_space.from_string("tanh|0:relu|1:sigmoid|1:identity")


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


class SupernetTest(parameterized.TestCase):
  @parameterized.parameters(0, 1)  # the node loop unrolled (rows) or scanned
  def test_bf16_loss_and_grads_close_to_float32(self, unroll):
    out = {}
    for dtype in ("float32", "bfloat16"):
      c = _config(dtype, unroll)
      model = enas_setup.make_model(c)
      state = enas_setup.init_state(c, model, jax.random.key(0))
      params = state["shared"].params
      stats = state["shared"].batch_stats
      x, y, h = _batch(c)

      def ce(p, model=model, stats=stats, x=x, y=y, h=h):
        logits, _ = model.apply(
          {"params": p, "batch_stats": stats}, x, h, _ARCH, train=False
        )
        return losses.cross_entropy(logits, y)

      out[dtype] = jax.jit(jax.value_and_grad(ce))(params)
    (l32, g32), (l16, g16) = out["float32"], out["bfloat16"]
    np.testing.assert_allclose(l16, l32, rtol=1e-2)
    for part in (("cell", "edge_h"), ("cell", "edge_c"), ("node0", "w_hh")):
      a, b = g16, g32
      for k in part:
        a, b = a[k], b[k]
      self.assertLess(_rel(a, b), 5e-2, part)  # bf16: 8 bits, sums cancel
      self.assertGreater(_rel(a, b), 1e-6, part)  # and not float32's

  def test_taps_need_float32(self):
    c = _config("bfloat16")
    model = enas_setup.make_model(c)
    state = enas_setup.init_state(c, model, jax.random.key(0))
    x, y, h = _batch(c)
    variables = {"batch_stats": state["shared"].batch_stats}

    def loss_fn(p, _, tap):
      logits, _ = model.apply(
        {**variables, "params": p}, x, h, _ARCH, tap=tap, train=False
      )
      return losses.cross_entropy(logits, y)

    with self.assertRaisesRegex(ValueError, "float32 matmuls"):
      tapped_grad.value_and_grad(loss_fn, state["shared"].params, None)


class StepsTest(absltest.TestCase):
  def test_fast_per_example_fisher_rejected(self):
    c = _config("bfloat16", estimator="per_example", fisher_method="fast")
    with self.assertRaisesRegex(ValueError, "matmul_dtype bfloat16"):
      search_config.validate(c)
    c.wpl.fisher_method = "vmap"
    search_config.validate(c)  # the vmap estimator runs plain autodiff

  def test_unknown_dtype_rejected(self):
    with self.assertRaisesRegex(ValueError, "matmul_dtype"):
      search_config.validate(_config("float16"))

  def _steps(self, dtype, **search):
    c = _config(dtype, estimator="batch_grad_squared")
    c.search.update(search)
    model = enas_setup.make_model(c)
    steps = enas_steps.Steps(model=model, config=c)
    state = enas_setup.init_state(c, model, jax.random.key(0))
    ws = state["wpl"]
    ws = ws._replace(
      fisher=jax.tree.map(lambda f: f + 0.5, ws.fisher),
      anchor=jax.tree.map(lambda a: a - 0.05, ws.anchor),
    )
    x, y, h = _batch(c)
    shared, _, m = jax.jit(steps.shared_step)(
      state["shared"],
      ws,
      _ARCH,
      x,
      y,
      h,
      jnp.float32(0.5),
      jnp.float32(1.0),
      key=jax.random.key(3),
    )
    fisher, _ = jax.jit(steps.fisher_step)(
      state["shared"],
      ws,
      _ARCH,
      x,
      y,
      h,
      jnp.float32(2.0),
      key=jax.random.key(4),
    )
    moved = (
      shared.params["cell"]["edge_h"] - state["shared"].params["cell"]["edge_h"]
    )
    return shared, m, fisher, moved

  def test_steps_close_to_float32_and_skip_the_tapped_gradient(self):
    _, m32, f32, moved32 = self._steps("float32", grad_after_scan_from=0)
    s16, m16, f16, moved16 = self._steps("bfloat16", grad_after_scan_from=0)
    # From hidden size 1 on the tapped gradient would run; with bf16 the
    # step takes plain autodiff instead: the same numbers.
    s16t, _, _, _ = self._steps("bfloat16", grad_after_scan_from=1)
    for a, b in zip(
      jax.tree.leaves(s16.params), jax.tree.leaves(s16t.params), strict=True
    ):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=1e-2)
    np.testing.assert_allclose(m16["wpl"], m32["wpl"], rtol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(moved32))), 0.0)
    self.assertLess(_rel(moved16, moved32), 3e-2)
    for k in ("edge_c", "edge_h"):
      self.assertLess(_rel(f16.fisher[k], f32.fisher[k]), 6e-2, k)
      self.assertTrue(np.all(np.isfinite(np.asarray(f16.fisher[k]))))


if __name__ == "__main__":
  absltest.main()
