"""ENAS shared RNN (the supernet): one compiled child forward for every cell."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wpl_jax import fisher_fast, taps
from wpl_jax.enas import search_space
from wpl_jax.enas.search_space import Arch
from wpl_jax.types import Array, PRNGKey, PyTree

# Where the hidden state passed to the next time step comes from.
HIDDEN_SOURCES = ("last", "leaf_mean", "output")
# What the cell outputs: the mean of the loose ends (ENAS) or of every node
# after node 0 (the published DARTS-style cell of the 32-cell study).
CELL_OUTPUTS = ("leaves", "all")
# dtypes of the model's large products' inputs ("bfloat16": an opt-in, see
# `SharedRNN.matmul_dtype`).
MATMUL_DTYPES = ("float32", "bfloat16")


def _uniform(scale: float):
  """Initializer drawing U(-scale, scale), as the reference's reset does."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def _activate(act_id: Array, z: Array) -> Array:
  """Applies ACTIVATIONS[act_id] (a traced int32 scalar) elementwise.

  All four are computed and one is selected, so no branch depends on the
  architecture (and `vmap` over architectures needs no rewrite).
  """
  return jnp.where(
    act_id == 0,
    jnp.tanh(z),
    jnp.where(
      act_id == 1,
      jax.nn.relu(z),
      jnp.where(act_id == 2, z, jax.nn.sigmoid(z)),
    ),
  )


def highway_parts(z_Bx2H: Array, h_in_BxH: Array, act_id: Array):
  """(h, c, f): the node's output, its gate σ(z_c) and f(z_h)."""
  hidden = h_in_BxH.shape[-1]
  c = jax.nn.sigmoid(z_Bx2H[:, :hidden])
  f = _activate(act_id, z_Bx2H[:, hidden:])
  return c * f + (1.0 - c) * h_in_BxH, c, f


@jax.custom_vjp
def highway(z_Bx2H: Array, h_in_BxH: Array, act_id: Array) -> Array:
  """ENAS node update: c = σ(z_c), h = c·f(z_h) + (1 − c)·h_in (REF §4).

  Differentiated by hand: the backward pass keeps c, f and h_in ([B, H]
  each) and reads every activation's derivative off f itself (tanh:
  1 − f², sigmoid: f(1 − f), relu: [f > 0], identity: 1), where autodiff
  of the four-way select kept each branch's intermediates. At H = 1000
  that is ~0.5 GB less temporary memory in a training step and in the
  Fisher update (WORKSPACE §6.3); the gradients are equal to rounding
  (tests/enas_rnn_test.py).
  """
  return highway_parts(z_Bx2H, h_in_BxH, act_id)[0]


def _highway_fwd(z_Bx2H, h_in_BxH, act_id):
  h, c, f = highway_parts(z_Bx2H, h_in_BxH, act_id)
  return h, (c, f, h_in_BxH, act_id)


def _highway_bwd(res, g_BxH):
  c, f, h_in, act_id = res
  d_f = g_BxH * c
  d_zc = g_BxH * (f - h_in) * c * (1.0 - c)
  # f'(z_h) from f = ACTIVATIONS[act_id](z_h); relu'(0) = 0 as in jax.nn.
  slope = jnp.where(
    act_id == 0,
    1.0 - f * f,
    jnp.where(
      act_id == 1,
      (f > 0).astype(f.dtype),
      jnp.where(act_id == 2, jnp.ones_like(f), f * (1.0 - f)),
    ),
  )
  d_z = jnp.concatenate([d_zc, d_f * slope], axis=-1)
  return d_z, g_BxH * (1.0 - c), None


highway.defvjp(_highway_fwd, _highway_bwd)


def _runtime_one(x: Array) -> Array:
  """1.0 (float32 scalar) from a traced value XLA cannot prove it equals:
  `x == x` for a float (False only for NaN), `x != INT32_MIN` for an
  int32 (False only for that value, which no weight or node index
  takes)."""
  if jnp.issubdtype(x.dtype, jnp.floating):
    return (x == x).astype(jnp.float32)
  return (x != jnp.iinfo(jnp.int32).min).astype(jnp.float32)


def _formed_once(g: Array, one: Array) -> Array:
  """`g / one`, `one` from `_runtime_one`: g itself, exactly.

  For a cotangent that several nodes' backward passes read. XLA fuses a
  cheap elementwise producer into each of its consumers, recomputing it
  there; in the unrolled node loop each node's cotangent then carried
  its descendants' and the batch-norm backward's arithmetic with it (the
  largest fusion grew from 88 to 458 ops at H = 16, 3–14 % slower steps;
  WORKSPACE §6.10). A divide is one XLA does not duplicate, so g is
  formed once and read by each consumer.
  """
  return g / one.astype(g.dtype)


@jax.custom_vjp
def node_mean(nodes: tuple[Array, ...], w_N: Array) -> Array:
  """Σ_k w[k] · nodes[k]: float32[B, H], the cell output's weighted mean.

  `nodes` holds the N node outputs as separate [B, H] arrays: N products
  and N − 1 adds that XLA fuses into one elementwise loop (over a stacked
  [N, B, H] array XLA:CPU ran the sum as a YNN reduce, several times
  slower; WORKSPACE §6.9). Backward: node k gets w[k] · g, g formed once
  (`_formed_once`); `w` gets none (it comes from the architecture).
  """
  if len(nodes) != w_N.shape[0]:
    raise ValueError(f"{len(nodes)} nodes but {w_N.shape[0]} weights")
  return sum(v * w_N[k] for k, v in enumerate(nodes))


def _node_mean_fwd(nodes, w_N):
  return node_mean(nodes, w_N), (w_N, _runtime_one(w_N[0]))


def _node_mean_bwd(res, g_BxH):
  w_N, one = res
  g_BxH = _formed_once(g_BxH, one)
  d_nodes = tuple(g_BxH * w_N[k] for k in range(w_N.shape[0]))
  return d_nodes, jnp.zeros_like(w_N)


node_mean.defvjp(_node_mean_fwd, _node_mean_bwd)


def read_parent(nodes: tuple[Array, ...], parent: Array, j=None) -> Array:
  """nodes[parent]: float32[B, H], for a traced int32 scalar `parent`.

  Args:
    nodes: the cell's N node outputs so far, separate [B, H] arrays.
    parent: which node to read, in [0, j) (clipped into range).
    j: the reading node's index when it is a Python int (the node loop
      unrolled): only nodes[:j] are candidates. None: all N are.

  A select among separate arrays. A dynamic slice of one stacked
  [N, B, H] node array made XLA:CPU copy that whole array at every node
  (the highway's saved input read it again after the next node's write):
  21 copies per time step in a training step (WORKSPACE §6.10).
  Backward: candidate k gets g where parent == k, else 0; g formed once
  (`_formed_once`).
  """
  cands = tuple(nodes if j is None else nodes[:j])
  if len(cands) == 1:
    return cands[0]
  k = jnp.clip(parent, 0, len(cands) - 1)
  return _select(len(cands), k, _runtime_one(parent), cands)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _select(n: int, k: Array, one: Array, cands: tuple) -> Array:
  del n, one
  return jax.lax.select_n(k, *cands)


def _select_fwd(n, k, one, cands):
  return _select(n, k, one, cands), (k, one)


def _select_bwd(n, res, g_BxH):
  k, one = res
  g_BxH = _formed_once(g_BxH, one)
  d_cands = tuple(jnp.where(k == i, g_BxH, 0.0) for i in range(n))
  return None, None, d_cands


_select.defvjp(_select_fwd, _select_bwd)


def write_node(nodes: tuple[Array, ...], h_BxH: Array, j) -> tuple:
  """`nodes` with nodes[j] = h: a tuple edit for a Python-int `j`, else
  (a rolled node scan) one select per node."""
  if isinstance(j, (int, np.integer)):
    return (*nodes[:j], h_BxH, *nodes[j + 1 :])
  return tuple(jnp.where(j == k, h_BxH, v) for k, v in enumerate(nodes))


class _Node0(nn.Module):
  """Node 0's weights: W_xc, W_xh (with biases), W_hc, W_hh (no bias)."""

  hidden_size: int
  init_range: float

  @nn.compact
  def __call__(self) -> dict[str, Array]:
    init, h = _uniform(self.init_range), self.hidden_size
    # The reference keeps one bias for each pair (W_xc, W_hc), (W_xh, W_hh)
    # since the two products are always summed.
    shapes = {
      "w_xc": (h, h),
      "b_xc": (h,),
      "w_xh": (h, h),
      "b_xh": (h,),
      "w_hc": (h, h),
      "w_hh": (h, h),
    }
    return {name: self.param(name, init, s) for name, s in shapes.items()}


class _Cell(nn.Module):
  """Stacked per-edge matrices W^h[e], W^c[e]: [E, H, H], no bias (REF §4)."""

  num_nodes: int
  hidden_size: int
  init_range: float

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    shape = (
      search_space.num_edges(self.num_nodes),
      self.hidden_size,
      self.hidden_size,
    )
    init = _uniform(self.init_range)
    return self.param("edge_h", init, shape), self.param("edge_c", init, shape)


class _BatchNorm(nn.Module):
  """Batch-norm scale/bias and running statistics of the cell output."""

  features: int
  init_range: float

  def setup(self):
    # The reference re-initialises every parameter U(±init_range), the
    # batch-norm scale and bias included.
    init = _uniform(self.init_range)
    self.scale = self.param("scale", init, (self.features,))
    self.bias = self.param("bias", init, (self.features,))
    self.mean = self.variable("batch_stats", "mean", jnp.zeros, self.features)
    self.var = self.variable("batch_stats", "var", jnp.ones, self.features)

  def __call__(self) -> tuple[Array, Array, Array, Array]:
    return self.scale, self.bias, self.mean.value, self.var.value

  def update(self, mean: Array, var: Array) -> None:
    if self.is_mutable_collection("batch_stats") and not self.is_initializing():
      self.mean.value = mean
      self.var.value = var


class SharedRNN(nn.Module):
  """The ENAS shared RNN: tied embedding, node-0 weights, edge matrices.

  `apply(variables, inputs, hidden, arch, train=..., rngs=..., mutable=...)`
  runs the child network `arch` over a time-major batch. The architecture
  is data: one compiled forward serves every `Arch` (docs/method.md §4).

  Variables:
    params:
      embedding [V, H]   tied input embedding and decoder weight
      decoder_bias [V]
      node0/{w_xc, b_xc, w_xh, b_xh, w_hc, w_hh}   [H, H] and [H]
      cell/edge_h, cell/edge_c [E, H, H]   edge e = `edge_index(i, j)`,
                                           used as h_i @ W[e] (no bias)
      batch_norm/{scale, bias} [H]
    batch_stats:
      batch_norm/{mean, var} [H]
  With V = 10000, H = 1000, N = 12 this is 146,014,000 parameters.

  Reference behaviours kept (docs/method.md §4), named here once:
  * Batch-norm runs per time step on the [B, H] cell output (the reference
    calls BatchNorm1d inside the time loop): training normalises with the
    biased batch variance and moves the running stats once per step with
    `bn_momentum` (PyTorch convention, unbiased variance); eval uses the
    running stats. Stats are written only when "batch_stats" is mutable.
  * `hidden_source="last"`: the next hidden state is h of node N-1, not the
    cell output ("output", or its older name "leaf_mean", passes the
    pre-norm cell output).
  * The hidden state is rescaled to norm <= `clip_norm` per example, with
    the scale factor treated as a constant in the backward pass.
  * DropConnect masks on W_hc and W_hh and the locked input/output dropout
    masks are drawn once per call and shared over time steps; embedding
    dropout drops whole words (rows of the table) for the input lookup
    only, not for the tied decoder.

  Attributes:
    vocab_size: V.
    hidden_size: H (embedding size = hidden size, required by the tying).
    num_nodes: N, nodes per cell; E = N(N-1)/2 edges.
    dropout_output: locked dropout on cell outputs before the decoder.
    dropout_input: locked dropout on the embedded inputs.
    dropout_embed: word-level dropout on embedding rows.
    dropconnect: DropConnect rate on W_hc and W_hh.
    clip_norm: per-example max L2 norm of the carried hidden state (0: no
      clip, as in the published DARTS-style cell).
    init_range: every parameter ~ U(±init_range), decoder bias 0.
    hidden_source: "last" (reference), or "output" (= "leaf_mean"): the
      pre-norm cell output.
    cell_output: "leaves" (ENAS: the mean of the nodes no node reads) or
      "all" (the published DARTS-style cell: the mean of nodes 1..N-1).
      The published cell of the 32-cell study (WORKSPACE §7) is
      `cell_output="all", hidden_source="output", use_batch_norm=False,
      clip_norm=0`.
    use_batch_norm: normalise the cell output (the reference search does).
    bn_momentum: weight of the new batch statistics in the running ones.
    bn_epsilon: variance epsilon.
    node_unroll: `unroll` of the scan over nodes 1..N-1 inside a time step;
      1 keeps compile time flat in N (CPU eval forward: ~0.8 s at N = 4 or
      12), True unrolls fully (N = 12: ~2.5 s; may run faster on GPU).
    matmul_dtype: "float32" (default), or "bfloat16": every large
      product takes bfloat16 inputs and accumulates and returns float32:
      node 0's input projection ("node0_x", all steps at once) and
      hidden projection ("node0_h"), every "edge" (35 × N per batch), and
      the tied decoder's logits (here, and in `losses.chunked_nll_sum`
      when the caller passes the same `matmul_dtype`); the weights are
      cast once per call. Everything else (params, gradients,
      activations, gates, softmax, the optimizer) stays float32. An
      opt-in for CPUs with bfloat16 matrix units (AVX512-BF16 / AMX) and
      accelerators; it changes the loss by more than rounding
      (WORKSPACE §6.7–6.8).
  """

  vocab_size: int
  hidden_size: int
  num_nodes: int
  dropout_output: float = 0.4
  dropout_input: float = 0.65
  dropout_embed: float = 0.1
  dropconnect: float = 0.5
  clip_norm: float = 25.0
  init_range: float = 0.025
  hidden_source: str = "last"
  cell_output: str = "leaves"
  use_batch_norm: bool = True
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  node_unroll: int | bool = 1
  matmul_dtype: str = "float32"

  def dropout_masks(self, train: bool, batch: int) -> dict:
    """Scaled keep-masks (None when off) from one draw of the dropout rng."""
    h, v = self.hidden_size, self.vocab_size
    specs = {
      "embed": (self.dropout_embed, (v,)),
      "input": (self.dropout_input, (batch, h)),
      "w_hc": (self.dropconnect, (h, h)),
      "w_hh": (self.dropconnect, (h, h)),
      "output": (self.dropout_output, (batch, h)),
    }
    masks = dict.fromkeys(specs)
    active = [k for k, (rate, _) in specs.items() if train and rate > 0]
    if not active:
      return masks
    # One uniform draw split five ways compiles much faster on CPU than five
    # separate `bernoulli` calls; the masks are still independent.
    sizes = [math.prod(specs[k][1]) for k in active]
    u = jax.random.uniform(self.make_rng("dropout"), (sum(sizes),))
    offsets = np.cumsum([0] + sizes)
    for i, k in enumerate(active):
      rate, shape = specs[k]
      keep = 1.0 - rate
      u_k = u[offsets[i] : offsets[i + 1]].reshape(shape)
      masks[k] = (u_k < keep).astype(jnp.float32) / keep
    return masks

  @nn.compact
  def __call__(
    self,
    inputs_TxB: Array,
    hidden_BxH: Array,
    arch: Arch,
    *,
    train: bool = False,
    decode: bool = True,
    tap: fisher_fast.Tap = fisher_fast.PLAIN,
    edges: Array | None = None,
  ) -> tuple[Array, Array]:
    """Runs the child `arch` over a time-major batch of tokens.

    The forward is written against the tap protocol (`wpl_jax.fisher_fast`):
    with the plain tap it is an ordinary forward; `enas.edge_fisher` passes
    a recording/probing tap and the arch's edge matrices as `edges` to get
    the exact per-example Fisher of the edges from one backward pass. Tap
    sites: node 0's input projection "node0_x" (examples on axis 1), and in
    the time scan "time" node 0's recurrent matmul "node0_h" and the scan
    over nodes 1..N-1 "nodes", whose step's edge matmul is "edge".

    Args:
      inputs_TxB: int32[T, B] token ids.
      hidden_BxH: float32[B, H] hidden state from the previous batch (zeros
        at the start); the caller stops its gradient between batches.
      arch: one `Arch` with int32[N] fields (`vmap` for several).
      train: dropout on and batch statistics in the batch-norm. Needs
        `rngs={"dropout": key}` when any dropout rate is non-zero.
      decode: apply the tied decoder. False returns the float32[T, B, H]
        decoder inputs (after output dropout) instead of the logits, for
        `losses.chunked_cross_entropy`, which never holds all [T, B, V] logits.
      tap: the tap (`fisher_fast.PLAIN`: an ordinary forward). A
        per-example tap (the Fisher's) needs separable examples: not with
        `train=True` and batch-norm; a gradient's tap works in any mode.
      edges: None to use the arch's edges from the params, or float32
        [N-1, H, 2H]: row j-1 is the matrix node j reads, `[W^c | W^h]`
        of edge (parents[j] -> j) (`arch_edges` gathers them).

    Returns:
      `(logits, new_hidden)`: float32[T, B, V] next-token logits (or the
      [T, B, H] decoder inputs when `decode=False`) and the float32[B, H]
      hidden state after the last step.
    """
    n, h, v = self.num_nodes, self.hidden_size, self.vocab_size
    if inputs_TxB.ndim != 2:
      raise ValueError(f"inputs must be [T, B] tokens, got {inputs_TxB.shape}")
    batch = inputs_TxB.shape[1]
    if hidden_BxH.shape != (batch, h):
      raise ValueError(f"hidden must be {(batch, h)}, got {hidden_BxH.shape}")
    if arch.activations.shape != (n,) or arch.parents.shape != (n,):
      raise ValueError(
        f"arch must have [{n}] fields (vmap over batches), got "
        f"{arch.activations.shape} and {arch.parents.shape}"
      )
    if self.hidden_source not in HIDDEN_SOURCES:
      raise ValueError(f"hidden_source must be one of {HIDDEN_SOURCES}")
    if self.cell_output not in CELL_OUTPUTS:
      raise ValueError(f"cell_output must be one of {CELL_OUTPUTS}")
    if self.matmul_dtype not in MATMUL_DTYPES:
      raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}")
    low = self.matmul_dtype != "float32"
    if low and tap.per_example:
      raise ValueError(
        "the per-example Fisher's taps need float32 matmuls: use "
        'matmul_dtype="float32" (batch_grad_squared and the vmap '
        "estimators run either way)"
      )
    md = jnp.dtype(self.matmul_dtype)

    def recurrent(name, x, w):
      """`tap.dense(name, x, w)`; with a low `matmul_dtype` `w` is
      `(w, taps.low_pair(w, dtype))`, made once outside the time scan."""
      if not low:
        return tap.dense(name, x, w)
      w, pair = w
      return tap.dense(name, x, w, low=pair)

    if tap.per_example and train and self.use_batch_norm:
      raise ValueError(
        "a per-example tap needs separable examples, but train-mode "
        "batch-norm normalises with batch statistics: use train=False"
      )
    if edges is not None and edges.shape != (n - 1, h, 2 * h):
      raise ValueError(
        f"edges must be [{n - 1}, {h}, {2 * h}] (N-1 rows of [W^c | W^h]), "
        f"got {edges.shape}"
      )

    embedding = self.param("embedding", _uniform(self.init_range), (v, h))
    decoder_bias = self.param("decoder_bias", nn.initializers.zeros, (v,))
    w0 = _Node0(h, self.init_range, name="node0")()
    edge_h, edge_c = _Cell(n, h, self.init_range, name="cell")()
    if self.use_batch_norm:
      bn = _BatchNorm(h, self.init_range, name="batch_norm")
      bn_scale, bn_bias, run_mean, run_var = bn()
    else:  # Placeholders threaded through the scan unchanged.
      bn_scale = bn_bias = run_mean = run_var = jnp.zeros((h,), jnp.float32)

    masks = self.dropout_masks(train, batch)
    # Embedding dropout drops whole words: one keep flag per vocabulary row.
    x_TxBxH = embedding[inputs_TxB]
    row_mask = masks["embed"]
    if row_mask is not None:
      x_TxBxH = x_TxBxH * row_mask[inputs_TxB][..., None]
    in_mask = masks["input"]  # locked: the same mask at every step
    if in_mask is not None:
      x_TxBxH = x_TxBxH * in_mask[None]

    w_hc, w_hh = w0["w_hc"], w0["w_hh"]
    hc_mask, hh_mask = masks["w_hc"], masks["w_hh"]
    if hc_mask is not None:
      w_hc = w_hc * hc_mask
    if hh_mask is not None:
      w_hh = w_hh * hh_mask

    # Gate and candidate weights are fused, [..., :H] for c and [..., H:]
    # for the activation's input, for node 0 and every edge alike. Node 0's
    # input projections run for all steps at once, outside the time scan.
    if low:
      # One [H, 2H] weight, so that one bf16 product forms it. Not a params
      # leaf, so this site is not tapped: `tapped_grad` takes w_xc's and
      # w_xh's gradient by autodiff, through low_dot's one bf16 product
      # outside the time scan (what its tap would form too).
      w_x = jnp.concatenate([w0["w_xc"], w0["w_xh"]], axis=1)
      xz_TxBx2H = tap.dense(
        "node0_x",
        x_TxBxH,
        w_x,
        (w0["b_xc"], w0["b_xh"]),
        batch_axis=1,
        low=taps.low_pair(w_x, md),
      )
    else:
      xz_TxBx2H = tap.dense(
        "node0_x",
        x_TxBxH,
        (w0["w_xc"], w0["w_xh"]),
        (w0["b_xc"], w0["b_xh"]),
        batch_axis=1,
      )
    w_h0 = jnp.concatenate([w_hc, w_hh], axis=1)
    if edges is None:
      edges = arch_edges({"edge_c": edge_c, "edge_h": edge_h}, arch)
    if low:  # cast (and transpose) once per call, outside the time scan
      w_h0 = (w_h0, taps.low_pair(w_h0, md))
      edges = (edges, taps.low_pair(edges, md))
    if self.node_unroll is True and n > 1:
      # Split once, out here: the unrolled node loop inside the time scan
      # then reads N-1 arrays, where slicing the stack there made XLA:CPU
      # copy every edge matrix at every time step (WORKSPACE §6.6).
      edges = jax.tree.map(tap.rows, edges)

    acts, parents = arch.activations, arch.parents
    if self.cell_output == "leaves":
      used = search_space.leaf_mask(arch).astype(jnp.float32)
    else:  # every node but node 0
      used = (jnp.arange(n) >= 1).astype(jnp.float32)
    out_w = used / jnp.sum(used)
    momentum, eps = self.bn_momentum, self.bn_epsilon
    unbiased = batch / max(batch - 1, 1)

    def node_step(nodes, xs):
      # Node j reads node parents[j] through edge (parents[j] -> j). j is
      # a Python int when the loop is unrolled (a numpy xs leaf indexed
      # by the loop), traced in a rolled scan.
      j, w_Hx2H, act, parent = xs
      static = isinstance(j, np.integer)
      h_in = read_parent(nodes, parent, int(j) if static else None)
      h_j = highway(recurrent("edge", h_in, w_Hx2H), h_in, act)
      return write_node(nodes, h_j, int(j) if static else j), None

    def step(carry, xz_Bx2H):
      h_prev, mean, var = carry
      # Node 0 reads x_t and h_{t-1} (docs/method.md §4).
      z = xz_Bx2H + recurrent("node0_h", h_prev, w_h0)
      zeros = jnp.zeros((batch, h), h_prev.dtype)
      nodes = (highway(z, h_prev, acts[0]),) + (zeros,) * (n - 1)
      nodes, _ = tap.scan(
        "nodes",
        node_step,
        nodes,
        (np.arange(1, n, dtype=np.int32), edges, acts[1:], parents[1:]),
        unroll=self.node_unroll,
      )
      cell_out = node_mean(nodes, out_w)
      out = cell_out
      if self.use_batch_norm:
        if train:
          mu, sig2 = jnp.mean(out, axis=0), jnp.var(out, axis=0)
          mean = (1 - momentum) * mean + momentum * mu
          var = (1 - momentum) * var + momentum * sig2 * unbiased
        else:
          mu, sig2 = mean, var
        out = (out - mu[None]) * jax.lax.rsqrt(sig2[None] + eps)
        out = out * bn_scale[None] + bn_bias[None]
      new_h = nodes[n - 1] if self.hidden_source == "last" else cell_out
      if self.clip_norm > 0:
        # Per-example norm clip; the factor is a constant for autodiff.
        norm = jnp.linalg.norm(new_h, axis=-1, keepdims=True)
        factor = jnp.where(
          norm > self.clip_norm,
          self.clip_norm / jnp.maximum(norm, 1e-12),
          1.0,
        )
        new_h = new_h * jax.lax.stop_gradient(factor)
      return (new_h, mean, var), out

    (new_hidden, run_mean, run_var), out_TxBxH = tap.scan(
      "time", step, (hidden_BxH, run_mean, run_var), xz_TxBx2H
    )
    if train and self.use_batch_norm:
      bn.update(run_mean, run_var)

    out_mask = masks["output"]  # locked output dropout
    if out_mask is not None:
      out_TxBxH = out_TxBxH * out_mask[None]
    if not decode:
      return out_TxBxH, new_hidden
    if low:  # E [V, H] and Eᵀ cast once
      logits = taps.low_dot_t(
        out_TxBxH, embedding, *taps.low_pair(embedding, md)
      )
    else:
      logits = jnp.einsum("tbh,vh->tbv", out_TxBxH, embedding)
    return logits + decoder_bias[None, None], new_hidden


def arch_edges(cell: dict[str, Array], arch: Arch) -> Array:
  """The edge matrices one arch reads, fused: float32[N-1, H, 2H].

  Args:
    cell: `{"edge_c", "edge_h"}`, the stacked [E, H, H] edge leaves.
    arch: one `Arch` with int32[N] fields.

  Returns:
    Row j-1 is `[W^c | W^h]` of edge (parents[j] -> j), the matrix node j
    reads; the gate columns come first, as in `highway`.
  """
  ids = search_space.edge_ids(arch)
  return jnp.concatenate([cell["edge_c"][ids], cell["edge_h"][ids]], axis=2)


def init_variables(model: SharedRNN, *, key: PRNGKey) -> PyTree:
  """Initialises `{"params", "batch_stats"}` of `model` (no data needed).

  Args:
    model: the module.
    key: PRNG key for parameter initialisation.

  Returns:
    The variables dict; its shapes do not depend on T, B or the cell.
  """
  n = model.num_nodes
  arch = Arch(
    activations=jnp.zeros((n,), jnp.int32),
    parents=jnp.arange(-1, n - 1, dtype=jnp.int32),
  )
  tokens = jnp.zeros((1, 1), jnp.int32)
  hidden = jnp.zeros((1, model.hidden_size), jnp.float32)
  return model.init({"params": key}, tokens, hidden, arch, train=False)


def count_params(tree: PyTree) -> int:
  """Total number of scalars in `tree` (arrays or `jax.ShapeDtypeStruct`)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def paper_size_count() -> int:
  """Parameter count at V=10000, H=1000, N=12 via `jax.eval_shape`."""
  model = SharedRNN(vocab_size=10000, hidden_size=1000, num_nodes=12)
  shapes = jax.eval_shape(
    lambda k: init_variables(model, key=k), jax.random.key(0)
  )
  return count_params(shapes["params"])
