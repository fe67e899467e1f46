"""Tests for wpl_jax.fisher_fast: the tapped Fisher equals vmap(grad)'s."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax import _tap_discovery, fisher, fisher_fast, partition
from wpl_jax.enas import edge_fisher, losses, supernet, wpl
from wpl_jax.enas import search_space as ss
from wpl_jax.two_models import model as two_models_lib

# Models -----------------------------------------------------------------------


def _xent(logits, y):
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def _normal(rng, shape, scale, dtype):
  return jnp.asarray(rng.normal(size=shape) * scale, dtype)


def _mlp_setup(seed, dtype=jnp.float32, n=6):
  """Model A of the two-model study, tiny: 6-8-8-3."""
  params = two_models_lib.init_a(
    jax.random.key(seed), in_dim=6, width=8, num_classes=3, depth=2
  )
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
    lambda p: p + _normal(rng, p.shape, 0.1, p.dtype), params
  )
  batch = {
    "x": _normal(rng, (n, 6), 1.0, jnp.float32),
    "y": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
  }
  return jax.tree.map(lambda v: v.astype(dtype), params), {
    "x": batch["x"].astype(dtype),
    "y": batch["y"],
  }


def _mlp_logits(params, x, tap=fisher_fast.PLAIN):
  """`two_models.forward_a` (A's tree) with its matmuls tapped."""
  names = sorted(
    (k for k in params if k[2:].isdigit()), key=lambda k: int(k[2:])
  )
  h = x
  for name in names:
    h = jax.nn.relu(
      tap.dense(name, h, params[name]["kernel"], params[name]["bias"])
    )
  head = params["a_head"]
  return tap.dense("a_head", h, head["kernel"], head["bias"])


@fisher_fast.tapped
def _mlp_loss(params, batch, tap):
  return _xent(_mlp_logits(params, batch["x"], tap), batch["y"])


def _rnn_setup(seed, dtype=jnp.float32, n=5, t=4):
  rng = np.random.default_rng(seed)
  params = {
    "wx": _normal(rng, (3, 6), 0.5, dtype),
    "wh": _normal(rng, (6, 6), 0.4, dtype),
    "b": _normal(rng, (6,), 0.1, dtype),
    "wo": _normal(rng, (6, 4), 0.5, dtype),
    "h0": _normal(rng, (6,), 0.5, dtype),  # not tapped: the fallback's
  }
  batch = {
    "x": _normal(rng, (n, t, 3), 1.0, dtype),
    "y": jnp.asarray(rng.integers(0, 4, (n, t)), jnp.int32),
  }
  return params, batch


def _make_rnn_loss(reverse=False):
  """Elman RNN over time (`tap.scan`), time-major logits, mean over tokens."""

  @fisher_fast.tapped
  def loss(params, batch, tap):
    x_TxBxD = jnp.swapaxes(batch["x"], 0, 1)

    def step(h, x_BxD):
      z = tap.dense("in", x_BxD, params["wx"], params["b"])
      h = jnp.tanh(z + tap.dense("rec", h, params["wh"]))
      return h, h

    h0 = jnp.broadcast_to(params["h0"], (x_TxBxD.shape[1], 6))
    _, h_TxBxH = tap.scan("time", step, h0, x_TxBxD, reverse=reverse)
    logits = tap.dense("out", h_TxBxH, params["wo"], batch_axis=1)
    return _xent(jnp.swapaxes(logits, 0, 1), batch["y"])

  return loss


V, H, N, T, B = 40, 8, 3, 4, 4


def _enas_setup(seed=0, **kwargs):
  base = dict(
    vocab_size=V, hidden_size=H, num_nodes=N, init_range=0.5, clip_norm=1.5
  )
  model = supernet.SharedRNN(**{**base, **kwargs})
  k = jax.random.split(jax.random.key(seed), 5)
  variables = supernet.init_variables(model, key=k[0])
  variables["batch_stats"] = {
    "batch_norm": {
      "mean": 0.1 * jax.random.normal(k[1], (H,)),
      "var": jax.random.uniform(k[2], (H,), minval=0.5, maxval=2.0),
    }
  }
  tokens = jax.random.randint(k[3], (B, T + 1), 0, V)
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "hidden": jax.random.normal(k[4], (B, H)),
  }
  return model, variables, batch


def _naive(loss_fn, params, batch, chunk_size=None):
  return fisher.fisher_diagonal(
    loss_fn, params, batch, chunk_size=chunk_size, method="vmap"
  )


def _fast(loss_fn, params, batch, chunk_size=None):
  return fisher_fast.per_example_fisher(
    loss_fn.fn, params, batch, chunk_size=chunk_size
  )


def _assert_close(got, want, rtol):
  """Leafwise, relative to each leaf's largest entry."""
  for path, g, w in zip(
    jax.tree_util.tree_leaves_with_path(got),
    jax.tree.leaves(got),
    jax.tree.leaves(want),
    strict=True,
  ):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    scale = max(np.max(np.abs(w)), 1e-30)
    np.testing.assert_allclose(
      g, w, rtol=rtol, atol=rtol * scale, err_msg=str(path[0])
    )


# Tests ------------------------------------------------------------------------


class EqualsVmapTest(parameterized.TestCase):
  @parameterized.parameters(
    ("mlp", None), ("mlp", 2), ("rnn", 2), ("rnn_reverse", None)
  )
  def test_float64_within_1e6(self, model, chunk_size):
    with jax.enable_x64(True):
      if model == "mlp":
        loss_fn = _mlp_loss
        params, batch = _mlp_setup(0, jnp.float64)
      else:
        loss_fn = _make_rnn_loss(reverse=model == "rnn_reverse")
        params, batch = _rnn_setup(0, jnp.float64)
      got = jax.jit(_fast, static_argnums=(0, 3))(
        loss_fn, params, batch, chunk_size
      )
      want = jax.jit(_naive, static_argnums=(0, 3))(
        loss_fn, params, batch, chunk_size
      )
      _assert_close(got, want, rtol=1e-6)
      chex.assert_trees_all_equal_shapes_and_dtypes(got, want)

  def test_two_model_mlp_forward_is_model_a(self):
    params, batch = _mlp_setup(1)
    np.testing.assert_allclose(
      _mlp_logits(params, batch["x"]),
      two_models_lib.forward_a(params, batch["x"]),
      rtol=1e-6,
    )

  @parameterized.parameters("mlp", "rnn")
  def test_float32_through_fisher_diagonal(self, model):
    if model == "mlp":
      loss_fn, (params, batch) = _mlp_loss, _mlp_setup(2)
    else:
      loss_fn, (params, batch) = _make_rnn_loss(), _rnn_setup(2)
    # method="auto" (the default) takes the tapped path for a TappedLoss.
    got = jax.jit(lambda p, b: fisher.fisher_diagonal(loss_fn, p, b))(
      params, batch
    )
    want = jax.jit(lambda p, b: _naive(loss_fn, p, b))(params, batch)
    _assert_close(got, want, rtol=1e-5)

  @parameterized.parameters("tapped", "fallback_only")
  def test_has_aux_returns_the_forwards_aux(self, which):
    """`has_aux`: the same F, and the aux of a plain forward."""
    params, batch = _mlp_setup(3)
    if which == "tapped":
      plain = _mlp_loss
    else:  # no tap at all: every leaf takes the vmap(grad) fallback

      def plain(p, b, tap=None):
        del tap
        return _mlp_loss(p, b, fisher_fast.PLAIN)

    def with_aux(p, b, tap):
      # aux [B, C] from an untapped forward: tap names are used once.
      return plain(p, b, tap), 2.0 * _mlp_logits(p, b["x"])

    got, aux = jax.jit(
      lambda p, b: fisher_fast.per_example_fisher(with_aux, p, b, has_aux=True)
    )(params, batch)
    want = jax.jit(lambda p, b: _naive(plain, p, b))(params, batch)
    _assert_close(got, want, rtol=1e-5)
    np.testing.assert_allclose(
      aux, 2.0 * _mlp_logits(params, batch["x"]), rtol=1e-6
    )


class EnasTest(parameterized.TestCase):
  @parameterized.parameters(("last", True), ("leaf_mean", False))
  def test_edges_argument_is_the_archs_edges(self, source, batch_norm):
    """`edges=` replaces exactly the matrices the arch reads."""
    model, variables, batch = _enas_setup(
      hidden_source=source, use_batch_norm=batch_norm
    )
    arch = ss.from_string("tanh|0:identity|1:sigmoid")
    args = (batch["inputs"].T, batch["hidden"], arch)
    cell = variables["params"]["cell"]
    apply = jax.jit(model.apply)
    want = apply(variables, *args)
    got = apply(variables, *args, edges=supernet.arch_edges(cell, arch))
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    # Other edges: the same as a model whose params hold them.
    ids = ss.edge_ids(arch)
    new_cell = {k: v.at[ids].multiply(-2.0) for k, v in cell.items()}
    moved = {
      **variables,
      "params": wpl.with_edges(variables["params"], new_cell),
    }
    want = apply(moved, *args)
    got = apply(variables, *args, edges=supernet.arch_edges(new_cell, arch))
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    self.assertGreater(
      float(jnp.max(jnp.abs(got[0] - apply(variables, *args)[0]))), 1e-4
    )

  def test_tapped_train_mode_batch_norm_raises(self):
    model, variables, batch = _enas_setup(use_batch_norm=True)
    arch = ss.from_string("tanh|0:identity|1:sigmoid")

    class PerExample(fisher_fast.Tap):
      per_example = True

    recorder = PerExample()
    with self.assertRaisesRegex(ValueError, "separable examples"):
      model.apply(
        variables,
        batch["inputs"].T,
        batch["hidden"],
        arch,
        train=True,
        tap=recorder,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
      )

  @parameterized.parameters(1, True)
  def test_edge_fisher_equals_estimate_fisher(self, node_unroll):
    """Chunked, and one trace serves every architecture; the node loop
    as a scan (1) and unrolled over edge rows split once (True)."""
    chex.clear_trace_counter()  # `fast` is traced once per case
    model, variables, batch = _enas_setup(seed=1, node_unroll=node_unroll)

    def loss_fn(params, b, arch):
      v = {"params": params, "batch_stats": variables["batch_stats"]}
      return losses.eval_loss(
        model, v, arch, b["inputs"].T, b["targets"].T, b["hidden"]
      )[0]

    @jax.jit
    def naive(p, b, arch):
      return wpl.estimate_fisher(
        lambda q, c: loss_fn(q, c, arch),
        p,
        arch,
        b,
        estimator="per_example",
      )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fast(v, b, arch):
      return edge_fisher.enas_edge_fisher(model, v, arch, b, chunk_size=2)[0]

    arch = ss.from_string("relu|0:sigmoid|1:tanh")
    fused = supernet.arch_edges(variables["params"]["cell"], arch)

    def sub_loss(edges, b, tap):
      logits, _ = model.apply(
        variables, b["inputs"].T, b["hidden"], arch, tap=tap, edges=edges
      )
      return losses.cross_entropy(logits, b["targets"].T)

    # The model's own forward: the fused edges reach the loss only through
    # the "edge" tap; node 0, embedding and batch-norm are constants here.
    self.assertEqual(fisher_fast.plan(sub_loss, fused, batch), "tap")
    for cell in (
      "relu|0:sigmoid|1:tanh",
      "identity|0:relu|0:tanh",
    ):
      arch = ss.from_string(cell)
      got = fast(variables, batch, arch)
      _assert_close(got, naive(variables["params"], batch, arch), rtol=2e-6)
      unused = ~ss.edge_mask(arch)
      np.testing.assert_array_equal(got["edge_h"][unused], 0.0)

  def test_edge_fisher_carries_the_eval_hidden_state(self):
    model, variables, batch = _enas_setup(seed=2)
    arch = ss.from_string("relu|0:sigmoid|1:tanh")
    _, got = jax.jit(
      lambda v, b: edge_fisher.enas_edge_fisher(model, v, arch, b)
    )(variables, batch)
    _, want = jax.jit(model.apply)(
      variables, batch["inputs"].T, batch["hidden"], arch
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


class ValueAndGradTest(parameterized.TestCase):
  """`fisher_fast.value_and_grad` = `jax.value_and_grad` of the plain loss."""

  @parameterized.parameters("mlp", "rnn", "rnn_reverse", "conv")
  def test_equals_autodiff_float64(self, model):
    with jax.enable_x64(True):
      if model == "mlp":
        loss_fn = _mlp_loss
        params, batch = _mlp_setup(4, jnp.float64)
      elif model == "conv":
        rng = np.random.default_rng(5)
        params = {
          "k": _normal(rng, (3, 3, 2, 4), 0.5, jnp.float64),
          "b": _normal(rng, (4,), 0.5, jnp.float64),
          "w": _normal(rng, (4, 3), 0.5, jnp.float64),
        }
        batch = {
          "x": _normal(rng, (5, 6, 6, 2), 1.0, jnp.float64),
          "y": jnp.asarray(rng.integers(0, 3, 5), jnp.int32),
        }

        def loss_fn(p, b, tap):
          h = jax.nn.relu(tap.conv("c", b["x"], p["k"], p["b"], strides=2))
          return _xent(tap.dense("d", jnp.mean(h, (1, 2)), p["w"]), b["y"])

      else:
        loss_fn = _make_rnn_loss(reverse=model == "rnn_reverse")
        params, batch = _rnn_setup(4, jnp.float64)
      got_v, got = jax.jit(
        lambda p, b: fisher_fast.value_and_grad(loss_fn, p, b)
      )(params, batch)
      want_v, want = jax.jit(
        jax.value_and_grad(lambda p, b: loss_fn(p, b, fisher_fast.PLAIN))
      )(params, batch)
      np.testing.assert_allclose(got_v, want_v, rtol=1e-12)
      _assert_close(got, want, rtol=1e-10)
      chex.assert_trees_all_equal_shapes_and_dtypes(got, want)

  @parameterized.parameters(1, True)
  def test_enas_train_mode_scanned_edges(self, node_unroll):
    """Dropout, training batch-norm (examples interact) and the edges as
    a leaf sliced by the node scan (node_unroll=True: split into rows
    before the time scan, `tap.rows`): against autodiff of the model."""
    model, variables, batch = _enas_setup(seed=3, node_unroll=node_unroll)
    arch = ss.from_string("relu|0:sigmoid|1:tanh")
    params = variables["params"]
    leaves = {
      "params": params,
      "edges": supernet.arch_edges(params["cell"], arch),
    }

    def loss_fn(q, b, tap):
      v = {"params": q["params"], "batch_stats": variables["batch_stats"]}
      (logits, hidden), _ = model.apply(
        v,
        b["inputs"].T,
        b["hidden"],
        arch,
        train=True,
        tap=tap,
        edges=q["edges"],
        rngs={"dropout": jax.random.key(7)},
        mutable=["batch_stats"],
      )
      return losses.cross_entropy(logits, b["targets"].T), hidden

    # The edges take the tapped path (so do node 0's input weights, passed
    # to "node0_x" as params leaves); the stacked cell leaves are not read.
    found = _tap_discovery.discover(
      lambda q, b, t: loss_fn(q, b, t)[0], leaves, batch, reduction=None
    )
    paths = partition.leaf_paths(leaves)
    tapped = sorted(paths[i] for i in found.tapped)
    self.assertIn("edges", tapped)
    self.assertContainsSubset(
      {"params/node0/w_xc", "params/node0/b_xh"}, set(tapped)
    )
    self.assertNotIn("params/cell/edge_h", tapped)
    (got_v, got_h), got = jax.jit(
      lambda q, b: fisher_fast.value_and_grad(loss_fn, q, b, has_aux=True)
    )(leaves, batch)
    (want_v, want_h), want = jax.jit(
      jax.value_and_grad(
        lambda q, b: loss_fn(q, b, fisher_fast.PLAIN), has_aux=True
      )
    )(leaves, batch)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-6)
    _assert_close(got, want, rtol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(got["edges"]))), 0.0)


class FallbackTest(parameterized.TestCase):
  def _setup(self):
    rng = np.random.default_rng(3)
    params = {
      "emb": _normal(rng, (7, 5), 1.0, jnp.float32),  # gather and tied out
      "w": _normal(rng, (5, 5), 0.5, jnp.float32),  # tapped only
      "scale": _normal(rng, (5,), 1.0, jnp.float32),  # elementwise
      "v": _normal(rng, (5, 5), 0.5, jnp.float32),  # tapped AND used raw
      "u": _normal(rng, (5, 5), 0.5, jnp.float32),  # used transposed
      "unused": _normal(rng, (3,), 1.0, jnp.float32),
    }
    batch = {
      "ids": jnp.asarray(rng.integers(0, 7, (6, 3)), jnp.int32),
      "y": jnp.asarray(rng.integers(0, 7, (6,)), jnp.int32),
    }

    @fisher_fast.tapped
    def loss(p, b, tap):
      x = p["emb"][b["ids"]]  # [B, S, D]
      h = jnp.tanh(tap.dense("w", x, p["w"]) * p["scale"][None, None])
      h = tap.dense("v", h, p["v"]) + jnp.einsum("bsd,de->bse", h, p["v"])
      h = tap.dense("u", jnp.mean(h, axis=1), p["u"].T)
      return _xent(tap.dense("out", h, p["emb"].T), b["y"])

    return loss, params, batch

  def test_plan(self):
    loss, params, batch = self._setup()
    self.assertEqual(
      fisher_fast.plan(loss.fn, params, batch),
      {
        "emb": "vmap",
        "w": "tap",
        "scale": "vmap",
        "v": "vmap",
        "u": "vmap",
        "unused": "unused",
      },
    )

  def test_mixed_equals_vmap(self):
    loss, params, batch = self._setup()
    chunk_size = 4
    got = jax.jit(lambda p, b: _fast(loss, p, b, chunk_size))(params, batch)
    want = jax.jit(lambda p, b: _naive(loss, p, b, chunk_size))(params, batch)
    _assert_close(got, want, rtol=1e-5)
    np.testing.assert_array_equal(got["unused"], 0.0)


class JaxInternalsTest(absltest.TestCase):
  """What fisher_fast reads from JAX beyond its public API, pinned.

  If a JAX upgrade changes any of these, this fails loudly (rather than the
  fast path silently falling back or mis-attributing a weight).
  """

  def test_scan_equation_params(self):
    # The scan layout `_tap_discovery.scan_layout` reads, per JAX line: a
    # new JAX that renames these fails here, not silently in a Fisher.
    def f(w, v, xs):
      def body(c, x):
        a, b = c
        return (a @ w + x["x"], b @ v + x["y"]), a

      return jax.lax.scan(body, (jnp.zeros(2), jnp.ones(2)), xs)[0]

    xs = {"x": jnp.ones((3, 2)), "y": jnp.ones((3, 2))}
    closed = jax.make_jaxpr(f)(jnp.eye(2), jnp.eye(2), xs)
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    if jax.__version_info__ < (0, 11):
      old = {"jaxpr", "num_consts", "num_carry"}
      self.assertContainsSubset(old, eqn.params)
    else:
      self.assertContainsSubset({"jaxpr", "ft_in"}, eqn.params)
    body, n_consts, n_carry = _tap_discovery.scan_layout(eqn)
    self.assertEqual((n_consts, n_carry), (2, 2))
    self.assertLen(eqn.invars, 6)  # w, v; the two carries; the two xs
    self.assertLen(body.invars, 6)
    # The counts name the right inputs: consts are the two [2, 2] matrices.
    self.assertEqual(
      [v.aval.shape for v in eqn.invars[:n_consts]], [(2, 2), (2, 2)]
    )

  def test_scan_layout_refuses_an_unknown_layout(self):
    closed = jax.make_jaxpr(
      lambda xs: jax.lax.scan(lambda c, x: (c + x, None), 0.0, xs)[0]
    )(jnp.ones(3))
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    renamed = eqn.replace(
      params={
        k: v for k, v in eqn.params.items() if k not in ("num_consts", "ft_in")
      }
    )
    with self.assertRaisesRegex(NotImplementedError, "unknown scan equation"):
      _tap_discovery.scan_layout(renamed)

  def test_params_leaves_keep_their_identity_inside_a_trace(self):
    # Weights are found by id(): a leaf passed through the trace unchanged
    # must arrive at the tap as the very object the tracer was made from.
    seen = []

    def f(leaves):
      seen.append([id(v) for v in leaves])
      inner = leaves[0]
      seen.append([id(inner)])
      return jnp.sum(inner)

    jax.make_jaxpr(f)([jnp.ones(2)])
    self.assertEqual(seen[0][0], seen[1][0])

  def test_vmap_tracers_are_named_batch_tracer(self):
    names = []
    jax.vmap(lambda x: names.append(type(x).__name__) or x)(jnp.ones(3))
    self.assertEqual(names, ["BatchTracer"])


class ProtocolTest(parameterized.TestCase):
  def test_weight_shared_by_sites_and_nested_scans(self):
    """One weight at several sites and in a scan within a scan: summed."""
    rng = np.random.default_rng(4)
    params = {
      "w": _normal(rng, (3, 3), 0.6, jnp.float32),
      "c": _normal(rng, (3, 2), 0.6, jnp.float32),
      "d": _normal(rng, (3, 1), 0.6, jnp.float32),
    }
    batch = {"x": _normal(rng, (4, 2, 3, 3), 1.0, jnp.float32)}

    @fisher_fast.tapped
    def loss(p, b, tap):
      x = jnp.moveaxis(b["x"], 0, 2)  # [outer, inner, B, D]

      def outer(h, x_o):
        def inner(g, x_i):
          return jnp.tanh(tap.dense("wi", x_i + g, p["w"])), None

        h, _ = tap.scan("inner", inner, h, x_o)
        return h, None

      h0 = jnp.tanh(tap.dense("w0", b["x"][:, 0, 0], p["w"]))
      h, _ = tap.scan("outer", outer, h0, x)
      # A weight and another in one matmul (concatenated outputs).
      z = tap.dense("cd", h, (p["c"], p["d"]))
      return jnp.mean(jnp.sum(z**2, axis=1))

    self.assertEqual(
      fisher_fast.plan(loss.fn, params, batch),
      {"w": "tap", "c": "tap", "d": "tap"},
    )
    got = jax.jit(lambda p, b: _fast(loss, p, b, 3))(params, batch)
    want = jax.jit(lambda p, b: _naive(loss, p, b))(params, batch)
    _assert_close(got, want, rtol=1e-5)

  def test_scan_over_stacked_layers(self):
    """Leaves in a tap.scan's xs are tapped slice by slice."""
    rng = np.random.default_rng(5)
    params = {
      "w": _normal(rng, (3, 4, 4), 0.5, jnp.float32),  # [layers, in, out]
      "b": _normal(rng, (3, 4), 0.1, jnp.float32),
      "s": _normal(rng, (3, 4), 1.0, jnp.float32),  # elementwise: fallback
    }
    batch = {"x": _normal(rng, (5, 2, 4), 1.0, jnp.float32)}

    @fisher_fast.tapped
    def loss(p, b, tap):
      def layer(h, wbs):
        w, bias, s = wbs
        return jnp.tanh(tap.dense("l", h, w, bias) * s[None, None]), None

      h, _ = tap.scan("layers", layer, b["x"], (p["w"], p["b"], p["s"]))
      return jnp.mean(jnp.sum(h**2, axis=(1, 2)))

    self.assertEqual(
      fisher_fast.plan(loss.fn, params, batch),
      {"w": "tap", "b": "tap", "s": "vmap"},
    )
    got = jax.jit(lambda p, b: _fast(loss, p, b, 2))(params, batch)
    want = jax.jit(lambda p, b: _naive(loss, p, b))(params, batch)
    _assert_close(got, want, rtol=1e-5)

  @parameterized.parameters(False, True)
  def test_rows_of_stacked_layers_inside_an_outer_scan(self, reverse):
    """`tap.rows`: stacked layers split once before a time scan, read by
    an unrolled layer scan in each step; tapped slice by slice as if the
    stacked leaves were the xs (per-example Fisher against vmap, gradient
    against autodiff in float64, both against the same loss with the
    stacked leaves), and a transformed stack (`2 * w`) still works."""
    rng = np.random.default_rng(6)
    params = {
      "w": _normal(rng, (3, 4, 4), 0.5, jnp.float32),  # [layers, in, out]
      "b": _normal(rng, (3, 4), 0.1, jnp.float32),
      "v": _normal(rng, (2, 4, 4), 0.5, jnp.float32),  # read as 2 * v
    }
    batch = {"x": _normal(rng, (5, 6, 4), 1.0, jnp.float32)}

    def make(split):
      def loss(p, b, tap):
        w, bias, v2 = p["w"], p["b"], 2.0 * p["v"]
        if split:
          w, bias, v2 = tap.rows(w), tap.rows(bias), tap.rows(v2)

        def step(h, x_BxD):
          def layer(g, wb):
            return jnp.tanh(tap.dense("l", g, wb[0], wb[1])), None

          h, _ = tap.scan("layers", layer, h + x_BxD, (w, bias))
          h, _ = tap.scan(
            "more", lambda g, m: (g @ m, None), h, v2, reverse=reverse
          )
          return h, h

        x = jnp.swapaxes(b["x"], 0, 1)
        _, h = tap.scan("time", step, jnp.zeros_like(x[0]), x)
        return jnp.mean(jnp.sum(h**2, axis=(0, 2)))

      return fisher_fast.tapped(loss)

    split, stacked = make(True), make(False)
    for loss in (split, stacked):
      self.assertEqual(
        fisher_fast.plan(loss.fn, params, batch),
        {"w": "tap", "b": "tap", "v": "vmap"},
      )
    got = jax.jit(lambda p, b: _fast(split, p, b, 2))(params, batch)
    _assert_close(
      got, jax.jit(lambda p, b: _naive(split, p, b))(params, batch), 1e-5
    )
    _assert_close(
      got, jax.jit(lambda p, b: _fast(stacked, p, b, 2))(params, batch), 1e-5
    )
    with jax.enable_x64(True):
      p64 = jax.tree.map(lambda v: v.astype(jnp.float64), params)
      b64 = {"x": batch["x"].astype(jnp.float64)}
      got_v, got = jax.jit(
        lambda p, b: fisher_fast.value_and_grad(split.fn, p, b)
      )(p64, b64)
      for loss in (split, stacked):
        want_v, want = jax.jit(
          jax.value_and_grad(lambda p, b, f=loss.fn: f(p, b, fisher_fast.PLAIN))
        )(p64, b64)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-12)
        _assert_close(got, want, rtol=1e-10)

  @parameterized.parameters(False, True)
  def test_a_site_name_shared_with_an_untapped_scan(self, split):
    """A scan whose body taps no leaf probes nothing, not even a site of
    the enclosing scope with the same name (with `tap.rows` its body runs
    as a Python loop, where such a probe would not fail but be wrong)."""
    rng = np.random.default_rng(8)
    params = {
      "w": _normal(rng, (4, 4), 1.0, jnp.float32),
      "v": _normal(rng, (3, 4, 4), 0.5, jnp.float32),
    }
    batch = {"x": _normal(rng, (5, 4), 1.0, jnp.float32)}

    @fisher_fast.tapped
    def loss(p, b, tap):
      y = jnp.tanh(tap.dense("l", b["x"], p["w"]))
      v2 = tap.rows(2.0 * p["v"]) if split else 2.0 * p["v"]
      h, _ = tap.scan(
        "s", lambda g, m: (jnp.tanh(tap.dense("l", g, m)), None), y, v2
      )
      return jnp.mean(jnp.sum(h**2, -1))

    self.assertEqual(
      fisher_fast.plan(loss.fn, params, batch), {"w": "tap", "v": "vmap"}
    )
    _, got = jax.jit(lambda p, b: fisher_fast.value_and_grad(loss.fn, p, b))(
      params, batch
    )
    want = jax.grad(lambda p: loss.fn(p, batch, fisher_fast.PLAIN))(params)
    _assert_close(got, want, rtol=1e-5)
    got = jax.jit(lambda p, b: _fast(loss, p, b))(params, batch)
    _assert_close(got, _naive(loss, params, batch), rtol=1e-5)

  def test_rows_scan_checks_its_lengths(self):
    w = jnp.ones((3, 2, 2))
    for xs, length in (
      ((fisher_fast.PLAIN.rows(w), jnp.ones(2)), None),
      (fisher_fast.PLAIN.rows(w), 2),
    ):
      with self.assertRaisesRegex(ValueError, "disagree"):
        fisher_fast.PLAIN.scan(
          "s", lambda c, x: (c, None), jnp.ones(2), xs, length
        )

  def test_plain_tap_is_the_plain_loss(self):
    # Called without a tap, a tapped loss is the ordinary loss: against a
    # NumPy forward of the same MLP (float64), not against itself.
    params, batch = _mlp_setup(0)
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    h = np.asarray(batch["x"], np.float64)
    names = sorted((k for k in p if k[2:].isdigit()), key=lambda k: int(k[2:]))
    for name in names:
      h = np.maximum(h @ p[name]["kernel"] + p[name]["bias"], 0.0)
    logits = h @ p["a_head"]["kernel"] + p["a_head"]["bias"]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean(logp[np.arange(len(logp)), np.asarray(batch["y"])])
    np.testing.assert_allclose(float(_mlp_loss(params, batch)), want, rtol=1e-5)
    self.assertIn("_mlp_loss", _mlp_loss.__name__)

  def test_auto_keeps_plain_losses_on_vmap(self):
    params, batch = _mlp_setup(0)
    plain = lambda p, b: _mlp_loss(p, b)
    got = fisher.fisher_diagonal(plain, params, batch)
    want = _naive(_mlp_loss, params, batch)
    chex.assert_trees_all_close(got, want)
    with self.assertRaisesRegex(ValueError, "needs a tap-aware loss_fn"):
      fisher.fisher_diagonal(plain, params, batch, method="taps")
    with self.assertRaisesRegex(ValueError, "unknown method"):
      fisher.fisher_diagonal(plain, params, batch, method="fast")

  def test_no_retrace(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, b):
      return fisher.fisher_diagonal(_mlp_loss, p, b)

    for seed in range(3):
      f(*_mlp_setup(seed))

  def test_under_vmap_over_params(self):
    """Discovery traces inside an outer vmap (e.g. over seeds) too."""
    setups = [_mlp_setup(seed) for seed in range(2)]
    params = jax.tree.map(lambda *v: jnp.stack(v), *[p for p, _ in setups])
    batch = setups[0][1]
    got = jax.jit(jax.vmap(lambda p: _fast(_mlp_loss, p, batch)))(params)
    want = jax.vmap(lambda p: _naive(_mlp_loss, p, batch))(params)
    _assert_close(got, want, rtol=1e-5)

  def test_errors(self):
    params, batch = _mlp_setup(0)

    def twice(p, b, tap):
      h = tap.dense("same", b["x"], p["a_0"]["kernel"])
      return jnp.mean(tap.dense("same", h, p["a_1"]["kernel"]))

    def bad_shape(p, b, tap):
      return jnp.mean(tap.dense("w", b["x"], p["a_1"]["kernel"]))

    def last_axis(p, b, tap):
      return jnp.mean(tap.dense("w", b["x"], p["a_0"]["kernel"], batch_axis=1))

    for fn, msg in [
      (twice, "used twice"),
      (bad_shape, "does not map inputs"),
      (last_axis, "must index a leading axis"),
    ]:
      with self.assertRaisesRegex(ValueError, msg):
        fisher_fast.per_example_fisher(fn, params, batch)

  def test_example_axis_mismatch(self):
    params, batch = _mlp_setup(0)

    def loss(p, b, tap):
      x = jnp.concatenate([b["x"], b["x"]])  # 2B rows: not one per example
      return jnp.mean(tap.dense("w", x, p["a_0"]["kernel"]))

    with self.assertRaisesRegex(ValueError, "the batch has 6 examples"):
      fisher_fast.per_example_fisher(loss, params, batch)


if __name__ == "__main__":
  absltest.main()
