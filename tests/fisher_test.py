"""Tests for wpl_jax.fisher against per-example loops and closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax import fisher
from wpl_jax import loss as loss_lib

# Models -----------------------------------------------------------------------


def _mlp_params(seed, d_in=5, d_h=7, d_out=3):
  rng = np.random.default_rng(seed)
  return {
    "l1": {
      "w": rng.normal(size=(d_in, d_h)).astype(np.float32) / np.sqrt(d_in),
      "b": rng.normal(size=(d_h,)).astype(np.float32) * 0.1,
    },
    "l2": {
      "w": rng.normal(size=(d_h, d_out)).astype(np.float32) / np.sqrt(d_h),
      "b": np.zeros((d_out,), np.float32),
    },
  }


def _mlp_logits(params, batch):
  h = jnp.tanh(batch["x"] @ params["l1"]["w"] + params["l1"]["b"][None])
  return h @ params["l2"]["w"] + params["l2"]["b"][None]


def _xent(logits, y):
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def _mlp_loss(params, batch):
  return _xent(_mlp_logits(params, batch), batch["y"])


def _rnn_params(seed, d_in=3, d_h=6, d_out=4):
  rng = np.random.default_rng(seed)
  return {
    "wx": rng.normal(size=(d_in, d_h)).astype(np.float32) * 0.5,
    "wh": rng.normal(size=(d_h, d_h)).astype(np.float32) * 0.3,
    "wo": rng.normal(size=(d_h, d_out)).astype(np.float32) * 0.5,
  }


def _rnn_loss(params, batch):
  """Elman RNN over time with `lax.scan`; batch x: [B, T, D], y: [B, T]."""
  x_tbd = jnp.swapaxes(batch["x"], 0, 1)

  def step(h, x_bd):
    h = jnp.tanh(x_bd @ params["wx"] + h @ params["wh"])
    return h, h @ params["wo"]

  h0 = jnp.zeros((batch["x"].shape[0], params["wh"].shape[0]))
  _, logits_tbo = jax.lax.scan(step, h0, x_tbd)
  return _xent(jnp.swapaxes(logits_tbo, 0, 1), batch["y"])


def _mlp_batch(seed, n=10):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.normal(size=(n, 5)).astype(np.float32),
    "y": rng.integers(0, 3, size=(n,)).astype(np.int32),
  }


def _rnn_batch(seed, n=6, t=4):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.normal(size=(n, t, 3)).astype(np.float32),
    "y": rng.integers(0, 4, size=(n, t)).astype(np.int32),
  }


def _loop_per_example(loss_fn, params, batch):
  """Independent reference: a Python loop of single-example `jax.grad`."""
  n = batch["y"].shape[0]
  acc = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
  grad_fn = jax.jit(jax.grad(loss_fn))
  for i in range(n):
    ex = {k: v[i : i + 1] for k, v in batch.items()}
    g = grad_fn(params, ex)
    acc = jax.tree.map(
      lambda a, gi: a + np.asarray(gi, np.float64) ** 2, acc, g
    )
  return jax.tree.map(lambda a: a / n, acc)


# Tests ------------------------------------------------------------------------


class EstimatorTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()

  @parameterized.product(
    model=["mlp", "rnn"], chunk_size=[None, 4], jit=[True, False]
  )
  def test_per_example_matches_loop(self, model, chunk_size, jit):
    if model == "mlp":
      loss_fn, params, batch = _mlp_loss, _mlp_params(0), _mlp_batch(1)
    else:
      loss_fn, params, batch = _rnn_loss, _rnn_params(0), _rnn_batch(1)
    fn = lambda p, b: fisher.fisher_diagonal(
      loss_fn, p, b, estimator="per_example", chunk_size=chunk_size
    )
    if jit:
      fn = jax.jit(fn)
    got = fn(params, batch)
    want = _loop_per_example(loss_fn, params, batch)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-9)

  def test_batch_grad_squared(self):
    params, batch = _mlp_params(0), _mlp_batch(2)
    got = fisher.fisher_diagonal(
      _mlp_loss, params, batch, estimator="batch_grad_squared"
    )
    # Manual: mean of the per-example gradients, then squared.
    n = batch["y"].shape[0]
    grad_fn = jax.jit(jax.grad(_mlp_loss))
    gs = [
      grad_fn(params, {k: v[i : i + 1] for k, v in batch.items()})
      for i in range(n)
    ]
    mean_g = jax.tree.map(lambda *g: np.mean(np.stack(g), 0), *gs)
    chex.assert_trees_all_close(
      got, jax.tree.map(np.square, mean_g), rtol=1e-5, atol=1e-9
    )

  def test_sampled_matches_closed_form(self):
    """Softmax-linear model: E_y[(∂ log p(y|x)/∂W_ij)²] = x_i² p_j (1 − p_j)."""
    rng = np.random.default_rng(3)
    params = {
      "w": rng.normal(size=(4, 3)).astype(np.float32),
      "b": rng.normal(size=(3,)).astype(np.float32),
    }
    x = rng.normal(size=(8, 4)).astype(np.float32)
    logits_fn = lambda p, b: b["x"] @ p["w"] + p["b"][None]
    got = jax.jit(
      lambda p, b, k: fisher.fisher_diagonal(
        None,
        p,
        b,
        estimator="sampled",
        logits_fn=logits_fn,
        key=k,
        num_samples=2000,
        chunk_size=3,
      )
    )(params, {"x": x}, jax.random.key(0))
    probs = np.asarray(
      jax.nn.softmax(x @ params["w"] + params["b"][None]), np.float64
    )
    v = probs * (1 - probs)  # [B, C]
    want_w = np.einsum("bi,bj->ij", x.astype(np.float64) ** 2, v) / len(x)
    want_b = v.mean(0)
    # 16,000 draws per entry: Monte Carlo relative error is about 1-2%.
    np.testing.assert_allclose(got["w"], want_w, rtol=0.06)
    np.testing.assert_allclose(got["b"], want_b, rtol=0.06)

  def test_sampled_differs_from_empirical(self):
    """With labels far from the model's own, empirical ≠ true Fisher."""
    params, batch = _mlp_params(0), _mlp_batch(4)
    logits_fn = _mlp_logits
    s = fisher.fisher_diagonal(
      None,
      params,
      batch,
      estimator="sampled",
      logits_fn=logits_fn,
      key=jax.random.key(1),
      num_samples=4,
    )
    e = fisher.fisher_diagonal(_mlp_loss, params, batch)
    self.assertGreater(
      float(jnp.max(jnp.abs(s["l2"]["w"] - e["l2"]["w"]))), 1e-3
    )

  @parameterized.parameters(
    dict(estimator="bogus", msg="unknown Fisher estimator"),
    dict(estimator="sampled", msg="needs logits_fn"),
  )
  def test_bad_arguments(self, estimator, msg):
    with self.assertRaisesRegex(ValueError, msg):
      fisher.fisher_diagonal(
        _mlp_loss, _mlp_params(0), _mlp_batch(0), estimator=estimator
      )

  def test_sampled_needs_key(self):
    with self.assertRaisesRegex(ValueError, "needs key"):
      fisher.fisher_diagonal(
        None,
        _mlp_params(0),
        _mlp_batch(0),
        estimator="sampled",
        logits_fn=_mlp_logits,
      )

  @parameterized.parameters(*fisher.ESTIMATORS)
  def test_no_retrace(self, estimator):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, b, k):
      return fisher.fisher_diagonal(
        _mlp_loss, p, b, estimator=estimator, key=k, logits_fn=_mlp_logits
      )

    for s in range(3):
      f(_mlp_params(s), _mlp_batch(s), jax.random.key(s))


class StateTest(parameterized.TestCase):
  def test_reference_mode_saturates_at_alpha_clip(self):
    alpha, clip = 60.0, 10.0
    g2 = {"w": np.full((3, 4), 5.0, np.float32)}  # ‖g²‖_F ≈ 17 > clip
    state = fisher.init_state({"w": np.zeros((3, 4), np.float32)})
    update = jax.jit(
      lambda s, g: fisher.update_fisher(
        s, g, mode="reference", decay=0.9, clip=clip, alpha=alpha
      )
    )
    norms = []
    for _ in range(6):
      state = update(state, g2)
      norms.append(float(jnp.linalg.norm(state.fisher["w"])))
    np.testing.assert_allclose(norms, alpha * clip, rtol=1e-6)

  def test_reference_mode_small_gradient_compounds_then_saturates(self):
    """α multiplies the state: a tiny g² still grows to ‖F‖ = α·clip."""
    alpha, clip = 60.0, 10.0
    g2 = {"w": np.full((2, 2), 1e-3, np.float32)}
    state = fisher.init_state({"w": np.zeros((2, 2), np.float32)})
    f = np.zeros((2, 2))
    for _ in range(8):
      state = fisher.update_fisher(
        state, g2, mode="reference", clip=clip, alpha=alpha
      )
      mixed = 0.1 * f + 0.9 * 1e-3  # NumPy transcription of docs/method.md §2
      n = np.linalg.norm(mixed)
      f = alpha * (mixed * min(1.0, clip / n))
      np.testing.assert_allclose(state.fisher["w"], f, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f), alpha * clip, rtol=1e-6)

  def test_per_matrix_clip_and_mask(self):
    """Stacked [E, H, H] edges: per-matrix clip, only masked edges touched."""
    e = 4
    g2 = {"edge": np.stack([np.full((2, 2), 10.0 * (i + 1)) for i in range(e)])}
    g2 = jax.tree.map(lambda x: x.astype(np.float32), g2)
    prev = {"edge": np.ones((e, 2, 2), np.float32)}
    state = fisher.FisherState(fisher=prev, anchor=prev)
    sel = np.array([True, False, True, False])
    out = fisher.update_fisher(
      state,
      g2,
      mode="reference",
      clip=10.0,
      alpha=2.0,
      mask={"edge": sel[:, None, None]},
      norm_axes=(-2, -1),
    )
    norms = np.linalg.norm(out.fisher["edge"].reshape(e, -1), axis=1)
    np.testing.assert_allclose(norms[sel], 20.0, rtol=1e-6)
    np.testing.assert_array_equal(out.fisher["edge"][~sel], 0.0)  # reset
    kept = fisher.update_fisher(
      state, g2, mode="clean", mask={"edge": sel[:, None, None]}
    )
    np.testing.assert_array_equal(kept.fisher["edge"][~sel], 1.0)

  def test_clean_mode_is_ema(self):
    rng = np.random.default_rng(0)
    est = [rng.random((3,)).astype(np.float32) for _ in range(5)]
    state = fisher.init_state({"w": np.zeros(3, np.float32)})
    want = np.zeros(3)
    for g in est:
      state = fisher.update_fisher(state, {"w": g}, mode="clean", decay=0.3)
      want = 0.7 * want + 0.3 * g
    np.testing.assert_allclose(state.fisher["w"], want, rtol=1e-6)

  def test_clean_mode_rejects_alpha(self):
    state = fisher.init_state({"w": np.zeros(3, np.float32)})
    with self.assertRaisesRegex(ValueError, "clean mode"):
      fisher.update_fisher(state, state.fisher, mode="clean", alpha=5.0)

  def test_reset_reanchor_consolidate(self):
    params = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    state = fisher.init_state(params)
    new = {"a": np.full(2, 3.0, np.float32), "b": np.full(2, 4.0, np.float32)}
    moved = jax.tree.map(lambda x: x + 1, params)
    state = fisher.consolidate(state, moved, new, decay=1.0)
    chex.assert_trees_all_close(state.fisher, new)
    chex.assert_trees_all_close(state.anchor, moved)
    state = fisher.reanchor(state, params, mask={"a": True, "b": False})
    np.testing.assert_array_equal(state.anchor["a"], 1.0)
    np.testing.assert_array_equal(state.anchor["b"], 2.0)
    state = fisher.reset(state, mask={"a": False, "b": True})
    np.testing.assert_array_equal(state.fisher["a"], 3.0)
    np.testing.assert_array_equal(state.fisher["b"], 0.0)

  @parameterized.parameters("sum", "ema")
  def test_three_models_against_the_formula(self, rule):
    """Models 1..3 consolidated in turn; the penalty for model 4 by hand.

    sum: F = F1 + F2 + F3, anchor θ3 (the paper's posterior recursion);
    ema (d = 0.9): F = d·F3 + d(1−d)·F2 + d(1−d)²·F1, anchor θ3.
    """
    rng = np.random.default_rng(3)
    thetas = [_mlp_params(s) for s in (10, 11, 12)]
    fishers = [
      jax.tree.map(lambda v: np.abs(rng.normal(size=v.shape)), _mlp_params(0))
      for _ in range(3)
    ]
    fishers = [jax.tree.map(lambda v: v.astype(np.float32), f) for f in fishers]
    state = fisher.init_state(thetas[0])
    for theta, f in zip(thetas, fishers, strict=True):
      state = fisher.consolidate(state, theta, f, rule=rule, decay=0.9)
    d = 0.9
    w = [1.0, 1.0, 1.0] if rule == "sum" else [d * (1 - d) ** 2, d * (1 - d), d]
    theta4 = _mlp_params(13)
    alpha = 2.5
    want = 0.0
    for path in (("l1", "w"), ("l1", "b"), ("l2", "w"), ("l2", "b")):
      f_tot = sum(
        wj * np.asarray(f[path[0]][path[1]], np.float64)
        for wj, f in zip(w, fishers, strict=True)
      )
      diff = np.asarray(theta4[path[0]][path[1]], np.float64) - np.asarray(
        thetas[2][path[0]][path[1]], np.float64
      )
      want += 0.5 * alpha * np.sum(f_tot * diff**2)
    got = loss_lib.wpl_penalty(theta4, state.anchor, state.fisher, alpha=alpha)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)

  def test_sum_rule_is_clean_only(self):
    state = fisher.init_state({"w": np.zeros(3, np.float32)})
    with self.assertRaisesRegex(ValueError, "rule='sum'.*mode='clean'"):
      fisher.update_fisher(state, state.fisher, mode="reference", rule="sum")
    with self.assertRaisesRegex(ValueError, "unknown accumulation rule"):
      fisher.update_fisher(state, state.fisher, rule="max")

  def test_update_no_retrace(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(s, g, alpha, m):
      return fisher.update_fisher(
        s, g, mode="reference", clip=10.0, alpha=alpha, mask=m
      )

    s = fisher.init_state({"w": np.zeros((4, 2, 2), np.float32)})
    for i in range(3):
      m = {"w": (np.arange(4) % (i + 2) == 0)[:, None, None]}
      s = f(s, {"w": np.full((4, 2, 2), float(i), np.float32)}, 60.0 - i, m)


if __name__ == "__main__":
  absltest.main()
