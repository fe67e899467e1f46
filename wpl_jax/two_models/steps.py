"""Two-model study: the functions that training A and B jits.

The optimisers, the train state and B's penalty, the losses of A and B, one
optimiser step and a scanned chunk of steps, the test accuracies of A and B,
and the diagonal Fisher of A. The caller (`two_models_train`) owns `jax.jit`
and the `jax.vmap` over seeds and runs.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from wpl_jax import fisher as fisher_lib
from wpl_jax import fisher_fast
from wpl_jax import loss as loss_lib
from wpl_jax.two_models import model as model_lib
from wpl_jax.types import Array, Params, PRNGKey

OPTIMIZERS = {
  "sgd": optax.sgd,
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
  "adam": optax.adam,
}


@flax.struct.dataclass
class TrainState:
  """Params, optimiser state and step of one run (or a stack of runs)."""

  params: Params
  opt_state: optax.OptState
  step: Array


@flax.struct.dataclass
class Penalty:
  """What B's quadratic pull needs: anchor θ̂, weights F, strength α."""

  anchor: Params
  fisher: Params
  alpha: Array


def make_optimizer(
  opt: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """optax optimiser named by `opt.name` ("sgd", "momentum", "adam")."""
  return OPTIMIZERS[opt.name](opt.lr)


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy of logits [B, C] and int labels [B]."""
  return jnp.mean(
    optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  )


@fisher_fast.tapped
def loss_a(
  params: Params, batch: tuple[Array, Array], tap=fisher_fast.PLAIN
) -> Array:
  """A's mean cross-entropy on batch (x [B, D], y [B]).

  Tap-aware, so `fisher_diagonal(loss_a, ..., estimator="per_example")`
  takes the exact one-backward path of `wpl_jax.fisher_fast`.
  """
  x, y = batch
  return cross_entropy(model_lib.forward_a(params, x, tap), y)


def loss_b(
  params: Params, batch: tuple[Array, Array], penalty: Penalty, *, mask: Params
) -> tuple[Array, dict[str, Array]]:
  """B's loss: cross-entropy + alpha/2 Σ_shared F (θ − θ̂)² (paper Eq. 5).

  `plain` is alpha = 0, `l2` is F = 1 (a uniform pull), `wpl` is F = Fisher
  of A. Only the leaves where `mask` is True (the shared layers) are pulled.
  """
  x, y = batch
  ce = cross_entropy(model_lib.forward_b(params, x), y)
  pull = loss_lib.wpl_penalty(
    params, penalty.anchor, penalty.fisher, alpha=penalty.alpha, mask=mask
  )
  return ce + pull, {"ce": ce, "penalty": pull}


def train_step(
  state: TrainState,
  batch: tuple[Array, Array],
  key: PRNGKey,
  *,
  loss_fn,
  tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, Array]]:
  """One optimiser step; jitted (and vmapped over runs) by the caller.

  Args:
    state: params, optimiser state and step of one run.
    batch: (x [B, D] float32, y [B] int32).
    key: per-step PRNG key (unused: the MLPs have no dropout).
    loss_fn: `(params, batch) -> (scalar loss, aux dict)`.
    tx: the optax optimiser.

  Returns:
    The new state and {"loss": scalar, **aux}.
  """
  del key  # The MLPs are deterministic: no dropout.
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, batch
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(
    params=params, opt_state=opt_state, step=state.step + 1
  )
  return new_state, {"loss": loss, **aux}


def train_chunk(
  state: TrainState,
  key: PRNGKey,
  x: Array,
  y: Array,
  *,
  step_fn,
  num_steps: int,
  batch_size: int,
) -> tuple[TrainState, dict[str, Array]]:
  """`num_steps` steps of one run; batches drawn uniformly with replacement."""

  def body(state, _):
    step_key = jax.random.fold_in(key, state.step)
    data_key, train_key = jax.random.split(step_key)
    idx = jax.random.randint(data_key, (batch_size,), 0, x.shape[0])
    return step_fn(state, (x[idx], y[idx]), train_key)

  state, metrics = jax.lax.scan(body, state, None, length=num_steps)
  return state, jax.tree.map(jnp.mean, metrics)


def accuracy_of(forward, params: Params, x: Array, y: Array) -> Array:
  """Top-1 accuracy of `forward(params, x)` against labels y."""
  return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def evaluate_params(
  params_r: Params, x: Array, y: Array
) -> tuple[Array, Array]:
  """Test accuracies of A and B for each run of a stack: ([R], [R])."""

  def one(params):
    return (
      accuracy_of(model_lib.forward_a, params, x, y),
      accuracy_of(model_lib.forward_b, params, x, y),
    )

  # lax.map, not vmap: one run's activations at a time bounds memory.
  return jax.lax.map(one, params_r)


def fisher_of_a(
  params: Params,
  key: PRNGKey,
  x: Array,
  y: Array,
  *,
  estimator: str,
  num_examples: int,
  batch_size: int,
  mask: Params,
  normalize: str,
) -> Params:
  """Diagonal Fisher of A's likelihood on `num_examples` training examples.

  The examples (drawn without replacement with `key`) are cut into
  minibatches of `batch_size`; the estimator runs on each and the results are
  averaged. For ``batch_grad_squared`` this is the mean over minibatches of
  the squared minibatch-mean gradient (the reference code's kind of estimate,
  docs/method.md §2); for the other two it equals the estimate on all examples.
  Leaves outside `mask` are set to zero. With normalize="mean", F is divided
  by its mean over the masked entries, so that alpha has the same meaning for
  every estimator and for the uniform `l2` pull (F = 1).

  Returns:
    A tree like `params`, float32, F >= 0.
  """
  perm_key, sample_key = jax.random.split(key)
  idx = jax.random.permutation(perm_key, x.shape[0])[:num_examples]
  nb = num_examples // batch_size
  xb = x[idx].reshape(nb, batch_size, x.shape[1])
  yb = y[idx].reshape(nb, batch_size)

  def one(args):
    xi, yi, k = args
    return fisher_lib.fisher_diagonal(
      loss_a,
      params,
      (xi, yi),
      estimator=estimator,
      key=k,
      logits_fn=lambda q, b: model_lib.forward_a(q, b[0]),
    )

  f = jax.lax.map(one, (xb, yb, jax.random.split(sample_key, nb)))
  f = jax.tree.map(lambda v, m: jnp.mean(v, 0) * m, f, mask)
  if normalize == "mean":
    total = sum(jnp.sum(v) for v in jax.tree.leaves(f))
    count = sum(
      v.size
      for v, m in zip(jax.tree.leaves(f), jax.tree.leaves(mask), strict=True)
      if m
    )
    f = jax.tree.map(lambda v: v / jnp.maximum(total / count, 1e-30), f)
  return f
