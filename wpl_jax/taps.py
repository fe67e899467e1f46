"""The tap protocol: how a model opts in to the fast exact per-example Fisher.

A model written against it takes a `tap` argument (default `PLAIN`) and
calls `tap.dense(name, x, w, b)` / `tap.conv(...)` for the matmuls and
convolutions whose weights should get the one-backward-pass Fisher of
`wpl_jax.fisher_fast`, and `tap.scan(name, ...)` for the scans around them.
With `PLAIN` it is an ordinary forward: the protocol costs a model nothing.
"""

from collections.abc import Callable, Sequence

from wpl_jax import _tap_ops as ops
from wpl_jax.types import Array, PyTree


class Tap:
  """The tap protocol; this base class is the plain tap (no probes).

  A model written against it takes a `tap` argument (default `PLAIN`) and
  calls `tap.dense` for the matmuls whose weights should get the fast
  per-example Fisher, and `tap.scan` for the scans around them. Rules:

  * Examples stay separable: nothing mixes the example axis (e.g. no
    batch-norm on batch statistics).
  * Taps sit at the top level or inside `tap.scan` (nested too), not inside
    `vmap`, `cond`, `while_loop` or `checkpoint`.
  * A weight (or bias) is tapped when it is a params leaf passed as is, or
    the slice of a leaf that `tap.scan` takes from its `xs` (stacked
    layers, one matrix per step). A transformed weight (`w.T`, `w * mask`,
    `stacked[i]`) still works but is not tapped: its leaf then takes the
    `vmap(grad)` fallback.

  `per_example` says whether the tap computes per-example quantities (the
  Fisher's taps): a model whose examples are not separable in some mode
  (batch-norm on batch statistics) should refuse such a tap there. It is
  False for `PLAIN` and for `tapped_grad.value_and_grad`'s taps, which
  need no separability.
  """

  per_example: bool = False

  def dense(
    self,
    name: str,
    x: Array,
    w: Array | Sequence[Array],
    b: Array | Sequence[Array] | None = None,
    *,
    batch_axis: int = 0,
    low: tuple[Array, Array] | None = None,
  ) -> Array:
    """Returns `x @ w + b`.

    Args:
      name: unique within the enclosing function or `scan` body.
      x: inputs [..., D_in]; axis `batch_axis` indexes examples, any other
        leading axes are positions within an example.
      w: a [D_in, D_out] params leaf, or a tuple of [D_in, D_k] leaves
        concatenated along the output axis (one matmul).
      b: None, a [D_out] leaf, or a tuple of [D_k] leaves, concatenated.
      batch_axis: the example axis of `x`.
      low: None, or `low_pair(w, dtype)` (one weight): the product then
        runs on `x` and `w` cast to that dtype (bfloat16) with float32
        accumulation and output (`low_dot`); `w` stays the float32 leaf
        that gets the gradient and is tapped. Make the pair once, outside
        any loop (a cast inside one is a copy per step). Not with the
        per-example Fisher's taps; reverse-mode autodiff only.

    Returns:
      [..., D_out] = `x @ concat(w, 1) + concat(b)`, float32 with `low`.
    """
    del batch_axis
    ws, bs = ops.as_tuple(w), ops.as_tuple(b)
    ops.check_dense(name, x, ws, bs)
    ops.check_low(name, ws, low)
    return ops.dense(x, ws, bs, low)

  def conv(
    self,
    name: str,
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence = "SAME",
    input_dilation: int | Sequence[int] = 1,
    kernel_dilation: int | Sequence[int] = 1,
  ) -> Array:
    """A channels-last convolution `conv(x, w) + b` (Flax's layout).

    The per-example Fisher of `w` comes from the unfolded inputs (patches)
    and the output cotangents: example b's gradient is
    `Σ_p patch_{b,p} g_{b,p}ᵀ` over its output positions p, as in BackPACK.

    Args:
      name: unique within the enclosing function or `scan` body.
      x: inputs [B, *spatial, C_in]; axis 0 indexes examples.
      w: a [*window, C_in, C_out] params leaf (no feature groups).
      b: None or a [C_out] leaf.
      strides, input_dilation, kernel_dilation: one int, or one per
        spatial axis (`lax.conv_general_dilated`'s window strides,
        lhs and rhs dilation).
      padding: "SAME", "VALID", "SAME_LOWER", or (low, high) pairs (or one
        int each) per spatial axis.

    Returns:
      [B, *out_spatial, C_out].
    """
    spec = ops.conv_spec(
      name, x, w, b, strides, padding, input_dilation, kernel_dilation
    )
    return ops.conv(x, w, b, spec)

  def scan(
    self,
    name: str,
    f: Callable,
    init: PyTree,
    xs: PyTree = None,
    length: int | None = None,
    *,
    reverse: bool = False,
    unroll: int | bool = 1,
  ) -> tuple[PyTree, PyTree]:
    """`jax.lax.scan(f, init, xs, length)`; taps inside `f` are per step.

    Params leaves among the leaves of `xs` are tapped slice by slice: the
    step-l slice a tap inside `f` reads is row l of the leaf. An xs leaf
    may be `self.rows(leaf)`: the scan then runs fully unrolled (a Python
    loop; `unroll` is not used), step l reading that leaf's row l.
    """
    del name
    return ops.scan(f, init, xs, length, reverse=reverse, unroll=unroll)

  def rows(self, stacked: Array) -> ops.Rows:
    """`stacked` [L, ...] split into its L rows here, once, for a
    `tap.scan` that takes it as xs.

    For a stacked weight read by an unrolled scan inside another loop
    (the edge matrices of the node scan inside the time scan): split
    before the outer loop, the loop's body reads L separate arrays instead
    of slicing `stacked` at every step (which XLA:CPU does by copying each
    slice). The same values and gradients as passing `stacked` itself;
    still tapped slice by slice when `stacked` is a params leaf.
    """
    return ops.split_rows(stacked)


PLAIN = Tap()
# Low-precision products for `Tap.dense(..., low=low_pair(w, dtype))`.
low_pair = ops.low_pair
low_dot = ops.low_dot
low_dot_t = ops.low_dot_t
weight_dot = ops.weight_dot
row_major_t = ops.row_major_t
