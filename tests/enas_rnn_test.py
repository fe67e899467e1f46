"""Tests for wpl_jax.enas.supernet: the shared ENAS RNN child forward."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from flax import errors as flax_errors

from benchmarks.ceiling import matmul_flops
from wpl_jax.enas import losses, supernet
from wpl_jax.enas import search_space as ss

V, H, N, T, B = 50, 8, 4, 5, 4
_CELLS = (
  "tanh|0:relu|0:identity|1:sigmoid",
  "relu|0:sigmoid|1:tanh|2:identity",
  "identity|0:identity|0:relu|0:tanh",
  "sigmoid|0:tanh|1:relu|1:relu",
)


def _model(**kwargs):
  # A wide init and a small clip make the test see non-linear activations
  # and active clipping; no dropout unless asked.
  base = dict(
    vocab_size=V,
    hidden_size=H,
    num_nodes=N,
    init_range=0.5,
    clip_norm=1.0,
    dropout_output=0.0,
    dropout_input=0.0,
    dropout_embed=0.0,
    dropconnect=0.0,
  )
  base.update(kwargs)
  return supernet.SharedRNN(**base)


@functools.cache
def _setup(seed=0):
  """Variables (with non-trivial running stats), inputs, targets, hidden."""

  @jax.jit
  def make(key):
    k_init, k_tok, k_h, k_mu, k_var = jax.random.split(key, 5)
    variables = supernet.init_variables(_model(), key=k_init)
    # Non-trivial running statistics, so eval mode really uses them.
    variables["batch_stats"] = {
      "batch_norm": {
        "mean": 0.1 * jax.random.normal(k_mu, (H,)),
        "var": jax.random.uniform(k_var, (H,), minval=0.5, maxval=2.0),
      }
    }
    tokens = jax.random.randint(k_tok, (T + 1, B), 0, V)
    hidden = 2.0 * jax.random.normal(k_h, (B, H))
    return variables, tokens[:-1], tokens[1:], hidden

  # Parameter shapes do not depend on dropout rates or hidden_source, so
  # every test model can share these variables.
  return make(jax.random.key(seed))


def _np_forward(variables, tokens, hidden, cell, *, train, source="last"):
  """Independent float64 NumPy ENAS cell, node by node (docs/method.md §4)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
  st = jax.tree.map(
    lambda x: np.asarray(x, np.float64), variables["batch_stats"]
  )
  mean_r, var_r = st["batch_norm"]["mean"], st["batch_norm"]["var"]
  n0, bn = p["node0"], p["batch_norm"]
  acts = [a for a in cell.split("|")]
  act_names = [acts[0]] + [a.split(":")[1] for a in acts[1:]]
  parents = [None] + [int(a.split(":")[0]) for a in acts[1:]]
  funcs = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "identity": lambda z: z,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
  }
  sig = funcs["sigmoid"]
  # Edge (i -> j) is the k-th pair when listed child by child.
  edge, k = {}, 0
  for j in range(1, N):
    for i in range(j):
      edge[(i, j)], k = k, k + 1
  h_prev = np.asarray(hidden, np.float64)
  outs, clipped = [], 0
  for t in range(tokens.shape[0]):
    x = p["embedding"][np.asarray(tokens[t])]
    c = sig(x @ n0["w_xc"] + n0["b_xc"] + h_prev @ n0["w_hc"])
    f = funcs[act_names[0]]
    h = {0: c * f(x @ n0["w_xh"] + n0["b_xh"] + h_prev @ n0["w_hh"])}
    h[0] = h[0] + (1 - c) * h_prev
    for j in range(1, N):
      i = parents[j]
      e = edge[(i, j)]
      c = sig(h[i] @ p["cell"]["edge_c"][e])
      f = funcs[act_names[j]]
      h[j] = c * f(h[i] @ p["cell"]["edge_h"][e]) + (1 - c) * h[i]
    leaves = [h[j] for j in range(N) if j not in parents[1:]]
    out = np.mean(leaves, axis=0)
    if train:
      mu, var = out.mean(0), out.var(0)
      mean_r = 0.9 * mean_r + 0.1 * mu
      var_r = 0.9 * var_r + 0.1 * var * B / (B - 1)
    else:
      mu, var = mean_r, var_r
    y = (out - mu) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]
    outs.append(y)
    new_h = h[N - 1] if source == "last" else out
    norms = np.linalg.norm(new_h, axis=1, keepdims=True)
    clipped += int(np.sum(norms > 1.0))
    h_prev = np.where(norms > 1.0, new_h / norms, new_h)
  logits = np.stack(outs) @ p["embedding"].T + p["decoder_bias"]
  return logits, h_prev, (mean_r, var_r), clipped


@functools.partial(
  jax.jit, static_argnums=0, static_argnames=("train", "mutable")
)
def _apply(model, variables, inputs, hidden, arch, rngs=None, **kwargs):
  """`model.apply` jitted once per model config (the model is static)."""
  return model.apply(variables, inputs, hidden, arch, rngs=rngs, **kwargs)


class HighwayVjpTest(parameterized.TestCase):
  """The node update's hand-written VJP against autodiff of its formula
  (`highway_parts`, the four activations behind a select), per activation,
  with exact zeros in z (relu'(0)), under jit with a traced activation id,
  and through the whole model's gradient."""

  def _data(self):
    k = jax.random.split(jax.random.key(7), 3)
    z = 3.0 * jax.random.normal(k[0], (5, 2 * H))
    z = z.at[0, H:].set(0.0)  # relu and the others at exactly 0
    h_in = jax.random.normal(k[1], (5, H))
    g = jax.random.normal(k[2], (5, H))
    return z, h_in, g

  @parameterized.parameters(0, 1, 2, 3)
  def test_vjp_equals_autodiff(self, act):
    z, h_in, g = self._data()

    def autodiff(z, h, a):
      return supernet.highway_parts(z, h, a)[0]

    @jax.jit
    def both(z, h_in, g, a):
      out, vjp = jax.vjp(lambda z, h: supernet.highway(z, h, a), z, h_in)
      out_w, vjp_w = jax.vjp(lambda z, h: autodiff(z, h, a), z, h_in)
      return out, vjp(g), out_w, vjp_w(g)

    out, (dz, dh), out_w, (dz_w, dh_w) = both(z, h_in, g, jnp.int32(act))
    np.testing.assert_array_equal(out, out_w)
    np.testing.assert_allclose(dz, dz_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dh, dh_w, rtol=1e-5, atol=1e-6)
    self.assertGreater(float(jnp.abs(dz[:, :H]).max()), 0.0)  # gate path

  @parameterized.parameters(*_CELLS)
  def test_model_gradient_equals_autodiff(self, cell):
    variables, inputs, targets, hidden = _setup()
    model = _model(node_unroll=True)
    arch = ss.from_string(cell)

    def loss(params):
      logits, _ = model.apply(
        {**variables, "params": params}, inputs, hidden, arch, train=False
      )
      return losses.cross_entropy(logits, targets)

    got = jax.jit(jax.grad(loss))(variables["params"])
    hand = supernet.highway
    try:
      supernet.highway = lambda z, h, a: supernet.highway_parts(z, h, a)[0]
      want = jax.jit(jax.grad(loss))(variables["params"])
    finally:
      supernet.highway = hand
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
    self.assertGreater(float(jnp.abs(got["cell"]["edge_h"]).max()), 0.0)


class NodeMeanTest(absltest.TestCase):
  """The cell output's weighted mean over the nodes (`node_mean`, a sum
  over separate arrays) against NumPy, under jit, with the leaves' and the
  published cell's weights."""

  def test_value_and_vjp_against_numpy(self):
    rng = np.random.default_rng(5)
    n, b = 5, 3
    nodes = rng.normal(size=(n, b, H)).astype(np.float32)
    g = rng.normal(size=(b, H)).astype(np.float32)
    for w in ([0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.25, 0.25, 0.25, 0.25]):
      w = np.asarray(w, np.float32)

      @jax.jit
      def run(nodes, w, g):
        y, vjp = jax.vjp(lambda v: supernet.node_mean(tuple(v), w), nodes)
        return y, vjp(g)[0]

      y, d_nodes = run(nodes, w, g)
      want = np.einsum("n,nbh->bh", w.astype(np.float64), nodes)
      np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(
        d_nodes, w[:, None, None] * g[None], rtol=1e-6, atol=1e-7
      )

  def test_count_mismatch_raises(self):
    nodes = (jnp.zeros((2, H)),) * 3
    with self.assertRaisesRegex(ValueError, "3 nodes but 4 weights"):
      supernet.node_mean(nodes, jnp.ones((4,)))


class ReadWriteNodeTest(parameterized.TestCase):
  """A node's read of its parent (`read_parent`, a select among the node
  arrays) and its write (`write_node`) against NumPy indexing, under jit
  with a traced parent: the unrolled form (a Python-int j, candidates
  nodes[:j]), the rolled form (j traced, all N), and vmapped over
  parents (the batched reward evaluation)."""

  def _data(self):
    rng = np.random.default_rng(6)
    n, b = 5, 3
    nodes = rng.normal(size=(n, b, H)).astype(np.float32)
    return nodes, rng.normal(size=(b, H)).astype(np.float32)

  @parameterized.parameters(1, 3, 5)
  def test_read_value_and_vjp_against_numpy(self, j):
    nodes, g = self._data()
    for static in (True, False):

      @jax.jit
      def run(nodes, k, g, j=j, static=static):
        read = lambda v: supernet.read_parent(
          tuple(v), k, j if static else None
        )
        y, vjp = jax.vjp(read, nodes)
        return y, vjp(g)[0]

      for k in range(j):
        y, d_nodes = run(nodes, jnp.int32(k), g)
        np.testing.assert_array_equal(y, nodes[k])
        want = np.zeros_like(nodes)
        want[k] = g
        np.testing.assert_array_equal(d_nodes, want)

  def test_read_vmapped_over_parents(self):
    nodes, _ = self._data()
    ks = np.array([0, 3, 1, 2], np.int32)
    read = jax.vmap(lambda k: supernet.read_parent(tuple(nodes), k, 4))
    np.testing.assert_array_equal(jax.jit(read)(ks), nodes[ks])

  def test_write_static_and_traced(self):
    nodes, h = self._data()
    for j in (1, 4):
      want = nodes.copy()
      want[j] = h
      got = supernet.write_node(tuple(nodes), h, j)
      self.assertIsInstance(got, tuple)
      np.testing.assert_array_equal(np.stack(got), want)
      traced = jax.jit(lambda v, j: supernet.write_node(tuple(v), h, j))
      np.testing.assert_array_equal(np.stack(traced(nodes, jnp.int32(j))), want)


class FusedDecoderLossTest(parameterized.TestCase):
  """`chunked_nll_sum`'s one-pass custom VJP against autodiff of the NumPy-
  style formula on the whole [T, B, V] logits."""

  def _data(self):
    k = jax.random.split(jax.random.key(3), 5)
    params = {
      "embedding": jax.random.normal(k[0], (V, H)),
      "decoder_bias": jax.random.normal(k[1], (V,)),
    }
    out = jax.random.normal(k[2], (T, B, H))
    y = jax.random.randint(k[3], (T, B), 0, V)
    w = jax.random.uniform(k[4], (T, B))
    return params, out, y, w

  @staticmethod
  def _full(params, out, y, w):
    logits = out @ params["embedding"].T + params["decoder_bias"][None, None]
    logz = jax.scipy.special.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    return jnp.sum(w * (logz - picked))

  @parameterized.parameters(1, 3, 7, T * B, 2 * T * B)  # 7: padded chunks
  def test_value_and_gradients(self, chunk):
    params, out, y, w = self._data()
    fused = functools.partial(losses.chunked_nll_sum, chunk=chunk)
    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 3)))(
      params, out, y, w
    )
    want = jax.value_and_grad(self._full, argnums=(0, 1, 3))(params, out, y, w)
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5)

  def test_under_vmap_and_scaled_cotangent(self):
    params, out, y, w = self._data()
    fused = functools.partial(losses.chunked_nll_sum, chunk=3)
    outs = jnp.stack([out, 2.0 * out])
    got = jax.vmap(jax.grad(lambda o: 0.5 * fused(params, o, y, w)))(outs)
    want = jax.vmap(jax.grad(lambda o: 0.5 * self._full(params, o, y, w)))(outs)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)

  @parameterized.parameters(0, 1, 3)
  def test_one_input_differentiated(self, argnum):
    # Only the perturbed input's gradient is formed (symbolic zeros); it
    # must still be the right one.
    params, out, y, w = self._data()
    fused = functools.partial(losses.chunked_nll_sum, chunk=7)
    got = jax.grad(fused, argnums=argnum)(params, out, y, w)
    want = jax.grad(self._full, argnums=argnum)(params, out, y, w)
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5)

  def test_skips_the_embedding_gradient_when_not_needed(self):
    params, out, y, w = self._data()
    fused = functools.partial(losses.chunked_nll_sum, chunk=5)

    def flops(argnums):
      jaxpr = jax.make_jaxpr(jax.grad(fused, argnums=argnums))(
        params, out, y, w
      )
      return matmul_flops(jaxpr)

    # Forward logits and d out = d logits @ E; d E = d logitsᵀ @ out only
    # when the params are differentiated: one [V, T·B] × [T·B, H] GEMM.
    self.assertEqual(flops(1), 2 * (2 * T * B * V * H))
    self.assertEqual(flops((0, 1)), 3 * (2 * T * B * V * H))

  def test_mean_matches_cross_entropy(self):
    params, out, y, _ = self._data()
    logits = out @ params["embedding"].T + params["decoder_bias"][None, None]
    np.testing.assert_allclose(
      losses.chunked_cross_entropy(params, out, y, chunk=6),
      losses.cross_entropy(logits, y),
      rtol=1e-6,
    )


def _np_published_cell(params, tokens, hidden, cell):
  """A float64 NumPy DARTS-style 3-node cell, written out step by step.

  s0 = h + c0 (tanh(x W_xh + b_xh + h W_hh) - h), c0 = σ(x W_xc + b_xc +
  h W_hc); s_j = s_p + c_j (f_j(s_p W^h) - s_p), c_j = σ(s_p W^c) for the
  parent p of node j; the output is (s1 + s2) / 2, and the output is also
  the next step's h (no batch-norm, no clip).
  """
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  n0 = p["node0"]
  _, a1, a2 = cell.split("|")
  p2, f2 = int(a2.split(":")[0]), a2.split(":")[1]
  f1 = a1.split(":")[1]
  funcs = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "identity": lambda z: z,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
  }
  sig = funcs["sigmoid"]
  # 3 nodes: edges (0 -> 1) = 0, (0 -> 2) = 1, (1 -> 2) = 2.
  e2 = 1 if p2 == 0 else 2
  h = np.asarray(hidden, np.float64)
  outs = []
  for t in range(tokens.shape[0]):
    x = p["embedding"][np.asarray(tokens[t])]
    c0 = sig(x @ n0["w_xc"] + n0["b_xc"] + h @ n0["w_hc"])
    s0 = h + c0 * (np.tanh(x @ n0["w_xh"] + n0["b_xh"] + h @ n0["w_hh"]) - h)
    c1 = sig(s0 @ p["cell"]["edge_c"][0])
    s1 = s0 + c1 * (funcs[f1](s0 @ p["cell"]["edge_h"][0]) - s0)
    sp = s0 if p2 == 0 else s1
    c2 = sig(sp @ p["cell"]["edge_c"][e2])
    s2 = sp + c2 * (funcs[f2](sp @ p["cell"]["edge_h"][e2]) - sp)
    h = (s1 + s2) / 2
    outs.append(h)
  logits = np.stack(outs) @ p["embedding"].T + p["decoder_bias"]
  return logits, h


class PublishedCellTest(parameterized.TestCase):
  """The published DARTS-style cell option against a hand-written cell."""

  @parameterized.product(
    cell=("tanh|0:relu|1:sigmoid", "tanh|0:identity|0:tanh"),
    train=(False, True),
  )
  def test_matches_numpy(self, cell, train):
    model = supernet.SharedRNN(
      vocab_size=V,
      hidden_size=H,
      num_nodes=3,
      init_range=0.5,
      clip_norm=0.0,
      cell_output="all",
      hidden_source="output",
      use_batch_norm=False,
      dropout_output=0.0,
      dropout_input=0.0,
      dropout_embed=0.0,
      dropconnect=0.0,
    )
    k_init, k_tok, k_h = jax.random.split(jax.random.key(11), 3)
    variables = supernet.init_variables(model, key=k_init)
    self.assertNotIn("batch_norm", variables["params"])
    tokens = jax.random.randint(k_tok, (T, B), 0, V)
    hidden = 2.0 * jax.random.normal(k_h, (B, H))
    logits, new_h = _apply(
      model, variables, tokens, hidden, ss.from_string(cell), train=train
    )
    want_logits, want_h = _np_published_cell(
      variables["params"], tokens, hidden, cell
    )
    # Hidden norms above 1 pass unclipped (clip_norm = 0 is no clip).
    self.assertGreater(float(np.max(np.linalg.norm(hidden, axis=1))), 1.0)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_h, want_h, rtol=1e-4, atol=1e-5)

  def test_chain_differs_from_the_enas_cell(self):
    # On a chain the ENAS cell outputs node 2 alone; the published cell
    # the mean of nodes 1 and 2: the two options are different networks.
    kw = dict(vocab_size=V, hidden_size=H, num_nodes=3, init_range=0.5)
    enas = supernet.SharedRNN(**kw, use_batch_norm=False)
    pub = supernet.SharedRNN(**kw, use_batch_norm=False, cell_output="all")
    variables = supernet.init_variables(enas, key=jax.random.key(0))
    tokens = jnp.zeros((T, B), jnp.int32)
    hidden = jnp.zeros((B, H))
    arch = ss.from_string("tanh|0:relu|1:sigmoid")
    a, _ = _apply(enas, variables, tokens, hidden, arch)
    b, _ = _apply(pub, variables, tokens, hidden, arch)
    self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-3)

  def test_unknown_cell_output(self):
    model = _model(cell_output="concat")
    variables, inputs, _, hidden = _setup()
    with self.assertRaisesRegex(ValueError, "cell_output must be one of"):
      model.apply(variables, inputs, hidden, ss.from_string(_CELLS[0]))


class SharedRNNTest(parameterized.TestCase):
  def test_paper_size_parameter_count(self):
    self.assertEqual(supernet.paper_size_count(), 146_014_000)

  def test_tiny_param_layout(self):
    model = _model()
    shapes = jax.eval_shape(
      lambda k: supernet.init_variables(model, key=k), jax.random.key(0)
    )
    p = shapes["params"]
    e = ss.num_edges(N)
    self.assertEqual(p["cell"]["edge_h"].shape, (e, H, H))
    self.assertEqual(p["cell"]["edge_c"].shape, (e, H, H))
    want = V * H + V + 4 * H * H + 2 * H + 2 * e * H * H + 2 * H
    self.assertEqual(supernet.count_params(p), want)
    self.assertEqual(shapes["batch_stats"]["batch_norm"]["var"].shape, (H,))

  @parameterized.product(cell=_CELLS[:3], source=supernet.HIDDEN_SOURCES)
  def test_eval_forward_matches_numpy(self, cell, source):
    variables, inputs, _, hidden = _setup()
    logits, new_h = _apply(
      _model(hidden_source=source),
      variables,
      inputs,
      hidden,
      ss.from_string(cell),
    )
    want_logits, want_h, _, clipped = _np_forward(
      variables, inputs, hidden, cell, train=False, source=source
    )
    self.assertGreater(clipped, 0)  # the norm clip was exercised
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_h, want_h, rtol=1e-4, atol=1e-5)

  def test_train_batch_norm_matches_numpy(self):
    variables, inputs, _, hidden = _setup()
    cell = _CELLS[3]
    (logits, new_h), updates = _apply(
      _model(),
      variables,
      inputs,
      hidden,
      ss.from_string(cell),
      train=True,
      mutable=("batch_stats",),
    )
    want_logits, want_h, (mean_r, var_r), _ = _np_forward(
      variables, inputs, hidden, cell, train=True
    )
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_h, want_h, rtol=1e-4, atol=1e-5)
    stats = updates["batch_stats"]["batch_norm"]
    np.testing.assert_allclose(stats["mean"], mean_r, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var_r, rtol=1e-4, atol=1e-6)

  def test_one_trace_serves_every_architecture(self):
    model = _model()
    variables, inputs, targets, hidden = _setup()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_fn(variables, arch):
      return losses.eval_loss(model, variables, arch, inputs, targets, hidden)

    values = [float(loss_fn(variables, ss.from_string(c))[0]) for c in _CELLS]
    self.assertLen(set(values), len(_CELLS))  # really different children

  def test_dropout(self):
    model = _model(
      dropout_output=0.4, dropout_input=0.65, dropout_embed=0.1, dropconnect=0.5
    )
    variables, inputs, _, hidden = _setup()
    arch = ss.from_string(_CELLS[0])
    k1, k2 = jax.random.split(jax.random.key(3))
    a, b, a2 = (
      _apply(model, variables, inputs, hidden, arch, {"dropout": k}, train=True)
      for k in (k1, k2, k1)
    )
    np.testing.assert_array_equal(a[0], a2[0])
    self.assertGreater(float(jnp.max(jnp.abs(a[0] - b[0]))), 1e-3)
    with self.assertRaises(flax_errors.InvalidRngError):  # no dropout key
      model.apply(variables, inputs, hidden, arch, train=True)

  def test_gradients_reach_only_the_cell_edges(self):
    model = _model()
    variables, inputs, targets, hidden = _setup()
    arch = ss.from_string(_CELLS[1])

    def loss(params):
      (logits, _), _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        inputs,
        hidden,
        arch,
        train=True,
        mutable=["batch_stats"],
      )
      return losses.cross_entropy(logits, targets)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for g in jax.tree.leaves(grads):
      self.assertTrue(np.all(np.isfinite(g)))
    # Only the N-1 edges of the cell get gradient (what WPL relies on).
    used = np.asarray(ss.edge_mask(arch))
    for name in ("edge_h", "edge_c"):
      per_edge = np.abs(np.asarray(grads["cell"][name])).sum(axis=(1, 2))
      np.testing.assert_array_equal(per_edge > 0, used, err_msg=name)

  def test_validation_perplexity_carries_hidden(self):
    model = _model()
    variables, _, _, hidden = _setup()
    arch = ss.from_string(_CELLS[2])
    toks = np.random.default_rng(0).integers(0, V, (3, T + 1, B), np.int32)
    inputs, targets = toks[:, :-1], toks[:, 1:]
    ppl = jax.jit(
      lambda v: losses.validation_perplexity(
        model, v, arch, inputs, targets, hidden
      )
    )(variables)
    h, values = hidden, []
    for i in range(3):
      logits, h = _apply(model, variables, inputs[i], h, arch)
      lp = jax.nn.log_softmax(np.asarray(logits, np.float64))
      values.append(-np.take_along_axis(lp, targets[i][..., None], -1).mean())
    np.testing.assert_allclose(ppl, np.exp(np.mean(values)), rtol=1e-5)

  def test_cross_entropy(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(T, B, V)).astype(np.float32)
    targets = rng.integers(0, V, (T, B), np.int32)
    z = logits - logits.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = -np.mean(np.take_along_axis(lp, targets[..., None], -1))
    got = jax.jit(losses.cross_entropy)(logits, targets)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with self.assertRaisesRegex(ValueError, "do not match"):
      losses.cross_entropy(logits, targets[:, :2])

  def test_shape_errors(self):
    model = _model()
    variables, inputs, _, hidden = _setup()
    arch = ss.from_string(_CELLS[0])
    with self.assertRaisesRegex(ValueError, "hidden"):
      model.apply(variables, inputs, hidden[:2], arch)
    with self.assertRaisesRegex(ValueError, "arch"):
      model.apply(variables, inputs, hidden, ss.stack([arch, arch]))


if __name__ == "__main__":
  absltest.main()
