"""Exact per-example diagonal Fisher at about the cost of one backward pass.

`fisher.fisher_diagonal(estimator="per_example")` forms every example's
gradient with `vmap(grad)`: a [B × params] buffer, and inside a `lax.scan`
a per-example weight gradient carried and updated at every step. Both are
avoidable for a dense weight y = x W, whose per-example gradient is

    ∇W ℓ_b = Σ_p x_{b,p} g_{b,p}ᵀ

summed over the positions p of example b (time steps, tokens), where g is
the cotangent of y. One batch backward pass gives every g: add a zero-valued
*probe* to each matmul output (one per scan step) and differentiate the mean
loss with respect to the probes, which gives g/B. Then

* one position per example (an MLP): `F = B · (X∘X)ᵀ(Ĝ∘Ĝ)`, one matmul of
  the weight's size and no per-example tensor;
* several (a weight shared over time): per-example `Σ_p x gᵀ` as a batched
  matmul over examples, `chunk_size` examples at a time, squared and summed.

Models opt in by being written against a small *tap* protocol (`Tap`): they
call `tap.dense(name, x, w, b)` for their matmuls and `tap.scan(name, ...)`
for scans, and run unchanged with the plain tap `PLAIN`. A trace finds which
params leaves reach the loss only through taps (those get the fast path);
every other leaf the loss reads gets `vmap(grad)` (`fisher_diagonal`'s
path), so the result is exact whatever the model does outside its taps.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from wpl_jax import fisher as fisher_lib
from wpl_jax import partition
from wpl_jax.types import Array, PyTree


def _as_tuple(v) -> tuple:
  if v is None:
    return ()
  return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _check_dense(name: str, x, ws: tuple, bs: tuple) -> None:
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


def _dense(x: Array, ws: tuple, bs: tuple) -> Array:
  """`x @ concat(ws, 1) + concat(bs)` for x [..., D_in]."""
  w = ws[0] if len(ws) == 1 else jnp.concatenate(ws, axis=1)
  y = jnp.einsum("...i,io->...o", x, w)
  if bs:
    b = bs[0] if len(bs) == 1 else jnp.concatenate(bs)
    y = y + jnp.expand_dims(b, tuple(range(y.ndim - 1)))
  return y


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
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


def _per_axis(name: str, what: str, v, n: int) -> tuple[int, ...]:
  t = (v,) * n if isinstance(v, int) else tuple(v)
  if len(t) != n or not all(isinstance(k, int) and k >= 1 for k in t):
    raise ValueError(
      f"tap.conv({name!r}): {what}={v!r} must be a positive int or {n} of them"
    )
  return t


def _conv_spec(
  name, x, w, b, strides, padding, input_dilation, kernel_dilation
) -> _ConvSpec:
  """Trace-time checks of a `conv` call; its `_ConvSpec`."""
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
  return _ConvSpec(
    window=tuple(w.shape[:n]),
    strides=_per_axis(name, "strides", strides, n),
    padding=pad,
    input_dilation=_per_axis(name, "input_dilation", input_dilation, n),
    kernel_dilation=_per_axis(name, "kernel_dilation", kernel_dilation, n),
  )


def _conv(x: Array, w: Array, b: Array | None, spec: _ConvSpec) -> Array:
  y = spec.apply(x, w)
  return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + b.shape)


_CONV_DEFAULTS = {
  "strides": 1,
  "padding": "SAME",
  "input_dilation": 1,
  "kernel_dilation": 1,
}


def _conv_settings(settings: dict) -> dict:
  unknown = set(settings) - set(_CONV_DEFAULTS)
  if unknown:
    raise TypeError(f"tap.conv got unknown settings {sorted(unknown)}")
  return {**_CONV_DEFAULTS, **settings}


def _scan_length(xs, length) -> int:
  if length is not None:
    return length
  leaves = jax.tree.leaves(xs)
  if not leaves:
    raise ValueError("tap.scan needs xs or length")
  return leaves[0].shape[0]


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
  """

  def dense(
    self,
    name: str,
    x: Array,
    w: Array | Sequence[Array],
    b: Array | Sequence[Array] | None = None,
    *,
    batch_axis: int = 0,
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

    Returns:
      [..., D_out] = `x @ concat(w, 1) + concat(b)`.
    """
    del batch_axis
    ws, bs = _as_tuple(w), _as_tuple(b)
    _check_dense(name, x, ws, bs)
    return _dense(x, ws, bs)

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
    spec = _conv_spec(
      name, x, w, b, strides, padding, input_dilation, kernel_dilation
    )
    return _conv(x, w, b, spec)

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
    step-l slice a tap inside `f` reads is row l of the leaf.
    """
    del name
    return jax.lax.scan(
      f, init, xs, length=length, reverse=reverse, unroll=unroll
    )


PLAIN = Tap()


@dataclasses.dataclass(frozen=True)
class _Site:
  """One `dense` call as seen by the discovery trace."""

  weights: tuple  # flat params index of each weight; None = not a leaf
  biases: tuple
  # Per weight (bias): None when it is the whole leaf; k when it is the
  # leaf's slice taken by the k-th enclosing `tap.scan` (the leaf is in
  # that scan's xs, so it has one slice per step).
  weight_axes: tuple
  bias_axes: tuple
  widths: tuple[int, ...]  # D_out of each weight
  bias_widths: tuple[int, ...]
  out: jax.ShapeDtypeStruct  # output in the frame of its scope
  batch_axis: int  # non-negative, in the frame of x
  conv: _ConvSpec | None = None  # a `conv` site (inputs are unfolded)


@dataclasses.dataclass
class _Scope:
  """Sites and scans of one function body (the top level or a scan body)."""

  sites: dict = dataclasses.field(default_factory=dict)
  scans: dict = dataclasses.field(default_factory=dict)  # name: (L, _Scope)
  slices: dict = dataclasses.field(default_factory=dict)  # id: leaf index

  def claim(self, name: str) -> None:
    if name in self.sites or name in self.scans:
      raise ValueError(f"tap name {name!r} is used twice in one scope")


class _Recorder(Tap):
  """Discovery: records sites; tapped leaves enter their matmuls as zeros.

  With the zeros, the traced jaxpr depends on a leaf only through its uses
  outside taps, which `_dependencies` then finds.
  """

  def __init__(self, leaves):
    self._ids = {id(v): i for i, v in enumerate(leaves)}
    self.root = _Scope()
    self._stack = [self.root]

  def _resolve(self, v) -> tuple[int | None, int | None]:
    """`(leaf index, slicing scan axis)` of a weight; `(None, None)` if none."""
    i = self._ids.get(id(v))
    if i is not None:
      return i, None
    for depth in range(len(self._stack) - 1, 0, -1):
      i = self._stack[depth].slices.get(id(v))
      if i is not None:
        return i, depth - 1
    return None, None

  def dense(self, name, x, w, b=None, *, batch_axis=0):
    ws, bs = _as_tuple(w), _as_tuple(b)
    _check_dense(name, x, ws, bs)
    return self._record(name, x, ws, bs, batch_axis, None)

  def conv(self, name, x, w, b=None, **settings):
    spec = _conv_spec(name, x, w, b, **_conv_settings(settings))
    return self._record(name, x, (w,), _as_tuple(b), 0, spec)

  def _record(self, name, x, ws, bs, batch_axis, spec):
    # Inside vmap the inputs are batching tracers: the example axis is gone
    # from what the tap sees (pinned by tests/contract_test.py).
    if any(type(v).__name__ == "BatchTracer" for v in (x, *ws, *bs)):
      raise ValueError(f"tap {name!r}: {_CONTEXT_HINT}")
    if not -x.ndim <= batch_axis < x.ndim - 1 or batch_axis == -1:
      raise ValueError(
        f"tap.dense({name!r}): batch_axis={batch_axis} must index a leading "
        f"axis of inputs {x.shape}"
      )
    scope = self._stack[-1]
    scope.claim(name)
    wi, wa = zip(*map(self._resolve, ws), strict=True)
    bi, ba = zip(*map(self._resolve, bs), strict=True) if bs else ((), ())
    zero = lambda v, i: v if i is None else jnp.zeros(v.shape, v.dtype)
    ws0, bs0 = tuple(map(zero, ws, wi)), tuple(map(zero, bs, bi))
    if spec is None:
      y = _dense(x, ws0, bs0)
    else:
      y = _conv(x, ws0[0], bs0[0] if bs0 else None, spec)
    scope.sites[name] = _Site(
      weights=wi,
      biases=bi,
      weight_axes=wa,
      bias_axes=ba,
      widths=tuple(v.shape[-1] for v in ws),
      bias_widths=tuple(v.shape[0] for v in bs),
      out=jax.ShapeDtypeStruct(y.shape, y.dtype),
      batch_axis=batch_axis % x.ndim,
      conv=spec,
    )
    return y

  def scan(
    self, name, f, init, xs=None, length=None, *, reverse=False, unroll=1
  ):
    scope = self._stack[-1]
    scope.claim(name)
    n = _scan_length(xs, length)
    # Params leaves scanned over (stacked layers, per-node edges): a tap in
    # the body that reads their slice taps the leaf, one slice per step.
    scanned = {
      pos: self._ids[id(v)]
      for pos, v in enumerate(jax.tree.leaves(xs))
      if id(v) in self._ids
    }

    def body(carry, x):
      # A fresh scope per trace of the body: JAX may trace it more than
      # once, and the last trace is the one that runs.
      child = _Scope()
      x_leaves = jax.tree.leaves(x)
      child.slices = {id(x_leaves[pos]): i for pos, i in scanned.items()}
      scope.scans[name] = (n, child)
      self._stack.append(child)
      try:
        return f(carry, x)
      finally:
        self._stack.pop()

    return jax.lax.scan(
      body, init, xs, length=length, reverse=reverse, unroll=unroll
    )


class _Prober(Tap):
  """Adds the given zero probes to the matmul outputs; records the inputs."""

  def __init__(self, probes):
    self.records = {"sites": {}, "scans": {}}
    self._stack = [(probes, self.records)]

  def dense(self, name, x, w, b=None, *, batch_axis=0):
    return self._probe(
      name, x, super().dense(name, x, w, b, batch_axis=batch_axis)
    )

  def conv(self, name, x, w, b=None, **settings):
    return self._probe(name, x, super().conv(name, x, w, b, **settings))

  def _probe(self, name, x, y):
    probes, records = self._stack[-1]
    if name in probes["sites"]:
      y = y + probes["sites"][name]
      records["sites"][name] = x
    return y

  def scan(
    self, name, f, init, xs=None, length=None, *, reverse=False, unroll=1
  ):
    probes, records = self._stack[-1]
    if name not in probes["scans"]:
      return super().scan(
        name, f, init, xs, length, reverse=reverse, unroll=unroll
      )

    def body(carry, inputs):
      x, step_probes = inputs
      step_records = {"sites": {}, "scans": {}}
      self._stack.append((step_probes, step_records))
      try:
        carry, y = f(carry, x)
      finally:
        self._stack.pop()
      return carry, (y, step_records)

    carry, (ys, records["scans"][name]) = jax.lax.scan(
      body,
      init,
      (xs, probes["scans"][name]),
      length=_scan_length(xs, length),
      reverse=reverse,
      unroll=unroll,
    )
    return carry, ys


def _dependencies(jaxpr: jex_core.Jaxpr, deps_in: list) -> list:
  """Which leaves each output of `jaxpr` depends on, given its inputs'.

  `scan` bodies are followed (carries to a fixed point); any other
  equation with a sub-jaxpr (jit, custom rules, cond, while) counts as
  depending on all of its inputs: conservative, so a leaf may be reported
  that is not needed, never the other way round.
  """
  none = frozenset()
  env = {v: d for v, d in zip(jaxpr.invars, deps_in, strict=True) if d}
  get = lambda v: none if isinstance(v, jex_core.Literal) else env.get(v, none)
  for eqn in jaxpr.eqns:
    ins = [get(v) for v in eqn.invars]
    if not any(ins):
      continue
    if eqn.primitive.name == "scan":
      outs = _scan_dependencies(eqn, ins)
    else:
      outs = [frozenset().union(*ins)] * len(eqn.outvars)
    env.update((v, d) for v, d in zip(eqn.outvars, outs, strict=True) if d)
  return [get(v) for v in jaxpr.outvars]


def _scan_dependencies(eqn, ins: list) -> list:
  """`_dependencies` of a scan equation's outputs (final carry, then ys)."""
  body = eqn.params["jaxpr"].jaxpr
  n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
  consts = ins[:n_consts]
  carry = ins[n_consts : n_consts + n_carry]
  xs = ins[n_consts + n_carry :]
  while True:
    outs = _dependencies(body, consts + carry + xs)
    grown = [c | o for c, o in zip(carry, outs[:n_carry], strict=True)]
    if grown == carry:
      return carry + outs[n_carry:]
    carry = grown


def _walk(scope: _Scope, depth: int = 0):
  """Yields `(path, site, depth)`; depth = number of enclosing scans."""
  for name, site in scope.sites.items():
    yield (name,), site, depth
  for name, (_, child) in scope.scans.items():
    for path, site, d in _walk(child, depth + 1):
      yield (name, *path), site, d


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What discovery found: the sites and how each leaf is estimated."""

  root: _Scope
  tapped: frozenset  # leaves estimated from probes
  fallback: frozenset  # leaves estimated with vmap(grad)


def _check_output(shape: tuple, reduction: str, n: int) -> None:
  """Raises ValueError unless the loss's output fits its declared reduction."""
  if reduction == "none":
    if tuple(shape) != (n,):
      raise ValueError(
        f"a loss declared reduction='none' must return the {n} per-example "
        f"losses, shape ({n},); it returns shape {tuple(shape)}"
      )
  elif tuple(shape) != ():
    raise ValueError(
      f"a loss declared reduction={reduction!r} must return a scalar; it "
      f"returns shape {tuple(shape)} (per-example losses: declare "
      "reduction='none')"
    )


_CONTEXT_HINT = (
  "a tap was used inside a transformation it does not support (a plain "
  "jax.lax.scan, vmap, cond, while_loop or checkpoint): use tap.scan for "
  "scans and keep taps out of the others, or use method='vmap'"
)


def _discover(
  loss_fn, params: PyTree, batch: PyTree, reduction: str = "mean"
) -> _Plan:
  """Traces `loss_fn` once with a recording tap (no computation)."""
  leaves, treedef = jax.tree.flatten(params)
  recorder = None

  def traced(leaf_values):
    nonlocal recorder
    recorder = _Recorder(leaf_values)
    return loss_fn(jax.tree.unflatten(treedef, leaf_values), batch, recorder)

  avals = [
    jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in leaves
  ]
  try:
    closed = jax.make_jaxpr(traced)(avals)
  except jax.errors.UnexpectedTracerError as e:
    raise ValueError(_CONTEXT_HINT) from e
  _check_output(jnp.shape(closed.out_avals[0]), reduction, _num_examples(batch))
  start = [frozenset([i]) for i in range(len(leaves))]
  (reaching,) = _dependencies(closed.jaxpr, start)
  # How each tapped leaf is used: ("weight" or "bias", slicing scan axis
  # or None). A leaf used in two ways (a weight here, a bias there; whole
  # here, scanned there) has no single per-example form: the fallback's.
  uses = {}
  for _, site, _ in _walk(recorder.root):
    for role, idx, axes in (
      (
        "weight" if site.conv is None else "conv",
        site.weights,
        site.weight_axes,
      ),
      ("bias", site.biases, site.bias_axes),
    ):
      for i, axis in zip(idx, axes, strict=True):
        if i is not None:
          uses.setdefault(i, set()).add((role, axis is None))
  mixed = {i for i, u in uses.items() if len(u) > 1}
  tapped = set(uses) - reaching - mixed
  return _Plan(
    root=recorder.root,
    tapped=frozenset(tapped),
    fallback=frozenset(reaching | mixed),
  )


def plan(loss_fn, params: PyTree, batch: PyTree) -> PyTree:
  """How `per_example_fisher` will estimate each leaf (trace only).

  Args:
    loss_fn: `(params, batch, tap) -> loss`; a `TappedLoss`'s declared
      reduction is respected, any other function is taken as a mean.
    params, batch: as for `per_example_fisher`.

  Returns:
    A pytree like `params` of strings: ``"tap"`` (from the probes),
    ``"vmap"`` (the `vmap(grad)` fallback) or ``"unused"`` (the loss does
    not depend on it: zero).
  """
  p = _discover(loss_fn, params, batch, getattr(loss_fn, "reduction", "mean"))
  leaves, treedef = jax.tree.flatten(params)
  kinds = [
    "tap" if i in p.tapped else "vmap" if i in p.fallback else "unused"
    for i in range(len(leaves))
  ]
  return jax.tree.unflatten(treedef, kinds)


def _probe_tree(scope: _Scope, tapped: frozenset, prefix=()) -> dict:
  """Zero probes for the sites with a tapped leaf, `prefix` = scan lengths."""
  tree = {"sites": {}, "scans": {}}
  for name, site in scope.sites.items():
    if tapped.intersection(site.weights + site.biases):
      tree["sites"][name] = jnp.zeros(prefix + site.out.shape, site.out.dtype)
  for name, (length, child) in scope.scans.items():
    sub = _probe_tree(child, tapped, prefix + (length,))
    if sub["sites"] or sub["scans"]:
      tree["scans"][name] = sub
  return tree


def _lookup(tree: dict, path: tuple) -> Array | None:
  for name in path[:-1]:
    tree = tree["scans"].get(name)
    if tree is None:
      return None
  return tree["sites"].get(path[-1])


def _spans(indices: tuple, axes: tuple, widths: tuple):
  """Yields `(leaf index, scan axis, lo, hi)`: each leaf's output columns."""
  lo = 0
  for i, axis, width in zip(indices, axes, widths, strict=True):
    yield i, axis, lo, lo + width
    lo += width


def _per_slice(x: Array, batch_axis: int, axis: int | None) -> Array:
  """[n, S, P, D]: examples, leaf slices (S = 1: whole leaf), positions."""
  if axis is None:
    x = jnp.moveaxis(x, batch_axis, 0)[:, None]
  else:
    x = jnp.moveaxis(x, (batch_axis, axis), (0, 1))
  return _upcast(x.reshape(x.shape[:2] + (-1, x.shape[-1])))


def _upcast(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sum_sq_outer(pairs: list, n: int, chunk_size: int | None) -> list:
  """`Σ_b (Σ_p a_bsp g_bspᵀ)²`: [S, I, O] of each (a [n,S,P,I], g [n,S,P,O])."""

  def part(chunk):
    return [
      fisher_lib.sum_examples(jnp.square(jnp.einsum("bspi,bspo->bsio", a, g)))
      for a, g in chunk
    ]

  if not pairs:
    return []
  del n  # chunked_sum reads it off the leading axis.
  return fisher_lib.chunked_sum(part, pairs, chunk_size)


def _tapped_fisher(
  loss_fn, params, batch, p: _Plan, n: int, chunk_size, reduction="mean"
):
  """Fisher of the tapped leaves from one probed backward pass: {index: F}."""
  probes = _probe_tree(p.root, p.tapped)

  def probed(probe_tree):
    prober = _Prober(probe_tree)
    return loss_fn(params, batch, prober), prober.records

  try:
    loss, vjp_fn, records = jax.vjp(probed, probes, has_aux=True)
    # Per-example losses (reduction "none") each get cotangent 1: the
    # probes then carry every example's own gradient, whatever the mix.
    (cotangents,) = vjp_fn(jnp.ones_like(loss))
  except jax.errors.UnexpectedTracerError as e:
    raise ValueError(_CONTEXT_HINT) from e

  weight_parts, bias_parts, conv_kernels = {}, {}, {}
  for path, site, depth in _walk(p.root):
    a, g = _lookup(records, path), _lookup(cotangents, path)
    if a is None:
      continue
    axis = depth + site.batch_axis
    if a.shape[axis] != n:
      raise ValueError(
        f"tap site {'/'.join(path)!r}: axis {site.batch_axis} has "
        f"{a.shape[axis]} entries, the batch has {n} examples"
      )
    if site.conv is not None:
      # A convolution is a dense map of its patches: [..., B, *out, K].
      lead = a.shape[: depth + 1]
      patches = site.conv.unfold(a.reshape((-1,) + a.shape[depth + 1 :]))
      a = patches.reshape(lead + patches.shape[1:])
      for i in site.weights:
        if i is not None:
          conv_kernels[i] = site.conv
    # Every leading axis but the examples' (and the slicing scan's, for a
    # scanned leaf) is a position within an example.
    for i, k, lo, hi in _spans(site.weights, site.weight_axes, site.widths):
      if i in p.tapped:
        weight_parts.setdefault(i, []).append(
          (_per_slice(a, axis, k), _per_slice(g[..., lo:hi], axis, k))
        )
    for i, k, lo, hi in _spans(site.biases, site.bias_axes, site.bias_widths):
      if i in p.tapped:
        # A bias's per-example gradient is the cotangent summed over the
        # example's positions.
        gi = _per_slice(g[..., lo:hi], axis, k)
        bias_parts.setdefault(i, []).append(jnp.sum(gi, axis=2))

  out, pending = {}, []
  for i, parts in weight_parts.items():
    if len(parts) == 1 and parts[0][0].shape[2] == 1:
      # One position per example: Σ_b (a_b g_bᵀ)² = (A∘A)ᵀ(G∘G), no
      # per-example tensor.
      a, g = parts[0][0][:, :, 0], parts[0][1][:, :, 0]
      out[i] = jnp.einsum("bsi,bso->sio", a * a, g * g)
    else:
      a = jnp.concatenate([a for a, _ in parts], axis=2)
      g = jnp.concatenate([g for _, g in parts], axis=2)
      pending.append((i, (a, g)))
  sums = _sum_sq_outer([pair for _, pair in pending], n, chunk_size)
  out.update({i: s for (i, _), s in zip(pending, sums, strict=True)})
  for i, parts in bias_parts.items():
    out[i] = fisher_lib.sum_examples(jnp.square(sum(parts)))
  shapes = [jnp.shape(v) for v in jax.tree.leaves(params)]
  # With a mean loss the probes carry d(mean)/dy = g_b / n: the per-example
  # gradient is n times the sums above, F = (1/n) Σ_b (n ·)² = n Σ_b (·)².
  # With a sum (or per-example losses) they carry g_b: F = (1/n) Σ_b (·)².
  scale = float(n) if reduction == "mean" else 1.0 / n
  for i, spec in conv_kernels.items():
    # [S, C_in·prod(window), C_out] with features (C_in, *window) → the
    # kernel's [S, *window, C_in, C_out].
    f = out[i]
    f = f.reshape((f.shape[0], -1, *spec.window, f.shape[-1]))
    out[i] = jnp.moveaxis(f, 1, -2)
  return {
    i: (scale * f).reshape(shapes[i]).astype(jnp.float32)
    for i, f in out.items()
  }


def _num_examples(batch: PyTree) -> int:
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(
      f"batch leaves disagree on the leading (example) axis: {sorted(sizes)}"
    )
  return sizes.pop()


def per_example_fisher(
  loss_fn: Callable[[PyTree, PyTree, Tap], Array],
  params: PyTree,
  batch: PyTree,
  *,
  chunk_size: int | None = None,
  reduction: str = "mean",
) -> PyTree:
  """Empirical diagonal Fisher `F = 1/B Σ_b (∇ℓ_b)²`, exact, via taps.

  The same quantity as `fisher.fisher_diagonal(estimator="per_example")`:
  leaves reached only through `tap.dense` come from one probed backward
  pass; leaves the loss also reads elsewhere come from `vmap(grad)` with
  the tapped leaves held fixed; leaves it does not read are zero. Does not
  jit itself.

  Args:
    loss_fn: `(params, batch, tap) -> loss`, separable across examples,
      written against the tap protocol (see `Tap`); what it returns is
      declared by `reduction`.
    params: any pytree of float arrays.
    batch: pytree whose leaves share the leading example axis B (the tapped
      inputs may hold the examples on another axis: `batch_axis`).
    chunk_size: examples per chunk for the per-example sums of weights used
      at several positions (and for the fallback); None = all B at once,
      holding [B, D_in, D_out] per such weight.
    reduction: the per-example contract (see `REDUCTIONS`): ``mean``, a
      scalar `1/B Σ_b ℓ_b`; ``sum``, a scalar `Σ_b ℓ_b`; ``none``, the
      per-example losses `[B]`. A token-masked mean over the whole batch
      (Σ m·ℓ / Σ m) is none of these: return each example's own loss (e.g.
      its masked mean over its tokens) with ``none``.

  Returns:
    A pytree like `params` of float32 leaves: F ≥ 0, the mean over the B
    examples of the squared per-example gradient.

  Raises:
    ValueError: an unknown `reduction`, an output that does not fit it, or
      a tap inside an unsupported transformation.

  Examples:
    >>> import jax.numpy as jnp
    >>> def loss(p, b, tap=PLAIN):
    ...   return jnp.mean((tap.dense("w", b["x"], p["w"])[:, 0] - b["y"]) ** 2)
    >>> batch = {"x": jnp.eye(2), "y": jnp.zeros(2)}
    >>> f = per_example_fisher(loss, {"w": jnp.ones((2, 1))}, batch)
    >>> f["w"][:, 0].tolist()  # example b has gradient 2·e_b, squared 4·e_b
    [2.0, 2.0]
  """
  check_reduction(reduction)
  n = _num_examples(batch)
  p = _discover(loss_fn, params, batch, reduction)
  leaves, treedef = jax.tree.flatten(params)
  out = [jnp.zeros(jnp.shape(v), jnp.float32) for v in leaves]
  if p.tapped:
    try:
      tapped_f = _tapped_fisher(
        loss_fn, params, batch, p, n, chunk_size, reduction
      )
    except jax.errors.UnexpectedTracerError as e:
      raise ValueError(_CONTEXT_HINT) from e
    for i, f in tapped_f.items():
      out[i] = f
  if p.fallback:
    order = sorted(p.fallback)

    def rest_loss(rest, b):
      merged = list(leaves)
      for i, v in zip(order, rest, strict=True):
        merged[i] = v
      # On the fallback's batches of one, every reduction is ℓ_b.
      return jnp.sum(loss_fn(jax.tree.unflatten(treedef, merged), b, PLAIN))

    rest_f = fisher_lib.fisher_diagonal(
      rest_loss,
      [leaves[i] for i in order],
      batch,
      estimator="per_example",
      chunk_size=chunk_size,
      method="vmap",
    )
    for i, f in zip(order, rest_f, strict=True):
      out[i] = f
  return jax.tree.unflatten(treedef, out)


def verify(
  loss_fn,
  params: PyTree,
  batch: PyTree,
  *,
  num_examples: int = 3,
  rtol: float = 1e-3,
) -> float:
  """Checks a tapped loss's contract on a few examples; returns the error.

  Computes the per-example Fisher of the first `num_examples` examples on
  the fast path and with `vmap(grad)` and compares them. They differ when
  the loss breaks the contract the fast path relies on: a wrong
  `reduction`, a forgotten `batch_axis` (a time-major input), examples
  that are not separable. Run it once on a new model (not inside jit).

  Args:
    loss_fn: a `TappedLoss` (from `tapped`).
    params, batch: as for `per_example_fisher`; examples on the leading
      axis of every leaf of `batch`.
    num_examples: how many leading examples to compare (≥ 2, so that the
      example axis is exercised).
    rtol: the largest accepted relative error (max |fast − vmap| over
      max |vmap|, per leaf).

  Returns:
    The largest relative error over the leaves.

  Raises:
    ValueError: the error exceeds `rtol` (naming the leaf) or the loss is
      not a `TappedLoss`.
  """
  if not isinstance(loss_fn, TappedLoss):
    raise ValueError("verify needs a tap-aware loss (fisher_fast.tapped)")
  k = min(num_examples, _num_examples(batch))
  sub = jax.tree.map(lambda x: x[:k], batch)
  fast = loss_fn.per_example_fisher(params, sub)
  slow = fisher_lib.fisher_diagonal(
    loss_fn, params, sub, estimator="per_example", method="vmap"
  )
  worst, where = 0.0, None
  paths = partition.leaf_paths(params)
  for path, a, b in zip(
    paths, jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True
  ):
    scale = float(jnp.max(jnp.abs(b)))
    err = float(jnp.max(jnp.abs(a - b))) / max(scale, 1e-30)
    if scale == 0.0 and float(jnp.max(jnp.abs(a))) == 0.0:
      err = 0.0
    if err > worst:
      worst, where = err, path
  if worst > rtol:
    raise ValueError(
      f"the fast per-example Fisher differs from vmap(grad) at {where!r} "
      f"(relative error {worst:.3g} on {k} examples): check the loss's "
      "reduction, every tap's batch_axis, and that examples stay separable"
    )
  return worst


REDUCTIONS = fisher_lib.REDUCTIONS  # ("mean", "sum", "none")
check_reduction = fisher_lib.check_reduction


class TappedLoss:
  """A tap-aware loss that is also a plain `(params, batch) -> loss`.

  `fisher.fisher_diagonal(..., estimator="per_example")` recognises it (by
  its `per_example_fisher` method) and takes the fast exact path; its
  `reduction` tells every estimator what the loss returns.
  """

  def __init__(
    self, fn: Callable[[PyTree, PyTree, Tap], Array], reduction: str = "mean"
  ):
    check_reduction(reduction)
    self.fn = fn
    self.reduction = reduction
    functools.update_wrapper(self, fn)

  def __call__(self, params: PyTree, batch: PyTree, tap: Tap = PLAIN) -> Array:
    return self.fn(params, batch, tap)

  def per_example_fisher(
    self, params: PyTree, batch: PyTree, *, chunk_size: int | None = None
  ) -> PyTree:
    """`per_example_fisher(self.fn, ..., reduction=self.reduction)`."""
    return per_example_fisher(
      self.fn, params, batch, chunk_size=chunk_size, reduction=self.reduction
    )


def tapped(
  fn: Callable[[PyTree, PyTree, Tap], Array] | None = None,
  *,
  reduction: str = "mean",
):
  """Marks `fn(params, batch, tap)` as tap-aware; a decorator.

  `@tapped` declares a mean loss; `@tapped(reduction="sum")` a summed one;
  `@tapped(reduction="none")` a loss returning the per-example losses [B]
  (the form for masked or weighted losses). See `per_example_fisher`.
  """
  if fn is None:
    return lambda f: TappedLoss(f, reduction)
  return TappedLoss(fn, reduction)
