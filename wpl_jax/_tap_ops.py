"""The arithmetic behind the tap protocol: dense maps, convolutions, checks.

Private to `wpl_jax.taps` and `wpl_jax.fisher_fast`: what a tap computes
(`dense`, `conv` and `ConvSpec.unfold`, the patches of a convolution) and
the trace-time checks that give one clear error for a malformed call.
"""

import dataclasses

import jax
import jax.numpy as jnp

from wpl_jax.types import Array

F32 = jnp.float32


def as_tuple(v) -> tuple:
  if v is None:
    return ()
  return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def check_dense(name: str, x, ws: tuple, bs: tuple) -> None:
  """Trace-time shape checks of a `dense` call."""
  if not ws:
    raise ValueError(f"tap.dense({name!r}): no weight")
  for w in ws:
    if jnp.ndim(w) != 2 or w.shape[0] != x.shape[-1]:
      raise ValueError(
        f"tap.dense({name!r}): weight {jnp.shape(w)} does not map inputs "
        f"{x.shape} (want [{x.shape[-1]}, out])"
      )
  d_out = sum(w.shape[1] for w in ws)
  if bs and (
    any(jnp.ndim(b) != 1 for b in bs) or sum(b.shape[0] for b in bs) != d_out
  ):
    raise ValueError(
      f"tap.dense({name!r}): biases {[jnp.shape(b) for b in bs]} do not add "
      f"up to the output width {d_out}"
    )


def row_major_t(a: Array) -> Array:
  """`a` with its last two axes swapped, materialised row-major.

  XLA gives a plain transpose a transposed layout instead of moving data,
  and XLA:CPU runs a bfloat16 product with a transposed operand at the
  float32 rate (a bf16 weight gradient [1000, 64] × [64, 2000] on an AMX
  CPU: 205 GFLOP/s as `dot(x.T, g)`, 307 with this copy included,
  `benchmarks/small_gemm.py --forms`, WORKSPACE §6.7); a reshape of the
  flattened transpose, behind a barrier, forces the copy.
  """
  t = jnp.swapaxes(a, -1, -2)
  flat = jax.lax.optimization_barrier(t.reshape(-1))
  return flat.reshape(t.shape)


def low_pair(w: Array, dtype) -> tuple[Array, Array]:
  """`(w_low, w_lowᵀ)`: `w` [.., I, O] cast to `dtype`, and its row-major
  transpose [.., O, I], for `Tap.dense(..., low=...)`."""
  w_low = jnp.asarray(w).astype(dtype)
  return w_low, row_major_t(w_low)


@jax.custom_vjp
def low_dot(x: Array, w: Array, w_low: Array, w_low_t: Array) -> Array:
  """`x @ w` for x [..., I], w [I, O], computed as `x_low @ w_low` with
  float32 accumulation and output.

  `(w_low, w_low_t)` is `low_pair(w, dtype)`, made once outside any loop.
  The forward and both backward products take low-dtype inputs in forms
  XLA:CPU runs on its bfloat16 matrix units (row-major operands, float32
  output): y = x_low @ w_low and dx = g_low @ w_low_t, or, for a weight
  of `NT_MIN_BYTES` or more, the same products with the other copy
  contracted on its last axis (`weight_dot`); dw = x_lowᵀ @ g_low (the
  positions of x flattened). The float32 `w` gets dw in float32 (so a
  scan accumulates it in float32); `w_low` and `w_low_t` get zeros. A
  custom VJP: reverse mode only (no `jax.jvp`, `jacfwd` or `hessian`).
  """
  return _low_dot_fwd(x, w, w_low, w_low_t)[0]


def _dot2d(a: Array, b: Array) -> Array:
  """`a @ b` for a [..., I], b [I, O] as one 2-D product, float32 out.

  XLA:CPU runs a bfloat16 product with a float32 output only as a 2-D
  matmul fusion: with more leading axes it falls back to a kernel that
  has no such product ("Unsupported element type for DotThunk").
  """
  y = jnp.dot(a.reshape(-1, a.shape[-1]), b, preferred_element_type=F32)
  return y.reshape(a.shape[:-1] + b.shape[-1:])


def _dot2d_nt(a: Array, b_t: Array) -> Array:
  """`a @ b_tᵀ` for a [..., I], b_t [O, I] (both contracted on their last
  axis) as one 2-D product, float32 out."""
  a2 = a.reshape(-1, a.shape[-1])
  dims = (((1,), (1,)), ((), ()))
  y = jax.lax.dot_general(a2, b_t, dims, preferred_element_type=F32)
  return y.reshape(a.shape[:-1] + b_t.shape[:1])


# A low product whose weight has at least this many bytes contracts the
# weight's transposed copy on its last axis (`_dot2d_nt`) instead of the
# row-major product with the weight as stored. Measured with bf16 weights
# on a 2-core Intel Xeon with AMX (`benchmarks/weight_forms.py`, WORKSPACE
# §6.9): for the M = 64 edge products the contracted form took 0.62–0.89×
# the time at 1.6 and 3.8 MiB (H = 650, 1000), 0.92–0.95× at 0.95 MiB,
# even at 0.61 MiB and 0.97–1.12× at 0.15 MiB (H = 200); the [V, H]
# decoder's d out 0.81–0.92× at H >= 400.
NT_MIN_BYTES = 1 << 20


def weight_dot(a: Array, w_low: Array, w_low_t: Array) -> Array:
  """`a @ w_low` for a [..., I] and a weight pair w_low [I, O], w_low_t
  [O, I] (the same values): the row-major product with w_low, or, for a
  weight of `NT_MIN_BYTES` or more, `a` and w_low_t contracted on their
  last axes (the faster form there on an AMX CPU)."""
  if w_low.size * w_low.dtype.itemsize >= NT_MIN_BYTES:
    return _dot2d_nt(a, w_low_t)
  return _dot2d(a, w_low)


def _dtypes(x: Array, w: Array) -> tuple[Array, Array]:
  """Zero-size arrays that carry x's and w's dtypes to a backward pass."""
  return jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype)


def _low_grads(
  x_low: Array, g: Array, w_back: Array, w_back_t: Array
) -> tuple[Array, Array]:
  """(dx, dw) of a low product, float32: dx = g_low @ w_back (w_back
  [O, I], its copy w_back_t [I, O]; `weight_dot`) and dw = x_lowᵀ @
  g_low [I, O] (the positions of x flattened)."""
  g_low = g.astype(w_back.dtype)
  dx = weight_dot(g_low, w_back, w_back_t)
  x_t = row_major_t(x_low.reshape(-1, x_low.shape[-1]))  # [I, positions]
  dw = jnp.dot(x_t, g_low.reshape(-1, g.shape[-1]), preferred_element_type=F32)
  return dx, dw


def _low_dot_fwd(x, w, w_low, w_low_t):
  x_low = x.astype(w_low.dtype)
  y = weight_dot(x_low, w_low, w_low_t)
  return y, (x_low, w_low, w_low_t, _dtypes(x, w))


def _low_dot_bwd(res, g):
  x_low, w_low, w_low_t, (x_dtype, w_dtype) = res
  dx, dw = _low_grads(x_low, g, w_low_t, w_low)
  # The low copies get no gradient; x and w get theirs in their dtypes.
  return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype), None, None


low_dot.defvjp(_low_dot_fwd, _low_dot_bwd)


@jax.custom_vjp
def low_dot_t(x: Array, w: Array, w_low: Array, w_low_t: Array) -> Array:
  """`x @ wᵀ` for x [..., I] and a weight stored as w [O, I] (a tied
  embedding as decoder), computed as `low_dot` does.

  `(w_low, w_low_t)` is `low_pair(w, dtype)`: w_low [O, I], w_low_t
  [I, O]. y = x_low @ w_low_t, dx = g_low @ w_low (each in
  `weight_dot`'s form for the weight's size), and dw [O, I] is formed as
  x_lowᵀ @ g_low [I, O] and then copied transposed (`row_major_t`): XLA
  would otherwise fold the transpose into the product, which leaves it
  no bfloat16 kernel on CPU. A custom VJP: reverse mode only.
  """
  return _low_dot_t_fwd(x, w, w_low, w_low_t)[0]


def _low_dot_t_fwd(x, w, w_low, w_low_t):
  x_low = x.astype(w_low.dtype)
  y = weight_dot(x_low, w_low_t, w_low)
  return y, (x_low, w_low, w_low_t, _dtypes(x, w))


def _low_dot_t_bwd(res, g):
  x_low, w_low, w_low_t, (x_dtype, w_dtype) = res
  dx, dw_t = _low_grads(x_low, g, w_low, w_low_t)  # dw_t: [I, O]
  # The barrier keeps XLA from folding the transpose into the product.
  dw = row_major_t(jax.lax.optimization_barrier(dw_t))
  return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype), None, None


low_dot_t.defvjp(_low_dot_t_fwd, _low_dot_t_bwd)


def check_low(name: str, ws: tuple, low) -> None:
  """Trace-time checks of `dense(..., low=...)`."""
  if low is None:
    return
  if len(ws) != 1:
    raise ValueError(f"tap.dense({name!r}): low= needs one weight, not a tuple")
  w = ws[0]
  if (
    not isinstance(low, (tuple, list))
    or len(low) != 2
    or jnp.shape(low[0]) != jnp.shape(w)
    or jnp.shape(low[1]) != jnp.shape(w)[::-1]
    or low[0].dtype != low[1].dtype
  ):
    raise ValueError(
      f"tap.dense({name!r}): low= must be low_pair(w, dtype): "
      f"[{w.shape[0]}, {w.shape[1]}] and its transpose, one dtype"
    )


def dense(x: Array, ws: tuple, bs: tuple, low=None) -> Array:
  """`x @ concat(ws, 1) + concat(bs)` for x [..., D_in]; with `low` (see
  `low_dot`) the product takes its low-precision operands."""
  w = ws[0] if len(ws) == 1 else jnp.concatenate(ws, axis=1)
  if low is not None:
    y = low_dot(x, w, *low)
  else:
    y = jnp.einsum("...i,io->...o", x, w)
  if bs:
    b = bs[0] if len(bs) == 1 else jnp.concatenate(bs)
    y = y + jnp.expand_dims(b, tuple(range(y.ndim - 1)))
  return y


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """Static settings of a channels-last convolution (one int per axis)."""

  window: tuple[int, ...]
  strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  input_dilation: tuple[int, ...]
  kernel_dilation: tuple[int, ...]

  def numbers(self) -> jax.lax.ConvDimensionNumbers:
    n = len(self.window)
    lhs = (0, n + 1, *range(1, n + 1))  # [B, *spatial, C] in (N, C, *sp) order
    rhs = (n + 1, n, *range(n))  # [*window, C_in, C_out] as (O, I, *sp)
    return jax.lax.ConvDimensionNumbers(lhs, rhs, lhs)

  def apply(self, x: Array, w: Array) -> Array:
    return jax.lax.conv_general_dilated(
      x,
      w,
      self.strides,
      self.padding,
      self.input_dilation,
      self.kernel_dilation,
      self.numbers(),
    )

  def unfold(self, x: Array) -> Array:
    """Patches [B, *out_spatial, C_in·prod(window)]: features (C_in, *win)."""
    return jax.lax.conv_general_dilated_patches(
      x,
      self.window,
      self.strides,
      self.padding,
      self.input_dilation,
      self.kernel_dilation,
      self.numbers(),
    )


def per_axis(name: str, what: str, v, n: int) -> tuple[int, ...]:
  t = (v,) * n if isinstance(v, int) else tuple(v)
  if len(t) != n or not all(isinstance(k, int) and k >= 1 for k in t):
    raise ValueError(
      f"tap.conv({name!r}): {what}={v!r} must be a positive int or {n} of them"
    )
  return t


def conv_spec(
  name, x, w, b, strides, padding, input_dilation, kernel_dilation
) -> ConvSpec:
  """Trace-time checks of a `conv` call; its `ConvSpec`."""
  if isinstance(w, (tuple, list)) or isinstance(b, (tuple, list)):
    raise ValueError(f"tap.conv({name!r}): one kernel and one bias, not lists")
  n = jnp.ndim(w) - 2
  if n < 1 or jnp.ndim(x) != n + 2 or w.shape[-2] != x.shape[-1]:
    raise ValueError(
      f"tap.conv({name!r}): kernel {jnp.shape(w)} does not fit inputs "
      f"{jnp.shape(x)} (want inputs [B, *spatial, C_in] and a kernel "
      "[*window, C_in, C_out], channels last)"
    )
  if b is not None and jnp.shape(b) != (w.shape[-1],):
    raise ValueError(
      f"tap.conv({name!r}): bias {jnp.shape(b)} is not [{w.shape[-1]}]"
    )
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID", "SAME_LOWER"):
      raise ValueError(
        f"tap.conv({name!r}): padding {padding!r} is not SAME, VALID or "
        "SAME_LOWER (pad the input yourself for circular or causal padding)"
      )
    pad = padding
  elif isinstance(padding, int):
    pad = ((padding, padding),) * n
  else:
    pad = tuple(
      (p, p) if isinstance(p, int) else tuple(map(int, p)) for p in padding
    )
    if len(pad) != n or any(len(p) != 2 for p in pad):
      raise ValueError(
        f"tap.conv({name!r}): padding {padding!r} needs {n} (low, high) pairs"
      )
  return ConvSpec(
    window=tuple(w.shape[:n]),
    strides=per_axis(name, "strides", strides, n),
    padding=pad,
    input_dilation=per_axis(name, "input_dilation", input_dilation, n),
    kernel_dilation=per_axis(name, "kernel_dilation", kernel_dilation, n),
  )


def conv(x: Array, w: Array, b: Array | None, spec: ConvSpec) -> Array:
  y = spec.apply(x, w)
  return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + b.shape)


CONV_DEFAULTS = {
  "strides": 1,
  "padding": "SAME",
  "input_dilation": 1,
  "kernel_dilation": 1,
}


def conv_settings(settings: dict) -> dict:
  unknown = set(settings) - set(CONV_DEFAULTS)
  if unknown:
    raise TypeError(f"tap.conv got unknown settings {sorted(unknown)}")
  return {**CONV_DEFAULTS, **settings}


def scan_length(xs, length) -> int:
  if length is not None:
    return length
  leaves = jax.tree.leaves(xs)
  if not leaves:
    raise ValueError("tap.scan needs xs or length")
  return leaves[0].shape[0]


class Rows:
  """A stacked array's rows, split once, to be a `tap.scan` xs leaf.

  Made by `Tap.rows`. A scan given one runs as a Python loop (fully
  unrolled) whose step i reads `rows[i]`: where the rows were split
  outside an enclosing loop (a time scan), that loop's body reads one
  array per row and slices nothing (XLA:CPU copies a slice of a stacked
  weight out of it at every step: WORKSPACE §6.6). Not a pytree: a scan's
  xs holds it as a leaf, `stacked` is the array it came from.
  """

  def __init__(self, stacked: Array, rows: tuple | None):
    self.stacked = stacked
    self.rows = rows  # None: not split (the discovery trace's)
    self.shape = stacked.shape

  def __getitem__(self, i: int) -> Array:
    return self.stacked[i] if self.rows is None else self.rows[i]


def split_rows(stacked: Array) -> Rows:
  """`Rows` of `stacked` [L, ...], split behind an optimization barrier
  (else XLA folds each row back into a slice of `stacked` where it is
  read)."""
  stacked = jnp.asarray(stacked)
  if stacked.ndim < 1 or stacked.shape[0] < 1:
    raise ValueError(f"tap.rows needs a stacked array, got {stacked.shape}")
  rows = tuple(stacked[i] for i in range(stacked.shape[0]))
  return Rows(stacked, jax.lax.optimization_barrier(rows))


def has_rows(xs) -> bool:
  return any(isinstance(v, Rows) for v in jax.tree.leaves(xs))


def stacked_xs(xs):
  """`xs` with each `Rows` replaced by its stacked array."""
  return jax.tree.map(lambda v: v.stacked if isinstance(v, Rows) else v, xs)


def scan(f, init, xs, length, *, reverse: bool, unroll):
  """`jax.lax.scan`, or, when `xs` holds `Rows`, the same as a Python loop
  (step i's xs: `rows[i]` for a `Rows` leaf, `x[i]` for any other; the ys
  stacked on a new leading axis)."""
  if not has_rows(xs):
    return jax.lax.scan(
      f, init, xs, length=length, reverse=reverse, unroll=unroll
    )
  n = scan_length(xs, length)
  sizes = {v.shape[0] for v in jax.tree.leaves(xs)}
  if sizes - {n}:
    raise ValueError(
      f"tap.scan: length {n} and the xs leading sizes {sorted(sizes)} disagree"
    )
  ys = [None] * n
  carry = init
  for i in reversed(range(n)) if reverse else range(n):
    carry, ys[i] = f(carry, jax.tree.map(lambda v, i=i: v[i], xs))
  return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys)
