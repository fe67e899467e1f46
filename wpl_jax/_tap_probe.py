"""Zero probes on a tap-aware loss's matmul outputs, and what they record.

A `Prober` is the tap (`wpl_jax.taps`) under which a loss runs when the
fast Fisher (`fisher_fast`) or the tapped gradient (`tapped_grad`) needs
every tapped matmul's input x and output cotangent g: it adds a zero
probe to each output (one per step inside a `tap.scan`) and records the
inputs; the gradient with respect to the probes is g. `probe_tree` makes
the probes for the sites that `_tap_discovery` found, `lookup` finds a
site's record, `spans` a leaf's columns of a site's output.
"""

import jax.numpy as jnp

from wpl_jax import _tap_discovery as disc
from wpl_jax import _tap_ops as ops
from wpl_jax.taps import Tap
from wpl_jax.types import Array


class Prober(Tap):
  """Adds the given zero probes to the matmul outputs; records the inputs."""

  def __init__(self, probes, per_example: bool = True):
    self.records = {"sites": {}, "scans": {}}
    self._stack = [(probes, self.records)]
    self.per_example = per_example

  def dense(self, name, x, w, b=None, *, batch_axis=0, low=None):
    y = super().dense(name, x, w, b, batch_axis=batch_axis, low=low)
    return self._probe(name, x, y)

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
      # No tapped site inside: its body probes nothing, not even a site of
      # the enclosing scope that shares a name with one of its own.
      self._stack.append(
        ({"sites": {}, "scans": {}}, {"sites": {}, "scans": {}})
      )
      try:
        return super().scan(
          name, f, init, xs, length, reverse=reverse, unroll=unroll
        )
      finally:
        self._stack.pop()

    def body(carry, inputs):
      x, step_probes = inputs
      step_records = {"sites": {}, "scans": {}}
      self._stack.append((step_probes, step_records))
      try:
        carry, y = f(carry, x)
      finally:
        self._stack.pop()
      return carry, (y, step_records)

    carry, (ys, records["scans"][name]) = ops.scan(
      body,
      init,
      (xs, probes["scans"][name]),
      ops.scan_length(xs, length),
      reverse=reverse,
      unroll=unroll,
    )
    return carry, ys


def probe_tree(scope: disc.Scope, tapped: frozenset, prefix=()) -> dict:
  """Zero probes for the sites with a tapped leaf, `prefix` = scan lengths."""
  tree = {"sites": {}, "scans": {}}
  for name, site in scope.sites.items():
    if tapped.intersection(site.weights + site.biases):
      tree["sites"][name] = jnp.zeros(prefix + site.out.shape, site.out.dtype)
  for name, (length, child) in scope.scans.items():
    sub = probe_tree(child, tapped, prefix + (length,))
    if sub["sites"] or sub["scans"]:
      tree["scans"][name] = sub
  return tree


def lookup(tree: dict, path: tuple) -> Array | None:
  for name in path[:-1]:
    tree = tree["scans"].get(name)
    if tree is None:
      return None
  return tree["sites"].get(path[-1])


def spans(indices: tuple, axes: tuple, widths: tuple):
  """Yields `(leaf index, scan axis, lo, hi)`: each leaf's output columns."""
  lo = 0
  for i, axis, width in zip(indices, axes, widths, strict=True):
    yield i, axis, lo, lo + width
    lo += width
