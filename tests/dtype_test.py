"""float32, bfloat16 and float16 params: the penalty and all three estimators.

Each result is compared with NumPy in float64 on the values as stored in the
low-precision dtype (so only the arithmetic is tested, not the rounding of
the inputs). The transform `add_wpl` is covered in tests/library_args_test.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax import fisher, fisher_fast, loss

_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Relative tolerance of a quantity computed from dtype-precision matmuls.
_RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2, jnp.float16: 5e-3}


def _setup(dtype, n=8, d=5, c=3):
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.normal(size=(d, c)) * 0.5, dtype),
    "b": jnp.asarray(rng.normal(size=(c,)) * 0.1, dtype),
  }
  batch = {
    "x": jnp.asarray(rng.normal(size=(n, d)), dtype),
    "y": jnp.asarray(rng.integers(0, c, n), jnp.int32),
  }
  return params, batch


def _np(tree):
  return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


def _logits(params, batch):
  return batch["x"] @ params["w"] + params["b"][None]


def _xent(logits, y):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _loss(params, batch):
  return _xent(_logits(params, batch), batch["y"])


@fisher_fast.tapped
def _tapped_loss(params, batch, tap):
  logits = tap.dense("out", batch["x"], params["w"], params["b"])
  return _xent(logits, batch["y"])


def _np_grads(params, batch, labels=None):
  """Per-example gradients of −log softmax(xW + b)[y]: ([N, D, C], [N, C])."""
  p, x = _np(params), np.asarray(batch["x"], np.float64)
  y = np.asarray(batch["y"] if labels is None else labels)
  z = x @ p["w"] + p["b"]
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  delta = prob - np.eye(z.shape[1])[y]
  return x[:, :, None] * delta[:, None, :], delta, prob


class DtypeTest(parameterized.TestCase):
  @parameterized.parameters(*_DTYPES)
  def test_penalty(self, dtype):
    params, _ = _setup(dtype)
    anchor = jax.tree.map(lambda v: (v * 0.5).astype(dtype), params)
    f = jax.tree.map(lambda v: jnp.abs(v).astype(jnp.float32) + 1e-3, params)
    got = loss.wpl_penalty(params, anchor, f, alpha=3.0)
    self.assertEqual(got.dtype, jnp.float32)
    p, a, fn = _np(params), _np(anchor), _np(f)
    want = 1.5 * sum(np.sum(fn[k] * (p[k] - a[k]) ** 2) for k in p)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)

  @parameterized.product(
    dtype=_DTYPES,
    how=("per_example/vmap", "per_example/taps", "batch_grad_squared"),
  )
  def test_empirical_estimators(self, dtype, how):
    params, batch = _setup(dtype)
    estimator, _, method = how.partition("/")
    loss_fn = _tapped_loss if method == "taps" else _loss
    got = fisher.fisher_diagonal(
      loss_fn, params, batch, estimator=estimator, method=method or "auto"
    )
    gw, gb, _ = _np_grads(params, batch)
    if estimator == "per_example":
      want = {"w": np.mean(gw**2, 0), "b": np.mean(gb**2, 0)}
    else:
      want = {"w": np.mean(gw, 0) ** 2, "b": np.mean(gb, 0) ** 2}
    for k in ("w", "b"):
      self.assertEqual(got[k].dtype, jnp.float32)
      scale = np.abs(want[k]).max()
      np.testing.assert_allclose(
        np.asarray(got[k]),
        want[k],
        rtol=_RTOL[dtype],
        atol=_RTOL[dtype] * scale,
      )

  @parameterized.parameters(*_DTYPES)
  def test_sampled_matches_the_expectation(self, dtype):
    # E_{y~p}[(∇ log p(y|x))²] in closed form, against 4000 sampled labels.
    params, batch = _setup(dtype)
    got = fisher.fisher_diagonal(
      None,
      params,
      batch,
      estimator="sampled",
      key=jax.random.key(1),
      logits_fn=_logits,
      num_samples=4000,
    )
    _, _, prob = _np_grads(params, batch)
    n, c = prob.shape
    want = {"w": 0.0, "b": 0.0}
    for label in range(c):
      gw, gb, _ = _np_grads(params, batch, labels=np.full(n, label))
      weight = prob[:, label]
      want["w"] += np.mean(weight[:, None, None] * gw**2, 0)
      want["b"] += np.mean(weight[:, None] * gb**2, 0)
    for k in ("w", "b"):
      self.assertEqual(got[k].dtype, jnp.float32)
      self.assertTrue(np.all(np.isfinite(np.asarray(got[k]))))
      # Monte Carlo error of 4000 samples: a few percent of the largest entry.
      np.testing.assert_allclose(
        np.asarray(got[k]), want[k], rtol=0.1, atol=0.05 * want[k].max()
      )


if __name__ == "__main__":
  absltest.main()
