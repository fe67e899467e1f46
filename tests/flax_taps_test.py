"""Convolution taps and the Flax routing (`wpl_jax.flax_taps`).

Every Fisher here is compared with `vmap(grad)` of the *plain* loss (JAX's
autodiff of `lax.conv_general_dilated` / `dot_general`, one example at a
time), which shares no code with the tapped path.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wpl_jax import fisher, fisher_fast, flax_taps

PLAIN = fisher_fast.PLAIN


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _reference(loss, params, batch):
  """Per-example Fisher by vmap(grad) of the plain loss."""
  plain = lambda p, b: loss(p, b)
  return fisher.fisher_diagonal(
    plain,
    params,
    batch,
    estimator="per_example",
    method="vmap",
    reduction=loss.reduction,
  )


def _close(fast, slow, rtol=2e-5):
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(b.max()))


def _images(n=5, hw=(9, 8), c=2, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return {
    "x": jax.random.normal(kx, (n, *hw, c)),
    "y": jax.random.randint(ky, (n,), 0, 3),
  }


# -- tap.conv -----------------------------------------------------------------

CONV_SETTINGS = [
  {},
  {"strides": (2, 1), "padding": "VALID"},
  {"padding": ((1, 0), (2, 1)), "kernel_dilation": (2, 1)},
  {"padding": 1, "input_dilation": 2, "strides": 2},
  {"padding": "SAME_LOWER", "strides": (1, 3)},
]


@pytest.mark.parametrize(
  "settings, reduction",
  [(CONV_SETTINGS[0], "mean"), (CONV_SETTINGS[1], "sum")]
  + [pytest.param(s, "mean", marks=pytest.mark.slow) for s in CONV_SETTINGS[2:]]
  + [(CONV_SETTINGS[2], "none")],
)
def test_conv_tap_equals_vmap_grad(settings, reduction):
  batch = _images()
  k = jax.random.split(jax.random.key(1), 3)
  params = {
    "k": jax.random.normal(k[0], (3, 2, 2, 4)) * 0.4,
    "b": jax.random.normal(k[1], (4,)) * 0.1,
  }
  feat = lambda p, x, tap: jax.nn.relu(
    tap.conv("c", x, p["k"], p["b"], **settings)
  )
  width = int(np.prod(feat(params, batch["x"], PLAIN).shape[1:]))
  params["w"] = jax.random.normal(k[2], (width, 3)) * 0.2
  reduce = {"mean": jnp.mean, "sum": jnp.sum, "none": lambda v: v}[reduction]

  @fisher_fast.tapped(reduction=reduction)
  def loss(p, b, tap=PLAIN):
    h = feat(p, b["x"], tap).reshape(b["x"].shape[0], -1)
    return reduce(_xent(tap.dense("d", h, p["w"]), b["y"]))

  assert set(jax.tree.leaves(fisher_fast.plan(loss, params, batch))) == {"tap"}
  _close(
    loss.per_example_fisher(params, batch), _reference(loss, params, batch)
  )


def test_conv_1d_in_scan_and_shared_kernel():
  """A 1-D kernel used at two sites and at every step of a tap.scan."""
  kx, kw = jax.random.split(jax.random.key(2))
  batch = {"x": jax.random.normal(kx, (4, 3, 7, 2)), "y": jnp.arange(4) % 3}
  params = {"k": jax.random.normal(kw, (3, 2, 2)) * 0.5}

  @fisher_fast.tapped
  def loss(p, b, tap=PLAIN):
    def step(acc, x_t):  # x_t [B, 7, 2]
      y = tap.conv("c", x_t, p["k"], padding="SAME")
      y = tap.conv("again", jnp.tanh(y), p["k"], padding="VALID")
      return acc + jnp.sum(y, axis=(1, 2)), None

    acc, _ = tap.scan("t", step, jnp.zeros(4), jnp.swapaxes(b["x"], 0, 1))
    logits = jnp.stack([acc, -acc, 0 * acc], axis=1)
    return jnp.mean(_xent(logits, b["y"]))

  assert fisher_fast.plan(loss, params, batch) == {"k": "tap"}
  _close(
    loss.per_example_fisher(params, batch), _reference(loss, params, batch)
  )


def test_conv_chunked_equals_unchunked():
  batch = _images(n=7)
  params = {"k": jax.random.normal(jax.random.key(3), (3, 3, 2, 3))}

  @fisher_fast.tapped
  def loss(p, b, tap=PLAIN):
    y = tap.conv("c", b["x"], p["k"])
    return jnp.mean(_xent(jnp.mean(y, axis=(1, 2)), b["y"]))

  _close(
    loss.per_example_fisher(params, batch, chunk_size=3),
    loss.per_example_fisher(params, batch),
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"padding": "CIRCULAR"}, "padding 'CIRCULAR'"),
    ({"strides": (1, 2, 3)}, "strides"),
    ({"padding": ((1, 1),)}, "pairs"),
  ],
)
def test_conv_bad_settings_name_the_problem(kwargs, message):
  x, w = jnp.ones((2, 5, 5, 1)), jnp.ones((3, 3, 1, 2))
  with pytest.raises(ValueError, match=message):
    PLAIN.conv("c", x, w, **kwargs)


def test_conv_kernel_must_fit_inputs():
  with pytest.raises(ValueError, match="channels last"):
    PLAIN.conv("c", jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 1, 2)))


# -- Flax models, unchanged ---------------------------------------------------


class LinenNet(nn.Module):
  odd: bool = False  # add layers the router must leave alone

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=(1, 2))(x))
    x = nn.relu(nn.Conv(4, (2, 2), padding="VALID", kernel_dilation=2)(x))
    if self.odd:
      x = nn.Conv(4, (3, 3), padding="CIRCULAR")(x)
      x = nn.Conv(4, (1, 1), feature_group_count=2)(x)
      x = nn.LayerNorm()(x)
    x = x.reshape(x.shape[0], -1)
    x = jnp.tanh(nn.Dense(6)(x))
    if self.odd:
      x = nn.Dense(6, precision=jax.lax.Precision.HIGHEST)(x)
    return nn.Dense(3)(x)


def _linen_loss(model):
  @flax_taps.tapped
  def loss(params, batch):
    return jnp.mean(
      _xent(model.apply({"params": params}, batch["x"]), batch["y"])
    )

  return loss


def test_linen_model_fisher_is_exact(odd=True):
  batch = _images()
  model = LinenNet(odd=odd)
  params = model.init(jax.random.key(0), batch["x"])["params"]
  loss = _linen_loss(model)
  plan = fisher_fast.plan(loss, params, batch)
  assert plan["Conv_0"] == {"kernel": "tap", "bias": "tap"}
  assert plan["Dense_0"] == {"kernel": "tap", "bias": "tap"}
  if odd:  # circular padding, feature groups, precision: the fallback
    assert plan["Conv_2"]["kernel"] == plan["Conv_3"]["kernel"] == "vmap"
    assert plan["Dense_1"]["kernel"] == "vmap"
    assert plan["LayerNorm_0"]["scale"] == "vmap"
  fast = fisher.fisher_diagonal(loss, params, batch)
  _close(fast, _reference(loss, params, batch))


def test_linen_shared_dense_called_twice():
  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      d = nn.Dense(x.shape[-1])
      return jnp.sum(d(jnp.tanh(d(x))), axis=-1)

  batch = {"x": jax.random.normal(jax.random.key(4), (6, 5))}
  model = Twice()
  params = model.init(jax.random.key(0), batch["x"])["params"]

  @flax_taps.tapped(reduction="none")
  def loss(p, b):
    return jnp.square(model.apply({"params": p}, b["x"]))

  assert set(jax.tree.leaves(fisher_fast.plan(loss, params, batch))) == {"tap"}
  _close(
    fisher.fisher_diagonal(loss, params, batch), _reference(loss, params, batch)
  )


def test_linen_batchnorm_eval_mode():
  """BatchNorm in eval mode: batch_stats are constants, params exact."""

  class BN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(3, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      return nn.Dense(3)(jnp.mean(nn.relu(x), axis=(1, 2)))

  batch = _images()
  model = BN()
  variables = model.init(jax.random.key(0), batch["x"])
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])

  @flax_taps.tapped
  def loss(p, b):
    logits = model.apply({"params": p, "batch_stats": stats}, b["x"])
    return jnp.mean(_xent(logits, b["y"]))

  params = variables["params"]
  assert fisher_fast.plan(loss, params, batch)["Conv_0"]["kernel"] == "tap"
  _close(
    fisher.fisher_diagonal(loss, params, batch), _reference(loss, params, batch)
  )


class NnxNet(nnx.Module):
  def __init__(self, rngs, odd=False):
    self.c1 = nnx.Conv(2, 4, (3, 3), strides=(1, 2), rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (2, 2), padding=((1, 0), (0, 1)), rngs=rngs)
    self.odd = (
      nnx.Conv(4, 4, (1, 1), feature_group_count=2, rngs=rngs) if odd else None
    )
    self.d1 = nnx.Linear(9 * 4 * 4, 6, rngs=rngs)
    self.d2 = nnx.Linear(6, 3, use_bias=False, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.c2(nnx.relu(self.c1(x))))
    if self.odd is not None:
      x = self.odd(x)
    return self.d2(jnp.tanh(self.d1(x.reshape(x.shape[0], -1))))


def test_nnx_model_fisher_is_exact(odd=True):
  batch = _images()
  graphdef, params, rest = nnx.split(NnxNet(nnx.Rngs(0), odd), nnx.Param, ...)

  @flax_taps.tapped
  def loss(p, b):
    return jnp.mean(_xent(nnx.merge(graphdef, p, rest)(b["x"]), b["y"]))

  plan = nnx.to_pure_dict(fisher_fast.plan(loss, params, batch))
  assert plan["c1"] == {"kernel": "tap", "bias": "tap"}
  assert plan["d2"] == {"kernel": "tap"}
  if odd:
    assert plan["odd"]["kernel"] == "vmap"
  _close(
    fisher.fisher_diagonal(loss, params, batch), _reference(loss, params, batch)
  )


def test_routing_computes_what_flax_computes():
  """Through a non-plain tap the routed layers give Flax's own outputs."""
  batch = _images()
  lin = LinenNet(odd=True)
  lp = lin.init(jax.random.key(0), batch["x"])
  graphdef, params, rest = nnx.split(NnxNet(nnx.Rngs(0), True), nnx.Param, ...)
  run_nnx = lambda: nnx.merge(graphdef, params, rest)(batch["x"])
  want = (lin.apply(lp, batch["x"]), run_nnx())
  with flax_taps.route(fisher_fast.Tap()):  # a tap, but not PLAIN
    got = (lin.apply(lp, batch["x"]), run_nnx())
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_routing_is_undone_after_an_error():
  original = nnx.Linear.__call__
  with pytest.raises(RuntimeError), flax_taps.route(fisher_fast.Tap()):
    assert nnx.Linear.__call__ is not original
    raise RuntimeError("boom")
  assert nnx.Linear.__call__ is original


def test_plain_call_is_the_plain_loss():
  batch = _images()
  model = LinenNet()
  params = model.init(jax.random.key(0), batch["x"])["params"]
  loss = _linen_loss(model)
  want = jnp.mean(
    _xent(model.apply({"params": params}, batch["x"]), batch["y"])
  )
  assert isinstance(loss, fisher_fast.TappedLoss)
  np.testing.assert_allclose(loss(params, batch), want, rtol=1e-6)
  assert fisher_fast.verify(loss, params, batch) < 1e-4
