"""The matmul FLOP counter behind benchmarks/ceiling.py's fractions."""

import jax
import jax.numpy as jnp
from absl.testing import absltest

from benchmarks.ceiling import matmul_flops


def _flops(fn, *args):
  return matmul_flops(jax.make_jaxpr(fn)(*args))


class MatmulFlopsTest(absltest.TestCase):
  def test_one_matmul_is_2mnk(self):
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    self.assertEqual(_flops(jnp.dot, a, b), 2 * 3 * 5 * 4)

  def test_batched_einsum(self):
    a, b = jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5))
    self.assertEqual(_flops(lambda a, b: a @ b, a, b), 6 * 2 * 3 * 5 * 4)

  def test_scan_counts_its_length_and_nests(self):
    w = jnp.ones((4, 4))

    def inner(h, _):
      return h @ w, None

    def outer(h, _):
      h, _ = jax.lax.scan(inner, h, None, length=3)
      return h, None

    h = jnp.ones((2, 4))
    fn = lambda h: jax.lax.scan(outer, h, None, length=5)[0]
    self.assertEqual(_flops(fn, h), 5 * 3 * 2 * 2 * 4 * 4)

  def test_gradient_and_jit_and_cond(self):
    x = jnp.ones((8, 3))
    w = jnp.ones((3, 2))
    loss = jax.jit(lambda w: jnp.sum(x @ w))
    # Forward x @ w, backward xᵀ @ g (no gradient w.r.t. the constant x).
    self.assertEqual(_flops(jax.grad(loss), w), 2 * (2 * 8 * 2 * 3))
    branchy = lambda p, w: jax.lax.cond(p, lambda: x @ w @ w.T, lambda: 2.0 * x)
    self.assertEqual(_flops(branchy, True, w), 2 * 8 * 2 * 3 + 2 * 8 * 3 * 2)


if __name__ == "__main__":
  absltest.main()
