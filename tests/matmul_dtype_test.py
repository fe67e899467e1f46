"""`model.matmul_dtype = "bfloat16"`: the model's large products in bf16.

`low_dot`, `low_dot_t` and the fused decoder loss are checked against
NumPy in float64 on the bf16-rounded operands (so the arithmetic is
tested, not the rounding); the supernet and the search steps with bf16
products against the float32 ones (close, not equal), and the option's
limits (taps, the fast per-example Fisher).
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from experiments import enas_ptb
from wpl_jax import _tap_ops, fisher_fast, tapped_grad, taps
from wpl_jax.enas import losses, search_space, supernet
from wpl_jax.enas.train import search_config
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps


def _bf16_f64(v):
  """The values as bfloat16 stores them, in float64."""
  return np.asarray(jnp.asarray(v).astype(jnp.bfloat16), np.float64)


def _forms(nt):
  """Both forms of a low product (`taps.weight_dot`): `nt` True forces
  the weight's transposed copy contracted on its last axis at every size,
  False leaves the size rule, under which these tests' small weights take
  the row-major product."""
  return mock.patch.object(_tap_ops, "NT_MIN_BYTES", 0 if nt else 1 << 20)


def _contractions(f, *args):
  """The (lhs, rhs) contracting axes of every dot_general in f's jaxpr,
  custom VJPs' forward and backward rules included."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        found.append((tuple(lc), tuple(rc)))
      for v in eqn.params.values():
        for j in v if isinstance(v, (tuple, list)) else (v,):
          inner = getattr(j, "jaxpr", None)
          if inner is not None:
            walk(getattr(inner, "jaxpr", inner))

  walk(jax.make_jaxpr(f)(*args).jaxpr)
  return found


class LowDotTest(parameterized.TestCase):
  def test_weight_dot_form_follows_the_weight_size(self):
    """A weight of NT_MIN_BYTES or more is contracted as its transposed
    copy on the last axis; a smaller one in the row-major product."""
    x = jnp.ones((64, 512), jnp.float32)
    nt, nn = ((1,), (1,)), ((1,), (0,))
    # y, dx, then dw = x_lowᵀ @ g_low, which is row-major at every size.
    for o, want in ((1024, [nt, nt, nn]), (1023, [nn, nn, nn])):
      w = jnp.ones((512, o), jnp.float32)  # bf16: 1 MiB at o = 1024
      g = jnp.ones((64, o), jnp.float32)

      def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(taps.low_dot, x, w, *taps.low_pair(w, jnp.bfloat16))
        return y, vjp(g)

      self.assertEqual(_contractions(fwd_bwd, x, w, g), want, o)

  def test_row_major_t(self):
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    got = jax.jit(taps.row_major_t)(a)
    np.testing.assert_array_equal(got, np.swapaxes(a, -1, -2))

  @parameterized.parameters(False, True)
  def test_forward_and_vjp_against_numpy(self, nt):
    self.enter_context(_forms(nt))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    w = rng.normal(size=(7, 6)).astype(np.float32)
    g = rng.normal(size=(5, 6)).astype(np.float32)
    low = jnp.asarray(w).astype(jnp.bfloat16)
    low_t = taps.row_major_t(low)
    y, vjp = jax.vjp(taps.low_dot, x, w, low, low_t)
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

  def test_gradients_in_the_inputs_dtypes(self):
    x = jnp.ones((3, 4, 5), jnp.bfloat16)  # positions beyond the batch too
    w = jnp.ones((5, 2), jnp.float32)
    pair = taps.low_pair(w, jnp.bfloat16)
    dx, dw = jax.grad(
      lambda x, w: jnp.sum(taps.low_dot(x, w, *pair)), argnums=(0, 1)
    )(x, w)
    self.assertEqual((dx.dtype, dw.dtype), (jnp.bfloat16, jnp.float32))
    np.testing.assert_array_equal(dw, np.full((5, 2), 12.0))

  @parameterized.parameters(False, True)
  def test_low_dot_t_against_numpy(self, nt):
    """x @ wᵀ for a weight stored [O, I] (the tied decoder), compiled
    with x of three axes (a 3-D bf16 product has no XLA:CPU kernel)."""
    self.enter_context(_forms(nt))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 7)).astype(np.float32)
    w = rng.normal(size=(6, 7)).astype(np.float32)  # [O, I]
    g = rng.normal(size=(2, 3, 6)).astype(np.float32)

    def run(x, w, g):
      y, vjp = jax.vjp(taps.low_dot_t, x, w, *taps.low_pair(w, jnp.bfloat16))
      return (y, *vjp(g))

    y, dx, dw, dlow, dlow_t = jax.jit(run)(x, w, g)
    xr, wr, gr = _bf16_f64(x), _bf16_f64(w), _bf16_f64(g)
    self.assertEqual((y.dtype, dx.dtype, dw.dtype), (jnp.float32,) * 3)
    np.testing.assert_allclose(y, xr @ wr.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gr @ wr, rtol=1e-5, atol=1e-5)
    gx = np.einsum("tbo,tbi->oi", gr, xr)
    np.testing.assert_allclose(dw, gx, rtol=1e-5, atol=1e-5)
    self.assertGreater(np.max(np.abs(np.asarray(y) - x @ w.T)), 1e-4)
    np.testing.assert_array_equal(dlow, 0)
    np.testing.assert_array_equal(dlow_t, 0)


class DecoderTest(parameterized.TestCase):
  """`losses.chunked_nll_sum(..., matmul_dtype="bfloat16")`: the fused
  decoder loss with its three products in bf16, against NumPy."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(3)
    t, b, h, v = 3, 5, 8, 11  # 15 tokens
    self.params = {
      "embedding": rng.normal(size=(v, h)).astype(np.float32),
      "decoder_bias": rng.normal(size=(v,)).astype(np.float32),
    }
    self.out = rng.normal(size=(t, b, h)).astype(np.float32)
    self.tgt = rng.integers(0, v, size=(t, b)).astype(np.int32)
    self.w = rng.uniform(0.5, 1.5, size=(t, b)).astype(np.float32)

  def _numpy(self):
    """Value and gradients in float64, each product's operands rounded to
    bfloat16 where the bf16 decoder rounds them."""
    e, bias = _bf16_f64(self.params["embedding"]), self.params["decoder_bias"]
    o = self.out.reshape(-1, e.shape[1])
    t, w = self.tgt.reshape(-1), self.w.reshape(-1).astype(np.float64)
    logits = _bf16_f64(o) @ e.T + bias
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    nll = lse - logits[np.arange(len(t)), t]
    onehot = np.eye(e.shape[0])[t]
    d_logits = (np.exp(logits - lse[:, None]) - onehot) * w[:, None]
    dl = _bf16_f64(d_logits)
    return {
      "value": np.sum(w * nll),
      "out": (dl @ e).reshape(self.out.shape),
      "embedding": dl.T @ _bf16_f64(o),
      "decoder_bias": d_logits.sum(0),
      "weights": nll.reshape(self.w.shape),
    }

  def _f(self, dtype, chunk):
    def f(params, out, w):
      return losses.chunked_nll_sum(
        params, out, self.tgt, w, chunk=chunk, matmul_dtype=dtype
      )

    return f

  def _jax(self, dtype, chunk=4):
    f = self._f(dtype, chunk)
    value, (dp, dout, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(
      self.params, self.out, self.w
    )
    return {"value": value, "out": dout, "weights": dw, **dp}

  @parameterized.parameters(False, True)
  def test_value_and_gradients_against_numpy(self, nt):
    self.enter_context(_forms(nt))
    want = self._numpy()
    for chunk in (4, 15):  # four chunks of 4, one padding; one of all 15
      got = self._jax("bfloat16", chunk)
      for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
    # Only the outputs differentiated (the Fisher's edges-only gradient):
    # d E is skipped, d out unchanged.
    dout = jax.jit(jax.grad(self._f("bfloat16", 4), argnums=1))(
      self.params, self.out, self.w
    )
    np.testing.assert_allclose(dout, want["out"], rtol=1e-5, atol=1e-5)
    # float32 products are further from it: the operands were rounded.
    got32 = self._jax("float32")
    for k in ("out", "embedding"):
      self.assertGreater(_rel(got32[k], want[k]), 1e-4, k)

  def test_unknown_dtype_rejected(self):
    with self.assertRaisesRegex(ValueError, "matmul_dtype"):
      self._jax("float16")


class LowTapTest(absltest.TestCase):
  """`Tap.dense(..., low=taps.low_pair(w, dtype))` on a small scanned
  model, not the supernet: every tap's contract."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(1)
    self.params = {
      "w": jnp.asarray(rng.normal(size=(6, 6)) * 0.4, jnp.float32),
      "v": jnp.asarray(rng.normal(size=(6, 3)) * 0.4, jnp.float32),
    }
    self.batch = {
      "x": jnp.asarray(rng.normal(size=(4, 5, 6)), jnp.float32),  # [B, T, D]
      "y": jnp.asarray(rng.integers(0, 3, 4), jnp.int32),
    }

  def _loss(self, p, b, tap=fisher_fast.PLAIN, low=True):
    pair = taps.low_pair(p["w"], jnp.bfloat16) if low else None

    def step(h, x_t):
      h = jnp.tanh(tap.dense("w", h + x_t, p["w"], low=pair))
      return h, None

    h, _ = tap.scan("t", step, jnp.zeros((4, 6)), jnp.swapaxes(b["x"], 0, 1))
    logits = tap.dense("v", h, p["v"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, b["y"][:, None], axis=1))

  def test_tapped_gradient_equals_autodiff_and_differs_from_float32(self):
    _, g1 = tapped_grad.value_and_grad(self._loss, self.params, self.batch)
    g2 = jax.grad(self._loss)(self.params, self.batch)
    g32 = jax.grad(lambda p, b: self._loss(p, b, low=False))(
      self.params, self.batch
    )
    for k in ("w", "v"):
      np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(g2["w"] - g32["w"]))), 1e-5)
    np.testing.assert_allclose(g2["w"], g32["w"], rtol=0.1, atol=2e-3)

  def test_per_example_fisher_refuses(self):
    with self.assertRaisesRegex(ValueError, "per-example Fisher"):
      fisher_fast.per_example_fisher(self._loss, self.params, self.batch)

  def test_bad_pairs(self):
    w = self.params["w"]
    x = jnp.ones((2, 6))
    with self.assertRaisesRegex(ValueError, "one weight"):
      fisher_fast.PLAIN.dense("a", x, (w, w), low=taps.low_pair(w, "bfloat16"))
    with self.assertRaisesRegex(ValueError, "low_pair"):
      fisher_fast.PLAIN.dense("a", x, w, low=(w.astype(jnp.bfloat16),))


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
    for part in (
      ("cell", "edge_h"),
      ("cell", "edge_c"),
      ("node0", "w_hh"),
      ("node0", "w_xh"),  # node 0's input projection
      ("embedding",),  # the tied decoder (and the input lookup)
    ):
      a, b = g16, g32
      for k in part:
        a, b = a[k], b[k]
      self.assertLess(_rel(a, b), 5e-2, part)  # bf16: 8 bits, sums cancel
      self.assertGreater(_rel(a, b), 1e-6, part)  # and not float32's

  def _loss(self, unroll=0):
    c = _config("bfloat16", unroll)
    model = enas_setup.make_model(c)
    state = enas_setup.init_state(c, model, jax.random.key(0))
    x, y, h = _batch(c)
    variables = {"batch_stats": state["shared"].batch_stats}

    def loss_fn(p, _, tap=fisher_fast.PLAIN, edges=None):
      logits, _ = model.apply(
        {**variables, "params": p},
        x,
        h,
        _ARCH,
        tap=tap,
        train=False,
        edges=edges,
      )
      return losses.cross_entropy(logits, y)

    return loss_fn, state["shared"].params

  def test_every_large_product_is_low(self):
    """In bf16 mode node 0's input and hidden projections and every edge
    go through `Tap.dense(..., low=...)`, and the decoder through
    `low_dot_t`; in float32 mode none does."""
    for dtype in ("float32", "bfloat16"):
      c = _config(dtype, 0)
      model = enas_setup.make_model(c)
      state = enas_setup.init_state(c, model, jax.random.key(0))
      x, _, h = _batch(c)
      calls = []
      dense = fisher_fast.Tap.dense

      def spy(tap, name, *args, dense=dense, calls=calls, **kw):
        calls.append((name, kw.get("low") is not None))
        return dense(tap, name, *args, **kw)

      with (
        mock.patch.object(fisher_fast.Tap, "dense", spy),
        mock.patch.object(taps, "low_dot_t", wraps=taps.low_dot_t) as dec,
      ):
        model.apply(
          {
            "params": state["shared"].params,
            "batch_stats": state["shared"].batch_stats,
          },
          x,
          h,
          _ARCH,
          train=False,
        )
      low = dtype == "bfloat16"
      self.assertEqual(
        {name for name, _ in calls}, {"node0_x", "node0_h", "edge"}
      )
      self.assertTrue(all(is_low == low for _, is_low in calls), calls)
      self.assertEqual(dec.call_count, int(low))

  @parameterized.parameters(0, 1)
  def test_tapped_gradient_equals_autodiff(self, unroll):
    """The tapped gradient of the bf16 supernet with its edges as a leaf
    (as `Steps.shared_grads` takes it): each edge's gradient one bf16 GEMM
    after the scans, the same bf16 products as autodiff's per-step ones
    summed in another order: equal to float32 rounding."""
    loss_fn, params = self._loss(unroll)
    q = {"params": params, "edges": supernet.arch_edges(params["cell"], _ARCH)}
    edge_loss = lambda q, b, tap=fisher_fast.PLAIN: loss_fn(  # noqa: E731
      q["params"], b, tap, edges=q["edges"]
    )
    with mock.patch.object(
      tapped_grad, "_outer_sum_low", wraps=tapped_grad._outer_sum_low
    ) as low_sums:
      l1, g1 = tapped_grad.value_and_grad(edge_loss, q, None)
    self.assertGreaterEqual(low_sums.call_count, 1)  # the edges' sums
    l2, g2 = jax.value_and_grad(lambda q: edge_loss(q, None))(q)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)

  def test_per_example_taps_need_float32(self):
    loss_fn, params = self._loss()
    with self.assertRaisesRegex(ValueError, "per-example Fisher"):
      fisher_fast.per_example_fisher(loss_fn, params, {"ids": np.zeros(3)})


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

  def _train_ce(self, dtype, ce_chunk):
    c = _config(dtype)
    c.model.ce_chunk = ce_chunk
    model = enas_setup.make_model(c)
    steps = enas_steps.Steps(model=model, config=c)
    state = enas_setup.init_state(c, model, jax.random.key(0))
    x, y, h = _batch(c)

    def ce(p):
      loss, _, _ = steps.train_ce(
        p, state["shared"].batch_stats, x, y, h, _ARCH, jax.random.key(1)
      )
      return loss

    return jax.jit(jax.value_and_grad(ce))(state["shared"].params)

  def test_bf16_decoder_chunked_or_whole_logits(self):
    """The training loss with the decoder in chunks (`losses`) and with
    whole logits (the supernet's `low_dot_t`): the same bf16 logits, so
    the same value to float32 rounding; the gradients round the logits'
    cotangent to bf16 at different scales (the chunks before the 1/T·B
    of the mean, the whole logits after it), so they agree to bf16's."""
    l4, g4 = self._train_ce("bfloat16", 4)  # 15 tokens: 4 chunks
    l0, g0 = self._train_ce("bfloat16", 0)
    l32, g32 = self._train_ce("float32", 4)
    np.testing.assert_allclose(l4, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g0), strict=True):
      self.assertLess(_rel(a, b), 5e-2)
    np.testing.assert_allclose(l4, l32, rtol=1e-3)
    # The float32 products' gradient is 1e-7 from itself across the two
    # paths; the bf16 one is 2e-3 from it.
    self.assertGreater(_rel(g4["embedding"], g32["embedding"]), 1e-4)
    self.assertLess(_rel(g4["embedding"], g32["embedding"]), 5e-2)

  def test_steps_close_to_float32_and_tapped_equals_autodiff(self):
    _, m32, f32, moved32 = self._steps("float32", grad_after_scan_from=0)
    s16, m16, f16, moved16 = self._steps("bfloat16", grad_after_scan_from=0)
    # From hidden size 1 on, the tapped gradient (bf16 products too).
    s16t, _, f16t, _ = self._steps("bfloat16", grad_after_scan_from=1)
    for a, b in zip(
      jax.tree.leaves((s16.params, f16)),
      jax.tree.leaves((s16t.params, f16t)),
      strict=True,
    ):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=1e-2)
    np.testing.assert_allclose(m16["wpl"], m32["wpl"], rtol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(moved32))), 0.0)
    self.assertLess(_rel(moved16, moved32), 3e-2)
    for k in ("edge_c", "edge_h"):
      self.assertLess(_rel(f16.fisher[k], f32.fisher[k]), 6e-2, k)
      self.assertTrue(np.all(np.isfinite(np.asarray(f16.fisher[k]))))


class SeedAxisTest(parameterized.TestCase):
  @parameterized.parameters("float32", "bfloat16")
  def test_steps_over_seeds_with_the_tapped_gradient(self, dtype):
    """The seed-vmapped steps (`search.num_seeds` > 1) with the gradient
    after the scan on (the CPU default at paper width): the same states as
    with plain autodiff (the Fisher falls back to it under the vmap)."""
    out = []
    for gas in (1, 0):
      c = _config(dtype, estimator="batch_grad_squared")
      c.search.grad_after_scan_from = gas
      model = enas_setup.make_model(c)
      steps = enas_steps.Steps(model=model, config=c)
      x, y, h = _batch(c)
      h2 = jnp.stack([h, h + 0.1])
      archs = jax.tree.map(lambda a: jnp.stack([a, a]), _ARCH)
      fns = enas_setup._jit_seed_steps(steps)
      states, _ = enas_setup.init_states(c, model, [0, 1])
      shared, _, _ = fns["shared"](
        states["shared"],
        states["wpl"],
        archs,
        x,
        y,
        h2,
        jnp.float32(0.5),
        jnp.float32(1.0),
        key=jax.random.split(jax.random.key(3), 2),
      )
      states, _ = enas_setup.init_states(c, model, [0, 1])  # donated above
      ws, _ = fns["fisher"](
        states["shared"],
        states["wpl"],
        archs,
        x,
        y,
        h2,
        jnp.float32(2.0),
        key=jax.random.split(jax.random.key(4), 2),
      )
      out.append((shared.params, ws.fisher))
    for a, b in zip(
      jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


if __name__ == "__main__":
  absltest.main()
