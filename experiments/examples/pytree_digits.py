"""WPL added to a plain-function pytree model: digits 0-4, then digits 5-9.

Model A (digits 0-4) and model B (digits 5-9) share a two-layer ReLU trunk
and have their own linear heads; the parameters are one plain dict of
arrays. Training B after A moves the shared trunk and A forgets. WPL adds
`alpha/2 Σ F (θ - θ_A)²` over the trunk to B's loss (`loss.wpl_penalty`),
F being the diagonal Fisher of A on A's training data. The WPL-specific
lines sit between the `WPL` rules.

  python experiments/examples/pytree_digits.py [--steps=300] [--alpha=10]

Prints A's test accuracy before B, after B without WPL and after B with WPL
(and B's own test accuracy, to show what WPL costs B).
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from wpl_jax import fisher, loss, partition
from wpl_jax.data import digits


def init_params(key, width=64):
  """A plain dict: `trunk` (shared by A and B), `head_a`, `head_b`."""
  keys = jax.random.split(key, 4)

  def dense(k, n, m):
    return {"w": jax.random.normal(k, (n, m)) / jnp.sqrt(n), "b": jnp.zeros(m)}

  return {
    "trunk": [dense(keys[0], 64, width), dense(keys[1], width, width)],
    "head_a": dense(keys[2], width, 5),
    "head_b": dense(keys[3], width, 5),
  }


def logits(params, x, task):
  for layer in params["trunk"]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"][None])
  head = params[f"head_{task}"]
  return x @ head["w"] + head["b"][None]


def cross_entropy(params, batch, task):
  return optax.softmax_cross_entropy_with_integer_labels(
    logits(params, batch["x"], task), batch["y"]
  ).mean()


def accuracy(params, batch, task):
  pred = jnp.argmax(logits(params, batch["x"], task), -1)
  return float(jnp.mean(pred == batch["y"]))


def train(params, loss_fn, batch, *, steps, lr):
  """`steps` full-batch Adam steps on `loss_fn(params, batch)`, one jit."""
  tx = optax.adam(lr)

  def body(_, carry):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  run = jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p))))
  return run(params)[0]


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
  loss_a = lambda p, b: cross_entropy(p, b, "a")
  loss_b = lambda p, b: cross_entropy(p, b, "b")
  params = init_params(jax.random.key(seed))
  params_a = train(params, loss_a, train_a, steps=steps, lr=lr)

  # ---- WPL ---------------------------------------------------------------
  f = jax.jit(lambda p: fisher.fisher_diagonal(loss_a, p, train_a))(params_a)
  # A fitted A's Fisher is tiny (about 5e-10 here): scale it to mean 1 over the
  # shared entries, so that alpha is the strength of an average pull.
  shared = jax.tree.leaves(f["trunk"])
  scale = sum(v.sum() for v in shared) / sum(v.size for v in shared)
  f = jax.tree.map(lambda v: v / scale, f)
  mask = partition.make_mask(params_a, r"^trunk/")  # the shared leaves

  def loss_b_wpl(params, batch):
    penalty = loss.wpl_penalty(params, params_a, f, alpha=alpha, mask=mask)
    return loss_b(params, batch) + penalty

  # ------------------------------------------------------------------------

  plain = train(params_a, loss_b, train_b, steps=steps, lr=lr)
  wpl = train(params_a, loss_b_wpl, train_b, steps=steps, lr=lr)
  acc = {
    "before": accuracy(params_a, test_a, "a"),
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
