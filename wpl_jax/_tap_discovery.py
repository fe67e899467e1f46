"""Trace discovery for `wpl_jax.fisher_fast`: which leaves take the fast path.

One abstract trace of the loss with a recording tap (`Recorder`) finds the
tap sites (per scope: the top level and each `tap.scan` body) and, by a
dependency walk over the traced jaxpr (`dependencies`), which params leaves
reach the loss only through taps. Those are estimated from probes; every
other leaf the loss reads takes the `vmap(grad)` fallback. The walk reads
the public `jax.extend.core` jaxpr and, through `scan_layout` alone, a scan
equation's params (they changed in JAX 0.11); tests/fisher_fast_test.py
pins both layouts.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from wpl_jax import _tap_ops as ops
from wpl_jax import taps
from wpl_jax.types import PyTree


@dataclasses.dataclass(frozen=True)
class Site:
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
  conv: ops.ConvSpec | None = None  # a `conv` site (inputs are unfolded)
  # The dtype of a `dense(..., low=...)` site's products, else None.
  low_dtype: object = None


@dataclasses.dataclass
class Scope:
  """Sites and scans of one function body (the top level or a scan body)."""

  sites: dict = dataclasses.field(default_factory=dict)
  scans: dict = dataclasses.field(default_factory=dict)  # name: (L, Scope)
  slices: dict = dataclasses.field(default_factory=dict)  # id: leaf index

  def claim(self, name: str) -> None:
    if name in self.sites or name in self.scans:
      raise ValueError(f"tap name {name!r} is used twice in one scope")


class Recorder(taps.Tap):
  """Discovery: records sites; tapped leaves enter their matmuls as zeros.

  With the zeros, the traced jaxpr depends on a leaf only through its uses
  outside taps, which `dependencies` then finds.
  """

  def __init__(self, leaves, per_example: bool = True):
    self._ids = {id(v): i for i, v in enumerate(leaves)}
    self.root = Scope()
    self._stack = [self.root]
    self.per_example = per_example

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

  def dense(self, name, x, w, b=None, *, batch_axis=0, low=None):
    ws, bs = ops.as_tuple(w), ops.as_tuple(b)
    ops.check_dense(name, x, ws, bs)
    ops.check_low(name, ws, low)
    if low is not None and self.per_example:
      raise ValueError(
        f"tap.dense({name!r}): low-precision products (low=) and the "
        "per-example Fisher's taps: use float32 products (low=None)"
      )
    low_dtype = None if low is None else jnp.dtype(low[0].dtype)
    return self._record(name, x, ws, bs, batch_axis, None, low_dtype)

  def conv(self, name, x, w, b=None, **settings):
    spec = ops.conv_spec(name, x, w, b, **ops.conv_settings(settings))
    return self._record(name, x, (w,), ops.as_tuple(b), 0, spec)

  def _record(self, name, x, ws, bs, batch_axis, spec, low_dtype=None):
    # Inside vmap the inputs are batching tracers: the example axis is gone
    # from what the tap sees (pinned by tests/contract_test.py).
    if any(type(v).__name__ == "BatchTracer" for v in (x, *ws, *bs)):
      raise ValueError(f"tap {name!r}: {CONTEXT_HINT}")
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
      y = ops.dense(x, ws0, bs0)
    else:
      y = ops.conv(x, ws0[0], bs0[0] if bs0 else None, spec)
    scope.sites[name] = Site(
      weights=wi,
      biases=bi,
      weight_axes=wa,
      bias_axes=ba,
      widths=tuple(v.shape[-1] for v in ws),
      bias_widths=tuple(v.shape[0] for v in bs),
      out=jax.ShapeDtypeStruct(y.shape, y.dtype),
      batch_axis=batch_axis % x.ndim,
      conv=spec,
      low_dtype=low_dtype,
    )
    return y

  def scan(
    self, name, f, init, xs=None, length=None, *, reverse=False, unroll=1
  ):
    scope = self._stack[-1]
    scope.claim(name)
    xs = ops.stacked_xs(xs)  # `Rows` were not split here (`rows`)
    n = ops.scan_length(xs, length)
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
      child = Scope()
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

  def rows(self, stacked):
    # Not split: the scan that takes it sees the leaf itself, by identity.
    return ops.Rows(stacked, None)


def dependencies(jaxpr: jex_core.Jaxpr, deps_in: list) -> list:
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
      outs = scan_dependencies(eqn, ins)
    else:
      outs = [frozenset().union(*ins)] * len(eqn.outvars)
    env.update((v, d) for v, d in zip(eqn.outvars, outs, strict=True) if d)
  return [get(v) for v in jaxpr.outvars]


def scan_layout(eqn) -> tuple:
  """`(body, n_consts, n_carry)` of a scan equation, on JAX 0.10 and 0.11.

  A scan's flat inputs are its consts, then its carries, then its xs; the
  body `Jaxpr` takes them in that order. JAX <= 0.10 states the counts as
  params "num_consts" and "num_carry" and the body as a `ClosedJaxpr`;
  JAX 0.11 states them as "ft_in", one flat tree per group (consts, carry,
  xs) with one entry per flat input, and the body as a `Jaxpr`. Anything
  else (or counts that do not add up to the equation's inputs) raises
  NotImplementedError naming the params: a JAX change must fail loudly, not
  mis-attribute a weight.
  """
  params = eqn.params
  n_consts = n_carry = None
  body = params.get("jaxpr")
  if isinstance(body, jex_core.ClosedJaxpr):
    body = body.jaxpr
  if "num_consts" in params and "num_carry" in params:
    n_consts, n_carry = params["num_consts"], params["num_carry"]
  elif "ft_in" in params and hasattr(params["ft_in"], "unpack"):
    groups = params["ft_in"].unpack()  # FlatTree: len() counts flat leaves
    if len(groups) == 3:
      n_consts, n_carry = len(groups[0]), len(groups[1])
  if (
    n_consts is None
    or not isinstance(body, jex_core.Jaxpr)
    or len(body.invars) != len(eqn.invars)
    or n_consts + n_carry > len(eqn.invars)
    or n_carry > len(body.outvars)
  ):
    raise NotImplementedError(
      f"wpl_jax: unknown scan equation layout (params {sorted(params)}, "
      f"JAX {jax.__version__}); the fast Fisher's discovery needs updating"
    )
  return body, n_consts, n_carry


def scan_dependencies(eqn, ins: list) -> list:
  """`dependencies` of a scan equation's outputs (final carry, then ys)."""
  body, n_consts, n_carry = scan_layout(eqn)
  consts = ins[:n_consts]
  carry = ins[n_consts : n_consts + n_carry]
  xs = ins[n_consts + n_carry :]
  while True:
    outs = dependencies(body, consts + carry + xs)
    grown = [c | o for c, o in zip(carry, outs[:n_carry], strict=True)]
    if grown == carry:
      return carry + outs[n_carry:]
    carry = grown


def walk(scope: Scope, depth: int = 0):
  """Yields `(path, site, depth)`; depth = number of enclosing scans."""
  for name, site in scope.sites.items():
    yield (name,), site, depth
  for name, (_, child) in scope.scans.items():
    for path, site, d in walk(child, depth + 1):
      yield (name, *path), site, d


@dataclasses.dataclass(frozen=True)
class Plan:
  """What discovery found: the sites and how each leaf is estimated."""

  root: Scope
  tapped: frozenset  # leaves estimated from probes
  fallback: frozenset  # leaves estimated with vmap(grad)


def check_output(shape: tuple, reduction: str, n: int) -> None:
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


CONTEXT_HINT = (
  "a tap was used inside a transformation it does not support (a plain "
  "jax.lax.scan, vmap, cond, while_loop or checkpoint): use tap.scan for "
  "scans and keep taps out of the others, or use method='vmap'"
)


def discover(
  loss_fn, params: PyTree, batch: PyTree, reduction: str | None = "mean"
) -> Plan:
  """Traces `loss_fn` once with a recording tap (no computation).

  `reduction=None`: a batch gradient's trace (no per-example contract: the
  output must be a scalar, the batch needs no example axis).
  """
  leaves, treedef = jax.tree.flatten(params)
  recorder = None

  def traced(leaf_values):
    nonlocal recorder
    recorder = Recorder(leaf_values, per_example=reduction is not None)
    return loss_fn(jax.tree.unflatten(treedef, leaf_values), batch, recorder)

  avals = [
    jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in leaves
  ]
  try:
    closed = jax.make_jaxpr(traced)(avals)
  except jax.errors.UnexpectedTracerError as e:
    raise ValueError(CONTEXT_HINT) from e
  if reduction is None:
    check_output(jnp.shape(closed.out_avals[0]), "sum", 0)
  else:
    check_output(jnp.shape(closed.out_avals[0]), reduction, num_examples(batch))
  start = [frozenset([i]) for i in range(len(leaves))]
  (reaching,) = dependencies(closed.jaxpr, start)
  # How each tapped leaf is used: ("weight" or "bias", slicing scan axis
  # or None). A leaf used in two ways (a weight here, a bias there; whole
  # here, scanned there) has no single per-example form: the fallback's.
  uses = {}
  for _, site, _ in walk(recorder.root):
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
  return Plan(
    root=recorder.root,
    tapped=frozenset(tapped),
    fallback=frozenset(reaching | mixed),
  )


def num_examples(batch: PyTree) -> int:
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(
      f"batch leaves disagree on the leading (example) axis: {sorted(sizes)}"
    )
  return sizes.pop()
