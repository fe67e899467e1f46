"""WPL added to a Flax NNX model: digits 0-4, then digits 5-9.

Model A (digits 0-4) and model B (digits 5-9) share a two-layer ReLU trunk
(`Net.trunk`) and have their own linear heads. Training B after A moves the
trunk and A forgets. WPL enters through the optax transform `loss.add_wpl`,
fed the anchor (A's weights) and the Fisher of A as extra arguments of
`nnx.Optimizer.update`. The WPL-specific lines sit between the `WPL` rules.

  python experiments/examples/nnx_digits.py [--steps=300] [--alpha=10]

Prints A's test accuracy before B, after B without WPL and after B with WPL
(and B's own test accuracy, to show what WPL costs B).
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wpl_jax import fisher, flax_taps, loss, partition
from wpl_jax.data import digits


class Net(nnx.Module):
  """A shared trunk and one linear head per task."""

  def __init__(self, rngs: nnx.Rngs, width: int = 64):
    self.trunk = nnx.Sequential(
      nnx.Linear(64, width, rngs=rngs),
      nnx.relu,
      nnx.Linear(width, width, rngs=rngs),
      nnx.relu,
    )
    self.head_a = nnx.Linear(width, 5, rngs=rngs)
    self.head_b = nnx.Linear(width, 5, rngs=rngs)

  def __call__(self, x, task: str):
    return getattr(self, f"head_{task}")(self.trunk(x))


def cross_entropy(model, batch, task):
  logits = model(batch["x"], task)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, batch["y"]
  ).mean()


def accuracy(model, batch, task):
  pred = jnp.argmax(model(batch["x"], task), -1)
  return float(jnp.mean(pred == batch["y"]))


def train(model, task, batch, tx, *, steps, **update_args):
  """`steps` full-batch steps of `tx` on the task's loss, in place."""
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def run(model, opt, update_args):
    def body(_, carry):
      model, opt = carry
      grads = nnx.grad(cross_entropy)(model, batch, task)
      opt.update(model, grads, **update_args)
      return model, opt

    nnx.fori_loop(0, steps, body, (model, opt))

  run(model, opt, update_args)
  return model


def split_tasks():
  """Task A: digits 0-4 (labels 0-4); task B: digits 5-9 (labels 0-4)."""
  d = digits.load_digits()
  tasks = []
  for lo in (0, 5):
    tr = (d.y_train >= lo) & (d.y_train < lo + 5)
    te = (d.y_test >= lo) & (d.y_test < lo + 5)
    tasks.append(
      (
        {"x": d.x_train[tr], "y": d.y_train[tr] - lo},
        {"x": d.x_test[te], "y": d.y_test[te] - lo},
      )
    )
  return tasks


def main(steps=300, alpha=10.0, lr=1e-2, seed=0):
  """Trains A, then B twice (without and with WPL); returns the accuracies."""
  (train_a, test_a), (train_b, test_b) = split_tasks()
  model_a = train(
    Net(nnx.Rngs(seed)), "a", train_a, optax.adam(lr), steps=steps
  )

  # ---- WPL ---------------------------------------------------------------
  graphdef, params_a = nnx.split(model_a, nnx.Param)

  @flax_taps.tapped  # the exact per-example Fisher in one backward pass
  def loss_a(params, batch):
    return cross_entropy(nnx.merge(graphdef, params), batch, "a")

  f = jax.jit(lambda p: fisher.fisher_diagonal(loss_a, p, train_a))(params_a)
  # A fitted A's Fisher is tiny (about 1e-9 here): scale it to mean 1 over the
  # shared entries, so that alpha is the strength of an average pull.
  shared = jax.tree.leaves(f["trunk"])
  scale = sum(v.sum() for v in shared) / sum(v.size for v in shared)
  f = jax.tree.map(lambda v: v / scale, f)
  # The shared leaves; a callable, as nnx.Optimizer hands add_wpl plain arrays.
  mask = lambda p: partition.make_mask(p, r"^trunk/")
  tx_wpl = optax.chain(loss.add_wpl(alpha, mask=mask), optax.adam(lr))
  wpl_args = {"wpl_anchor": params_a, "wpl_fisher": f}
  # ------------------------------------------------------------------------

  plain = train(nnx.clone(model_a), "b", train_b, optax.adam(lr), steps=steps)
  wpl = train(nnx.clone(model_a), "b", train_b, tx_wpl, steps=steps, **wpl_args)
  acc = {
    "before": accuracy(model_a, test_a, "a"),
    "after_plain": accuracy(plain, test_a, "a"),
    "after_wpl": accuracy(wpl, test_a, "a"),
    "b_plain": accuracy(plain, test_b, "b"),
    "b_wpl": accuracy(wpl, test_b, "b"),
  }
  print(f"A before B:            {acc['before']:.3f}")
  print(f"A after B without WPL: {acc['after_plain']:.3f}", end="")
  print(f"  (B: {acc['b_plain']:.3f})")
  print(f"A after B with WPL:    {acc['after_wpl']:.3f}", end="")
  print(f"  (B: {acc['b_wpl']:.3f})")
  return acc


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--alpha", type=float, default=10.0)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  main(steps=args.steps, alpha=args.alpha, lr=args.lr, seed=args.seed)
