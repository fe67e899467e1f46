"""Group 1: diagonal Fisher estimators against one plain batch gradient."""

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import Case, measure
from wpl_jax import fisher, fisher_fast
from wpl_jax.enas import edge_fisher, losses, search_space, supernet, wpl
from wpl_jax.two_models import model as two_models

# (width, batch) of the two-model MLP 784-width×4-10.
MLP_SIZES = {"small": (100, 32), "large": (400, 128)}
# (hidden, nodes) of the ENAS child; batch 64 × 35 steps, vocabulary 10000.
# "small" is the `cpu` search of experiments/enas_ptb.py.
ENAS_SIZES = {"small": (64, 6), "large": (128, 12)}
ENAS_BATCH, ENAS_BPTT, VOCAB = 64, 35, 10000
# Sequences per chunk of the per-example estimators (enas_ptb's default).
ENAS_CHUNK = 16

BASELINE = "jax.grad (batch)"


# -- the two-model MLP --------------------------------------------------------


def mlp_setup(width: int, batch: int, *, seed: int = 0):
  """Model A of the two-model study (784-width×4-10) and one batch."""
  params = two_models.init_a(
    jax.random.key(seed), in_dim=784, width=width, num_classes=10, depth=4
  )
  kx, ky = jax.random.split(jax.random.key(seed + 1))
  x = jax.random.normal(kx, (batch, 784), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, 10)
  return params, (x, y)


def mlp_logits(params, x, tap=fisher_fast.PLAIN):
  """`two_models.forward_a` on A's tree, with its matmuls tapped."""
  h = x
  for i in range(len(params) - 1):
    layer = params[f"a_{i}"]
    h = jax.nn.relu(tap.dense(f"a_{i}", h, layer["kernel"], layer["bias"]))
  head = params["a_head"]
  return tap.dense("a_head", h, head["kernel"], head["bias"])


@fisher_fast.tapped
def mlp_loss(params, batch, tap):
  """Mean cross-entropy of A (`two_models.loss_a`), tap-aware."""
  x, y = batch
  logits = mlp_logits(params, x, tap)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def mlp_cases(params, batch) -> list[Case]:
  key = jax.random.key(7)
  logits_fn = lambda p, b: mlp_logits(p, b[0])
  return [
    Case(BASELINE, lambda p, b: jax.grad(mlp_loss)(p, b), (params, batch)),
    Case(
      "per_example vmap(grad)",
      lambda p, b: fisher.fisher_diagonal(mlp_loss, p, b, method="vmap"),
      (params, batch),
    ),
    Case(
      "per_example taps (fisher_fast)",
      lambda p, b: fisher.fisher_diagonal(mlp_loss, p, b),
      (params, batch),
    ),
    Case(
      "batch_grad_squared",
      lambda p, b: fisher.fisher_diagonal(
        mlp_loss, p, b, estimator="batch_grad_squared"
      ),
      (params, batch),
    ),
    Case(
      "sampled vmap(grad)",
      lambda p, b, k: fisher.fisher_diagonal(
        None, p, b, estimator="sampled", key=k, logits_fn=logits_fn
      ),
      (params, batch, key),
    ),
  ]


# -- the ENAS child -----------------------------------------------------------


def enas_setup(hidden: int, nodes: int, *, seed: int = 0):
  """A shared RNN, its variables, one architecture and one batch."""
  model = supernet.SharedRNN(
    vocab_size=VOCAB, hidden_size=hidden, num_nodes=nodes
  )
  k_init, k_tok, k_arch = jax.random.split(jax.random.key(seed), 3)
  variables = supernet.init_variables(model, key=k_init)
  tokens = jax.random.randint(k_tok, (ENAS_BATCH, ENAS_BPTT + 1), 0, VOCAB)
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "hidden": jnp.zeros((ENAS_BATCH, hidden), jnp.float32),
  }
  arch = search_space.sample_uniform(k_arch, nodes)
  return model, variables, arch, batch


def enas_losses(model, variables):
  """Eval-mode `(loss_fn, logits_fn)` of `params` on an example-major batch."""

  def logits_fn(params, b, arch):
    v = {"params": params, "batch_stats": variables["batch_stats"]}
    logits, _ = model.apply(v, b["inputs"].T, b["hidden"], arch)
    return jnp.swapaxes(logits, 0, 1)

  def loss_fn(params, b, arch):
    return losses.cross_entropy(logits_fn(params, b, arch), b["targets"])

  return loss_fn, logits_fn


def edge_grad(loss_fn, params, arch, batch):
  """jax.grad of the mean loss w.r.t. the arch's gathered edge matrices."""
  ids = search_space.edge_ids(arch)
  full = wpl.edge_params(params)

  def on_sub(sub):
    edges = {k: full[k].at[ids].set(sub[k]) for k in full}
    return loss_fn(wpl.with_edges(params, edges), batch, arch)

  return jax.grad(on_sub)({k: v[ids] for k, v in full.items()})


def enas_cases(model, variables, arch, batch) -> list[Case]:
  loss_fn, logits_fn = enas_losses(model, variables)
  args = (variables, batch, arch)
  key = jax.random.key(7)

  def estimate(estimator, **kw):
    def fn(v, b, a, k=None):
      return wpl.estimate_fisher(
        lambda p, c: loss_fn(p, c, a),
        v["params"],
        a,
        b,
        estimator=estimator,
        key=k,
        logits_fn=lambda p, c: logits_fn(p, c, a),
        **kw,
      )

    return fn

  return [
    Case(
      BASELINE,
      lambda v, b, a: edge_grad(loss_fn, v["params"], a, b),
      args,
    ),
    Case(
      "jax.grad (batch, all params)",
      lambda v, b, a: jax.grad(loss_fn)(v["params"], b, a),
      args,
    ),
    Case(
      f"per_example vmap(grad) chunk {ENAS_CHUNK}",
      estimate("per_example", chunk_size=ENAS_CHUNK),
      args,
    ),
    Case(
      f"per_example taps (fisher_fast) chunk {ENAS_CHUNK}",
      lambda v, b, a: edge_fisher.enas_edge_fisher(
        model, v, a, b, chunk_size=ENAS_CHUNK
      ),
      args,
    ),
    Case(
      "per_example taps (fisher_fast) unchunked",
      lambda v, b, a: edge_fisher.enas_edge_fisher(model, v, a, b),
      args,
    ),
    Case("batch_grad_squared", estimate("batch_grad_squared"), args),
    Case(
      f"sampled vmap(grad) chunk {ENAS_CHUNK}",
      estimate("sampled", chunk_size=ENAS_CHUNK),
      args + (key,),
    ),
  ]


def run(sizes: list[str], reps: int) -> list:
  rows = []
  for size in sizes:
    params, batch = mlp_setup(*MLP_SIZES[size])
    width, b = MLP_SIZES[size]
    label = f"{size}: 784-{width}×4-10, B={b}"
    cases = mlp_cases(params, batch)
    rows += measure("Fisher, MLP", label, cases, reps=reps, baseline=BASELINE)
  for size in sizes:
    hidden, nodes = ENAS_SIZES[size]
    model, variables, arch, batch = enas_setup(hidden, nodes)
    label = (
      f"{size}: H={hidden}, N={nodes}, B={ENAS_BATCH}×T={ENAS_BPTT}, V={VOCAB}"
    )
    rows += measure(
      "Fisher, ENAS child",
      label,
      enas_cases(model, variables, arch, batch),
      reps=reps,
      baseline=BASELINE,
    )
  return rows
