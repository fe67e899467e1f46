"""Group flax: the exact per-example Fisher of ordinary Flax models and a GRU.

The models a user writes without the tap protocol: a Flax NNX CNN and the
same CNN in Linen (MNIST-sized, B = 256), both wrapped with
`flax_taps.tapped` (no change to the model), and a plain-pytree GRU
(H = 128, T = 35, B = 64) written with `tap.scan` / `tap.dense`. Each row
is one estimator of the per-example Fisher against one batch gradient of
the same loss, in the same run (issue 10's goal: taps ≤ 2× the gradient).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks.common import Case, measure
from wpl_jax import fisher, fisher_fast, flax_taps

BASELINE = "jax.grad (batch)"
CNN_BATCH = 256
GRU = {"hidden": 128, "steps": 35, "batch": 64, "in": 128, "classes": 10}


class NnxCNN(nnx.Module):
  """conv 32 3×3 → pool 2 → conv 64 3×3 → pool 2 → dense 256 → dense 10."""

  def __init__(self, rngs: nnx.Rngs):
    self.c1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    self.d1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
    self.d2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):  # x [B, 28, 28, 1] -> logits [B, 10]
    x = nnx.avg_pool(nnx.relu(self.c1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(nnx.relu(self.c2(x)), (2, 2), (2, 2))
    x = nnx.relu(self.d1(x.reshape(x.shape[0], -1)))
    return self.d2(x)


class LinenCNN(nn.Module):
  """The same CNN in Linen."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def _images(batch: int, seed: int = 0):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, 28, 28, 1), jnp.float32)
  return {"x": x, "y": jax.random.randint(ky, (batch,), 0, 10)}


def _xent(logits, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def nnx_setup(batch: int = CNN_BATCH):
  graphdef, params, rest = nnx.split(NnxCNN(nnx.Rngs(0)), nnx.Param, ...)

  @flax_taps.tapped
  def loss(p, b):
    return _xent(nnx.merge(graphdef, p, rest)(b["x"]), b["y"])

  return loss, params, _images(batch)


def linen_setup(batch: int = CNN_BATCH):
  model = LinenCNN()
  data = _images(batch)
  params = model.init(jax.random.key(0), data["x"][:1])["params"]

  @flax_taps.tapped
  def loss(p, b):
    return _xent(model.apply({"params": p}, b["x"]), b["y"])

  return loss, params, data


def gru_init(key, d_in: int, hidden: int, classes: int) -> dict:
  k = jax.random.split(key, 3)
  s = lambda n: 1.0 / jnp.sqrt(n)
  return {
    "wx": jax.random.normal(k[0], (d_in, 3 * hidden)) * s(d_in),
    "wh": jax.random.normal(k[1], (hidden, 3 * hidden)) * s(hidden),
    "b": jnp.zeros((3 * hidden,)),
    "head": jax.random.normal(k[2], (hidden, classes)) * s(hidden),
    "head_b": jnp.zeros((classes,)),
  }


def gru_logits(params, x, tap=fisher_fast.PLAIN):
  """A GRU over x [B, T, D] → per-step logits [B, T, classes]."""
  hidden = params["wh"].shape[0]

  def step(h, x_t):  # h [B, H], x_t [B, D]
    gx = tap.dense("x", x_t, params["wx"], params["b"])
    gh = tap.dense("h", h, params["wh"])
    r = jax.nn.sigmoid(gx[:, :hidden] + gh[:, :hidden])
    z = jax.nn.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = jnp.tanh(gx[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    h = (1 - z) * n + z * h
    return h, h

  h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
  _, hs = tap.scan("gru", step, h0, jnp.swapaxes(x, 0, 1))  # [T, B, H]
  return tap.dense("head", hs, params["head"], params["head_b"], batch_axis=1)


@fisher_fast.tapped
def gru_loss(params, batch, tap=fisher_fast.PLAIN):
  """Mean over examples of each sequence's mean per-step cross-entropy."""
  logits = gru_logits(params, batch["x"], tap)  # [T, B, C]
  return _xent(logits, batch["y"].T)


def gru_setup(g=GRU):
  kx, ky = jax.random.split(jax.random.key(1))
  params = gru_init(jax.random.key(0), g["in"], g["hidden"], g["classes"])
  batch = {
    "x": jax.random.normal(kx, (g["batch"], g["steps"], g["in"])),
    "y": jax.random.randint(ky, (g["batch"], g["steps"]), 0, g["classes"]),
  }
  return gru_loss, params, batch


def cases(loss, params, batch, chunks=(None, 64)) -> list[Case]:
  plain = lambda p, b: loss(p, b)
  rows = [
    Case(BASELINE, lambda p, b: jax.grad(plain)(p, b), (params, batch)),
    Case(
      "per_example vmap(grad) chunk 64",
      lambda p, b: fisher.fisher_diagonal(
        plain, p, b, method="vmap", chunk_size=64
      ),
      (params, batch),
    ),
  ]
  for c in chunks:
    rows.append(
      Case(
        f"per_example taps{'' if c is None else f' chunk {c}'}",
        lambda p, b, c=c: loss.per_example_fisher(p, b, chunk_size=c),
        (params, batch),
      )
    )
  return rows


def run(sizes: list[str], reps: int) -> list:
  del sizes  # one size each: the models of issue 10's goal
  rows = []
  for label, setup in (
    (f"NNX CNN, B={CNN_BATCH}", nnx_setup),
    (f"Linen CNN, B={CNN_BATCH}", linen_setup),
  ):
    rows += measure(
      "Fisher, Flax", label, cases(*setup()), reps=reps, baseline=BASELINE
    )
  label = (
    f"plain GRU, H={GRU['hidden']}, T={GRU['steps']}, B={GRU['batch']}, "
    f"D={GRU['in']}"
  )
  rows += measure(
    "Fisher, Flax", label, cases(*gru_setup()), reps=reps, baseline=BASELINE
  )
  return rows
