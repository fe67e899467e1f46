"""The per-example contract: mean, sum and per-example (masked) losses.

Every case is compared with an independent Python loop of per-example
gradients (`jax.grad` of one example's own loss, no wpl_jax code), on both
paths (`taps`, `vmap`) and for `batch_grad_squared`. Misuse gives one clear
`ValueError` (wrong output shape, taps inside `vmap`), and
`fisher_fast.verify` catches what shapes cannot (a forgotten `batch_axis`).
"""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax import fisher, fisher_fast

_B, _T, _D, _C = 5, 4, 3, 6


def _setup():
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.normal(size=(_D, _C)) * 0.7, jnp.float32),
    "b": jnp.asarray(rng.normal(size=(_C,)) * 0.1, jnp.float32),
  }
  mask = np.ones((_B, _T), bool)
  mask[0, 2:] = False  # padded sequences of different lengths
  mask[3, 1:] = False
  batch = {
    "x": jnp.asarray(rng.normal(size=(_B, _T, _D)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, _C, (_B, _T)), jnp.int32),
    "m": jnp.asarray(mask),
  }
  return params, batch


def _token_nll(logits, y):
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]


def _example_losses(params, batch, tap=fisher_fast.PLAIN):
  """ℓ_b: each sequence's masked mean NLL over its own tokens, [B]."""
  logits = tap.dense("out", batch["x"], params["w"], params["b"])
  nll = _token_nll(logits, batch["y"])
  m = batch["m"].astype(jnp.float32)
  return jnp.sum(nll * m, axis=1) / jnp.sum(m, axis=1)


@fisher_fast.tapped
def _mean_loss(params, batch, tap):
  return jnp.mean(_example_losses(params, batch, tap))


@fisher_fast.tapped(reduction="sum")
def _sum_loss(params, batch, tap):
  return jnp.sum(_example_losses(params, batch, tap))


@fisher_fast.tapped(reduction="none")
def _per_example(params, batch, tap):
  return _example_losses(params, batch, tap)


_LOSSES = {"mean": _mean_loss, "sum": _sum_loss, "none": _per_example}


def _loop_grads(params, batch):
  """Each example's gradient of its own ℓ_b, one `jax.grad` call each."""
  grads = []
  for i in range(_B):
    one = jax.tree.map(lambda v, i=i: v[i : i + 1], batch)
    grads.append(
      jax.grad(lambda p, one=one: _example_losses(p, one)[0])(params)
    )
  return grads


def _assert_close(got, want, rtol=1e-5):
  for k in want:
    np.testing.assert_allclose(
      np.asarray(got[k]), np.asarray(want[k]), rtol=rtol, atol=1e-7, err_msg=k
    )


class ContractTest(parameterized.TestCase):
  @parameterized.product(
    reduction=("mean", "sum", "none"), method=("taps", "vmap")
  )
  def test_per_example_fisher(self, reduction, method):
    params, batch = _setup()
    grads = _loop_grads(params, batch)
    want = jax.tree.map(lambda *g: np.mean(np.square(g), 0), *grads)
    got = fisher.fisher_diagonal(
      _LOSSES[reduction], params, batch, estimator="per_example", method=method
    )
    _assert_close(got, want)

  @parameterized.parameters("mean", "sum", "none")
  def test_batch_grad_squared(self, reduction):
    params, batch = _setup()
    grads = _loop_grads(params, batch)
    want = jax.tree.map(lambda *g: np.square(np.mean(g, 0)), *grads)
    got = fisher.fisher_diagonal(
      _LOSSES[reduction], params, batch, estimator="batch_grad_squared"
    )
    _assert_close(got, want)

  def test_plain_sum_loss_with_declared_reduction(self):
    # A plain (untapped) function declares its reduction by argument.
    params, batch = _setup()
    plain_sum = lambda p, b: jnp.sum(_example_losses(p, b))
    grads = _loop_grads(params, batch)
    want = jax.tree.map(lambda *g: np.square(np.mean(g, 0)), *grads)
    got = fisher.fisher_diagonal(
      plain_sum, params, batch, estimator="batch_grad_squared", reduction="sum"
    )
    _assert_close(got, want)

  def test_undeclared_sum_is_caught_by_verify(self):
    # A sum declared as a mean: n² too large on the fast path. Shapes cannot
    # tell; verify() compares with vmap(grad) on a few examples.
    params, batch = _setup()
    wrong = fisher_fast.tapped(_sum_loss.fn)  # reduction "mean": a lie
    with self.assertRaisesRegex(ValueError, "differs from vmap.*reduction"):
      fisher_fast.verify(wrong, params, batch)
    self.assertLess(fisher_fast.verify(_sum_loss, params, batch), 1e-5)

  def test_time_major_without_batch_axis_is_caught_by_verify(self):
    # [T, B, D] with T == B: the shapes fit either way.
    params, batch = _setup()
    batch = jax.tree.map(lambda v: v[:, :_T], batch)  # B = T = 4... then
    batch = jax.tree.map(lambda v: v[:_T], batch)  # [4, 4, ...]

    def make(batch_axis):
      @fisher_fast.tapped(reduction="none")
      def loss(p, b, tap):
        x = jnp.swapaxes(b["x"], 0, 1)  # time-major [T, B, D]
        kw = {} if batch_axis is None else {"batch_axis": batch_axis}
        logits = tap.dense("out", x, p["w"], p["b"], **kw)
        nll = _token_nll(jnp.swapaxes(logits, 0, 1), b["y"])
        m = b["m"].astype(jnp.float32)
        return jnp.sum(nll * m, 1) / jnp.sum(m, 1)

      return loss

    self.assertLess(
      fisher_fast.verify(make(1), params, batch, num_examples=4), 1e-5
    )
    with self.assertRaisesRegex(ValueError, "batch_axis"):
      fisher_fast.verify(make(None), params, batch, num_examples=4)

  @parameterized.parameters(
    (
      "none",
      lambda p, b, tap: jnp.mean(_example_losses(p, b, tap)),
      "shape \\(5,\\)",
    ),
    ("mean", _example_losses, "must return a scalar"),
  )
  def test_output_must_fit_the_reduction(self, reduction, fn, fragment):
    params, batch = _setup()
    loss = fisher_fast.tapped(fn, reduction=reduction)
    with self.assertRaisesRegex(ValueError, fragment):
      fisher.fisher_diagonal(loss, params, batch, estimator="per_example")

  def test_unknown_and_contradicting_reduction(self):
    params, batch = _setup()
    with self.assertRaisesRegex(ValueError, "unknown reduction 'avg'"):
      fisher_fast.tapped(_example_losses, reduction="avg")
    with self.assertRaisesRegex(ValueError, "contradicts the loss's own 'sum'"):
      fisher.fisher_diagonal(
        _sum_loss, params, batch, estimator="per_example", reduction="mean"
      )

  @parameterized.parameters("vmap", "lax.scan", "checkpoint")
  def test_tap_in_an_unsupported_transformation_is_a_clear_error(self, where):
    params, batch = _setup()

    @fisher_fast.tapped
    def loss(p, b, tap):
      x = b["x"]
      dense = lambda v: tap.dense("out", v, p["w"], p["b"])
      if where == "vmap":
        out = jax.vmap(dense)(x)
      elif where == "lax.scan":
        _, out = jax.lax.scan(
          lambda c, xt: (c, dense(xt)), 0.0, jnp.swapaxes(x, 0, 1)
        )
        out = jnp.swapaxes(out, 0, 1)
      else:
        out = jax.checkpoint(dense)(x)
      return jnp.mean(_token_nll(out, b["y"]))

    with self.assertRaisesRegex(ValueError, "use tap.scan for scans"):
      fisher.fisher_diagonal(loss, params, batch, estimator="per_example")


class LayeringTest(absltest.TestCase):
  def test_the_library_knows_no_model(self):
    # wpl_jax.loss / fisher / taps / fisher_fast / flax_taps import nothing
    # of ENAS or the studies' models (the ENAS glue lives in
    # wpl_jax.enas.edge_fisher).
    code = (
      "import sys\n"
      "import wpl_jax.loss, wpl_jax.fisher, wpl_jax.fisher_fast\n"
      "import wpl_jax.taps, wpl_jax.flax_taps\n"
      "print(sorted(m for m in sys.modules if m.startswith('wpl_jax.')))\n"
    )
    out = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      check=True,
      cwd=str(pathlib.Path(__file__).resolve().parents[1]),
    )
    loaded = out.stdout.strip()
    for forbidden in ("wpl_jax.enas", "wpl_jax.two_models", "wpl_jax.runtime"):
      self.assertNotIn(forbidden, loaded)


if __name__ == "__main__":
  absltest.main()
