"""The fast per-example Fisher for Flax models, without rewriting them.

`fisher_fast` reaches its exact one-backward-pass Fisher only for matmuls
and convolutions that go through a tap (`tap.dense`, `tap.conv`). A Flax
model calls `nn.Dense`/`nn.Conv` (Linen) or `nnx.Linear`/`nnx.Conv` (NNX)
instead. `tapped` wraps an ordinary loss `fn(params, batch) -> loss` that
runs such a model so that, while a Fisher is estimated, each of those
layers is computed through the tap; outside that (training, evaluation)
`fn` runs untouched:

    model = MyLinenCNN()

    @flax_taps.tapped
    def loss(params, batch):
      logits = model.apply({"params": params}, batch["x"])
      return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["y"]).mean()

    F = fisher.fisher_diagonal(loss, params, batch)  # the fast exact path

    # NNX: split once, merge inside the loss.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @flax_taps.tapped
    def loss(params, batch):
      logits = nnx.merge(graphdef, params, rest)(batch["x"])
      ...

A layer is routed when it has Flax's default arithmetic: a `Dense`/
`Linear` with no custom `dot_general`, `precision` or
`preferred_element_type`, and a `dtype` that is None or the kernel's; a
`Conv` with additionally one feature group, no mask, shared weights and
SAME/VALID/explicit padding, on inputs [B, *spatial, C]. Any other layer
runs as written and its leaves take the exact `vmap(grad)` fallback, as do
leaves the loss reads outside these layers (embeddings, norms). So the
result is exact either way; `fisher_fast.plan` shows which leaves are fast.

The routed layer must be called at the top level of the loss: a Flax layer
inside `nn.scan`/`nnx.scan`, `vmap` or `remat` gives the ValueError of
`fisher_fast` (use `method="vmap"`, or write the scan with `tap.scan`).
Routing patches `nnx.Linear.__call__`/`nnx.Conv.__call__` for the duration
of one trace; do not trace the same NNX model from two threads at once.
"""

import contextlib
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import dtypes as linen_dtypes
from flax.nnx.nn import dtypes as nnx_dtypes

from wpl_jax import fisher_fast
from wpl_jax.types import Array, PyTree


def _same_dtype(dtype, kernel: Array) -> bool:
  return dtype is None or jnp.dtype(dtype) == kernel.dtype


def _padding(padding, n: int):
  """Flax's padding as `tap.conv` takes it, or None when it cannot."""
  p = nn.linear.canonicalize_padding(padding, n)
  if isinstance(p, str):
    return p if p in ("SAME", "VALID", "SAME_LOWER") else None
  return tuple(tuple(q) for q in p)


class _Router:
  """Computes routable Flax layers through one tap; names them uniquely."""

  def __init__(self, tap: fisher_fast.Tap):
    self.tap = tap
    self.counts = {}

  def name(self, base: str) -> str:
    k = self.counts.get(base, 0)
    self.counts[base] = k + 1
    return base if k == 0 else f"{base}#{k}"

  def dense(self, base, x, kernel, bias, dtype):
    if dtype is not None:
      x = x.astype(dtype)
    return self.tap.dense(self.name(base), x, kernel, bias)

  def conv(self, base, x, kernel, bias, dtype, strides, padding, ldil, rdil):
    if dtype is not None:
      x = x.astype(dtype)
    return self.tap.conv(
      self.name(base),
      x,
      kernel,
      bias,
      strides=strides,
      padding=padding,
      input_dilation=ldil,
      kernel_dilation=rdil,
    )


def _per_axis(v, n: int) -> tuple[int, ...]:
  v = 1 if v is None else v
  return (v,) * n if isinstance(v, int) else tuple(v)


# --- Linen: a method interceptor -------------------------------------------


def _linen_interceptor(router: _Router):
  def intercept(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name != "__call__" or len(args) != 1 or kwargs:
      return next_fun(*args, **kwargs)
    x = args[0]
    kind = type(m)
    if kind.__call__ is nn.Dense.__call__ and _linen_dense_ok(m):
      p = m.variables["params"]
      base = "/".join(m.scope.path) or "Dense"
      return router.dense(base, x, p["kernel"], p.get("bias"), m.dtype)
    if kind.__call__ is nn.Conv.__call__ and _linen_conv_ok(m, x):
      p = m.variables["params"]
      n = p["kernel"].ndim - 2
      return router.conv(
        "/".join(m.scope.path) or "Conv",
        x,
        p["kernel"],
        p.get("bias"),
        m.dtype,
        _per_axis(m.strides, n),
        _padding(m.padding, n),
        _per_axis(m.input_dilation, n),
        _per_axis(m.kernel_dilation, n),
      )
    return next_fun(*args, **kwargs)

  return intercept


def _linen_params(m) -> bool:
  return m.scope is not None and m.has_variable("params", "kernel")


def _linen_dense_ok(m) -> bool:
  return (
    _linen_params(m)
    and m.dot_general is None
    and m.dot_general_cls is None
    and m.precision is None
    and m.promote_dtype is linen_dtypes.promote_dtype
    and _same_dtype(m.dtype, m.variables["params"]["kernel"])
  )


def _linen_conv_ok(m, x) -> bool:
  if not _linen_params(m):
    return False
  kernel = m.variables["params"]["kernel"]
  n = kernel.ndim - 2
  return (
    m.shared_weights
    and m.feature_group_count == 1
    and m.mask is None
    and m.conv_general_dilated is None
    and m.conv_general_dilated_cls is None
    and m.precision is None
    and m.promote_dtype is linen_dtypes.promote_dtype
    and _same_dtype(m.dtype, kernel)
    and jnp.ndim(x) == n + 2
    and _padding(m.padding, n) is not None
  )


# --- NNX: the two layer classes' __call__, swapped for one trace -----------

_NNX_LINEAR_CALL = nnx.Linear.__call__
_NNX_CONV_CALL = nnx.Conv.__call__


def _nnx_common_ok(m, out_sharding) -> bool:
  return (
    out_sharding is None
    and m.precision is None
    and m.preferred_element_type is None
    and m.promote_dtype is nnx_dtypes.promote_dtype
    and _same_dtype(m.dtype, m.kernel[...])
  )


def _nnx_routes(router: _Router):
  def linear(self, inputs, out_sharding=None):
    if not (
      self.dot_general is jax.lax.dot_general
      and _nnx_common_ok(self, out_sharding)
    ):
      return _NNX_LINEAR_CALL(self, inputs, out_sharding)
    bias = self.bias[...] if self.bias is not None else None
    return router.dense("Linear", inputs, self.kernel[...], bias, self.dtype)

  def conv(self, inputs, out_sharding=None):
    n = len(self.kernel_size)
    padding = _padding(self.padding, n)
    if not (
      self.conv_general_dilated is jax.lax.conv_general_dilated
      and self.feature_group_count == 1
      and self.mask is None
      and padding is not None
      and jnp.ndim(inputs) == n + 2
      and _nnx_common_ok(self, out_sharding)
    ):
      return _NNX_CONV_CALL(self, inputs, out_sharding)
    bias = self.bias[...] if self.bias is not None else None
    return router.conv(
      "Conv",
      inputs,
      self.kernel[...],
      bias,
      self.dtype,
      _per_axis(self.strides, n),
      padding,
      _per_axis(self.input_dilation, n),
      _per_axis(self.kernel_dilation, n),
    )

  return linear, conv


@contextlib.contextmanager
def route(tap: fisher_fast.Tap):
  """Within the block, default Flax Dense/Linear/Conv layers use `tap`."""
  router = _Router(tap)
  linear, conv = _nnx_routes(router)
  nnx.Linear.__call__, nnx.Conv.__call__ = linear, conv
  try:
    with nn.intercept_methods(_linen_interceptor(router)):
      yield
  finally:
    nnx.Linear.__call__, nnx.Conv.__call__ = _NNX_LINEAR_CALL, _NNX_CONV_CALL


def tapped(
  fn: Callable[[PyTree, PyTree], Array] | None = None,
  *,
  reduction: str = "mean",
):
  """Makes `fn(params, batch) -> loss` over a Flax model tap-aware.

  A decorator, like `fisher_fast.tapped` but for a loss that takes no tap:
  `@tapped` for a mean loss, `@tapped(reduction="sum")` or
  `@tapped(reduction="none")` (per-example losses [B]) otherwise.

  Args:
    fn: `(params, batch) -> loss`; params is what the model's layers read
      (Linen: the "params" collection; NNX: the `nnx.Param` state), batch a
      pytree whose leaves share the leading example axis B.
    reduction: what `fn` returns (see `fisher_fast.per_example_fisher`).

  Returns:
    A `fisher_fast.TappedLoss`: callable as `(params, batch)` (plain `fn`),
    and taken by `fisher.fisher_diagonal(estimator="per_example")` and
    `wpl.estimate`-style callers on the fast exact path.
  """
  if fn is None:
    return functools.partial(tapped, reduction=reduction)

  def with_tap(params, batch, tap=fisher_fast.PLAIN):
    if tap is fisher_fast.PLAIN:
      return fn(params, batch)
    with route(tap):
      return fn(params, batch)

  functools.update_wrapper(with_tap, fn)
  return fisher_fast.TappedLoss(with_tap, reduction)
