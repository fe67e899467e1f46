"""Tests for wpl_jax.loss against NumPy formulas and plain SGD."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from flax import nnx
from jax.test_util import check_grads

from wpl_jax import loss, partition


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {
    "dense_0": {
      "kernel": scale * rng.normal(size=(3, 4)).astype(np.float32),
      "bias": scale * rng.normal(size=(4,)).astype(np.float32),
    },
    "head": (rng.normal(size=(4, 2)).astype(np.float32),),
  }


def _np_penalty(params, anchor, fisher, alpha, mask=None):
  p, a, f = (jax.tree.leaves(t) for t in (params, anchor, fisher))
  m = jax.tree.leaves(mask) if mask is not None else [True] * len(p)
  total = 0.0
  for x, y, z, k in zip(p, a, f, m, strict=True):
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    total += np.sum(np.broadcast_to(k, x.shape) * z * (x - y) ** 2)
  return 0.5 * alpha * total


@flax.struct.dataclass
class _DataclassParams:
  w: jax.Array
  b: jax.Array


class PenaltyTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.params = _tree(0)
    self.anchor = _tree(1)
    self.fisher = jax.tree.map(np.abs, _tree(2))
    self.mask = partition.make_mask(self.params, r"^dense_0/")

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    fn = self.variant(lambda p, a, f: loss.wpl_penalty(p, a, f, alpha=3.0))
    got = fn(self.params, self.anchor, self.fisher)
    want = _np_penalty(self.params, self.anchor, self.fisher, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_matches_numpy_masked(self):
    got = loss.wpl_penalty(
      self.params, self.anchor, self.fisher, alpha=0.5, mask=self.mask
    )
    want = _np_penalty(self.params, self.anchor, self.fisher, 0.5, self.mask)
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_gradient(self):
    f = lambda p: loss.wpl_penalty(p, self.anchor, self.fisher, alpha=2.0)
    params = jax.tree.map(lambda x: x.astype(np.float64), self.params)
    with jax.enable_x64(True):
      check_grads(f, (params,), order=2, modes=("rev",))

  def test_zero_fisher_gives_zero(self):
    zero = jax.tree.map(np.zeros_like, self.fisher)
    got = loss.wpl_penalty(self.params, self.anchor, zero, alpha=10.0)
    self.assertEqual(float(got), 0.0)

  def test_all_true_mask_equals_no_mask(self):
    # A traced all-True array mask takes the `where` branch, not the static
    # `mask=None` one; both must give the NumPy value.
    ones = jax.tree.map(lambda v: np.ones(np.shape(v), bool), self.params)
    fn = jax.jit(
      lambda m: loss.wpl_penalty(
        self.params, self.anchor, self.fisher, alpha=1.0, mask=m
      )
    )
    want = _np_penalty(self.params, self.anchor, self.fisher, 1.0)
    np.testing.assert_allclose(fn(ones), want, rtol=1e-6)
    np.testing.assert_allclose(
      loss.wpl_penalty(self.params, self.anchor, self.fisher, alpha=1.0),
      want,
      rtol=1e-6,
    )

  @parameterized.parameters(True, False)
  def test_masked_leaves_get_zero_gradient(self, traced_mask):
    fisher = dict(self.fisher)
    # A non-finite Fisher in an unshared leaf must not leak into gradients.
    fisher["head"] = (np.full((4, 2), np.inf, np.float32),)
    mask = self.mask
    if traced_mask:
      mask = jax.tree.map(jnp.asarray, mask)
    g = jax.grad(
      lambda p: loss.wpl_penalty(p, self.anchor, fisher, alpha=1.0, mask=mask)
    )(self.params)
    np.testing.assert_array_equal(g["head"][0], 0.0)
    want = self.fisher["dense_0"]["kernel"] * (
      self.params["dense_0"]["kernel"] - self.anchor["dense_0"]["kernel"]
    )
    np.testing.assert_allclose(g["dense_0"]["kernel"], want, rtol=1e-6)

  def test_broadcast_mask_selects_matrices(self):
    rng = np.random.default_rng(0)
    w = {"edge_h": rng.normal(size=(5, 3, 3)).astype(np.float32)}
    a = {"edge_h": np.zeros((5, 3, 3), np.float32)}
    f = {"edge_h": np.ones((5, 3, 3), np.float32)}
    sel = np.array([True, False, True, False, False])
    got = loss.wpl_penalty(
      w, a, f, alpha=2.0, mask={"edge_h": sel[:, None, None]}
    )
    np.testing.assert_allclose(got, np.sum(w["edge_h"][sel] ** 2), rtol=1e-6)

  def test_shape_mismatch_names_path(self):
    params = {"dense_1": {"kernel": np.zeros((3, 4))}}
    anchor = {"dense_1": {"kernel": np.zeros((4, 3))}}
    with self.assertRaisesWithLiteralMatch(
      ValueError, "params['dense_1']['kernel']: shape (3, 4) vs anchor (4, 3)"
    ):
      loss.wpl_penalty(params, anchor, params, alpha=1.0)

  def test_structure_mismatch_names_path(self):
    params = {"a": np.zeros(2), "b": np.zeros(2)}
    fisher = {"a": np.zeros(2)}
    with self.assertRaisesRegex(
      ValueError, r"params\['b'\]: missing in fisher"
    ):
      jax.jit(lambda p, f: loss.wpl_penalty(p, p, f, alpha=1.0))(params, fisher)

  def test_mask_shape_mismatch_raises(self):
    params = {"w": np.zeros((5, 3, 3))}
    with self.assertRaisesRegex(ValueError, r"params\['w'\].*vs mask \(4,\)"):
      loss.wpl_penalty(
        params, params, params, alpha=1.0, mask={"w": np.ones(4, bool)}
      )

  def test_dataclass_tuple_and_nnx_state(self):
    dc = _DataclassParams(w=jnp.arange(3.0), b=jnp.ones(2))
    got = loss.wpl_penalty(
      dc,
      jax.tree.map(jnp.zeros_like, dc),
      jax.tree.map(jnp.ones_like, dc),
      alpha=2.0,
    )
    np.testing.assert_allclose(got, 0 + 1 + 4 + 1 + 1)

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    zeros = jax.tree.map(jnp.zeros_like, state)
    ones = jax.tree.map(jnp.ones_like, state)
    got = loss.wpl_penalty(state, zeros, ones, alpha=1.0)
    want = 0.5 * sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(state))
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_l2_penalty(self):
    got = loss.l2_penalty(self.params, weight=0.1, mask=self.mask)
    want = 0.05 * sum(
      np.sum(x.astype(np.float64) ** 2)
      for x in jax.tree.leaves(self.params["dense_0"])
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_no_retrace(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, a, fi, alpha):
      return loss.wpl_penalty(p, a, fi, alpha=alpha, mask=self.mask)

    for seed in range(3):
      f(_tree(seed), _tree(seed + 1), self.fisher, 1.0 + seed)


def _mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["shared"]["w"])
  logits = h @ params["head"]["w"]
  return -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)
  )


class AddWPLTest(parameterized.TestCase):
  def test_nnx_optimizer_with_a_state_mask(self):
    """A mask, anchor and Fisher from `nnx.state` (paths end in `.value`)
    inside `nnx.Optimizer`, which hands the transform plain arrays: the
    same update as add_wpl on plain dicts."""

    class Model(nnx.Module):
      def __init__(self, rngs):
        self.trunk = nnx.Linear(3, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

      def __call__(self, x):
        return self.head(jax.nn.relu(self.trunk(x)))

    model = Model(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    mask = partition.make_mask(state, r"^trunk/")
    anchor = jax.tree.map(lambda v: v + 1.0, state)
    fisher = jax.tree.map(lambda v: jnp.full_like(v, 2.0), state)
    x = jnp.ones((5, 3))
    loss_fn = lambda m: jnp.mean(m(x))
    grads = nnx.grad(loss_fn)(model)

    pure = lambda t: nnx.to_pure_dict(t)
    tx = optax.chain(loss.add_wpl(0.5, mask=pure(mask)), optax.sgd(0.1))
    g, params = pure(grads), pure(state)
    updates, _ = tx.update(
      g,
      tx.init(params),
      params,
      wpl_anchor=pure(anchor),
      wpl_fisher=pure(fisher),
    )
    want = optax.apply_updates(params, updates)

    tx = optax.chain(loss.add_wpl(0.5, mask=mask), optax.sgd(0.1))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    opt.update(model, grads, wpl_anchor=anchor, wpl_fisher=fisher)
    got = pure(nnx.state(model, nnx.Param))
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    # The pull moved the trunk (θ̂ = θ + 1), not the head.
    np.testing.assert_allclose(
      got["trunk"]["kernel"] - params["trunk"]["kernel"],
      -0.1 * (g["trunk"]["kernel"] - 0.5 * 2.0),
      rtol=1e-5,
    )

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.params = {
      "shared": {"w": rng.normal(size=(4, 5)).astype(np.float32)},
      "head": {"w": rng.normal(size=(5, 3)).astype(np.float32)},
    }
    self.anchor = jax.tree.map(lambda x: x + 0.3, self.params)
    self.fisher = jax.tree.map(
      lambda x: np.abs(rng.normal(size=x.shape)).astype(np.float32),
      self.params,
    )
    self.mask = partition.make_mask(self.params, "^shared/")
    self.x = rng.normal(size=(8, 4)).astype(np.float32)
    self.y = rng.integers(0, 3, size=(8,))

  @parameterized.parameters(
    dict(alpha=2.0, decay=0.0),
    dict(alpha=0.7, decay=1e-3),
    dict(alpha=optax.linear_schedule(2.0, 0.5, 4), decay=0.0),
  )
  def test_chain_equals_sgd_on_penalized_loss(self, alpha, decay):
    lr, steps = 0.1, 5
    tx = optax.chain(
      loss.add_wpl(alpha, mask=self.mask),
      optax.add_decayed_weights(decay),
      optax.sgd(lr),
    )
    opt_state = tx.init(self.params)

    @jax.jit
    def step(p, s):
      g = jax.grad(_mlp_loss)(p, self.x, self.y)
      u, s = tx.update(g, s, p, wpl_anchor=self.anchor, wpl_fisher=self.fisher)
      return optax.apply_updates(p, u), s

    p = self.params
    for _ in range(steps):
      p, opt_state = step(p, opt_state)

    # Independent path: plain gradient descent on the penalized objective.
    q = self.params
    for t in range(steps):
      a = alpha(t) if callable(alpha) else alpha
      obj = lambda q, a=a: (
        _mlp_loss(q, self.x, self.y)
        + loss.wpl_penalty(q, self.anchor, self.fisher, alpha=a, mask=self.mask)
        + loss.l2_penalty(q, weight=decay)
      )
      q = jax.tree.map(lambda w, g: w - lr * g, q, jax.grad(obj)(q))
    chex.assert_trees_all_close(p, q, rtol=1e-5, atol=1e-6)

  def test_per_step_mask_overrides(self):
    tx = loss.add_wpl(1.0, mask=self.mask)
    zeros = jax.tree.map(np.zeros_like, self.params)
    head_only = partition.make_mask(self.params, "^head/")
    u, _ = tx.update(
      zeros,
      tx.init(self.params),
      self.params,
      wpl_anchor=self.anchor,
      wpl_fisher=self.fisher,
      wpl_mask=head_only,
    )
    np.testing.assert_array_equal(u["shared"]["w"], 0.0)
    np.testing.assert_allclose(
      u["head"]["w"],
      self.fisher["head"]["w"]
      * (self.params["head"]["w"] - self.anchor["head"]["w"]),
      rtol=1e-6,
    )

  def test_requires_params_and_extra_args(self):
    tx = loss.add_wpl(1.0)
    state = tx.init(self.params)
    with self.assertRaisesRegex(ValueError, "requires params"):
      tx.update(
        self.params, state, None, wpl_anchor=self.anchor, wpl_fisher=self.fisher
      )
    with self.assertRaisesRegex(ValueError, "wpl_anchor"):
      tx.update(self.params, state, self.params)

  def test_no_retrace(self):
    tx = loss.add_wpl(1.0, mask=self.mask)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def upd(g, s, p, a, f):
      return tx.update(g, s, p, wpl_anchor=a, wpl_fisher=f)

    s = tx.init(self.params)
    for i in range(3):
      shift = jax.tree.map(lambda x, i=i: x + i, self.anchor)
      _, s = upd(self.params, s, self.params, shift, self.fisher)
    self.assertEqual(int(s.count), 3)


if __name__ == "__main__":
  absltest.main()
