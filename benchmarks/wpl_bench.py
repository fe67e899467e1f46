"""Group 4: cost of the WPL penalty and of `add_wpl` in a training step."""

import functools

import jax
import jax.numpy as jnp
import optax

from benchmarks import enas_bench, fisher_bench
from benchmarks.common import Case, measure
from wpl_jax import loss as loss_lib
from wpl_jax import partition
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.two_models import model as two_models
from wpl_jax.two_models import study as train_two

PLAIN = "step without WPL"
NUM_SHARED = 3  # B shares A's first 3 of 4 hidden layers (the study's max).


STEPS_PER_CALL = 20  # MLP steps per jitted call, as `train.two_models`
# scans them: the per-call dispatch cost stays out of the comparison.


def _mlp_step(
  params, opt_state, batch, anchor, fisher, *, tx, penalty, mask, extra
):
  """One Adam step of model B: cross-entropy (+ penalty) (+ add_wpl)."""

  def loss_fn(p):
    x, y = batch
    ce = train_two.cross_entropy(two_models.forward_b(p, x), y)
    if penalty:
      ce = ce + loss_lib.wpl_penalty(p, anchor, fisher, alpha=10.0, mask=mask)
    return ce

  loss, grads = jax.value_and_grad(loss_fn)(params)
  kwargs = {"wpl_anchor": anchor, "wpl_fisher": fisher} if extra else {}
  updates, opt_state = tx.update(grads, opt_state, params, **kwargs)
  return optax.apply_updates(params, updates), opt_state, loss


def _scanned(step, params, opt_state, *args):
  """`STEPS_PER_CALL` steps in one `lax.scan`; returns the final state."""

  def body(carry, _):
    p, o = carry
    p, o, loss = step(p, o, *args)
    return (p, o), loss

  return jax.lax.scan(body, (params, opt_state), None, STEPS_PER_CALL)


def mlp_cases(width: int, batch_size: int) -> list[Case]:
  """Model B of the two-model study, 784-width×6-10, k shared layers."""
  params_a, batch = fisher_bench.mlp_setup(width, batch_size)
  params = two_models.attach_b(
    params_a, jax.random.key(3), num_shared=NUM_SHARED, depth=6
  )
  mask = partition.make_mask(params, two_models.SHARED_REGEX)
  anchor = jax.tree.map(jnp.copy, params)
  fisher = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  adam = optax.adam(1e-3)
  with_wpl = optax.chain(loss_lib.add_wpl(10.0, mask), optax.adam(1e-3))

  def case(name, tx, *, penalty=False, extra=False):
    step = functools.partial(
      _mlp_step, tx=tx, penalty=penalty, mask=mask, extra=extra
    )
    args = (params, tx.init(params), batch, anchor, fisher)
    return Case(
      name,
      functools.partial(_scanned, step),
      args,
      units=STEPS_PER_CALL,
      unit_name="steps",
    )

  def penalty_alone(p, o, a, f):
    """SGD on the penalty alone: its value_and_grad and an update."""
    value, g = jax.value_and_grad(
      lambda q: loss_lib.wpl_penalty(q, a, f, alpha=10.0, mask=mask)
    )(p)
    return jax.tree.map(lambda x, d: x - 1e-3 * d, p, g), o, value

  transform = loss_lib.add_wpl(10.0, mask)

  def transform_alone(p, o, a, f):
    """add_wpl's update on zero updates, applied."""
    u, o = transform.update(
      jax.tree.map(jnp.zeros_like, p), o, p, wpl_anchor=a, wpl_fisher=f
    )
    return optax.apply_updates(p, u), o, jnp.zeros([])

  def alone(name, fn, opt_state):
    return Case(
      name,
      functools.partial(_scanned, fn),
      (params, opt_state, anchor, fisher),
      units=STEPS_PER_CALL,
      unit_name="steps",
    )

  return [
    case(PLAIN, adam),
    case("step without WPL (again: noise control)", adam),
    case("+ wpl_penalty in the loss", adam, penalty=True),
    case("+ add_wpl transform", with_wpl, extra=True),
    alone("wpl_penalty value_and_grad alone", penalty_alone, ()),
    alone("add_wpl update alone", transform_alone, transform.init(params)),
  ]


def _edge_penalty_alone(s: dict) -> Case:
  """value_and_grad of the ENAS edge penalty alone, w.r.t. all params."""
  arch = jax.tree.map(lambda a: a[0], s["archs"])

  def fn(params, state, arch):
    return jax.value_and_grad(
      lambda p: enas_wpl.edge_penalty(p, state, arch, alpha=1.0)
    )(params)

  return Case(
    "edge_penalty value_and_grad alone",
    fn,
    (s["shared"].params, s["wpl"], arch),
  )


def run(sizes: list[str], reps: int) -> list:
  rows = []
  for size in sizes:
    width, b = fisher_bench.MLP_SIZES[size]
    label = (
      f"{size}: B model 784-{width}×6-10, {NUM_SHARED} shared, B={b}; "
      f"{STEPS_PER_CALL} steps per call"
    )
    rows += measure(
      "WPL overhead, MLP", label, mlp_cases(width, b), reps=reps, baseline=PLAIN
    )
  for size in sizes:
    hidden, nodes = fisher_bench.ENAS_SIZES[size]
    plain = enas_bench.setup(enas_bench.config_at(size))
    wpl = enas_bench.setup(enas_bench.config_at(size, wpl=True))
    label = (
      f"{size}: H={hidden}, N={nodes}, B={fisher_bench.ENAS_BATCH}"
      f"×T={fisher_bench.ENAS_BPTT}, V={fisher_bench.VOCAB}"
    )
    cases = [
      enas_bench.shared_step_case(PLAIN, plain),
      enas_bench.shared_step_case(
        "step without WPL (again: noise control)", plain
      ),
      enas_bench.shared_step_case("+ edge_penalty in the loss", wpl),
      _edge_penalty_alone(wpl),
    ]
    rows += measure(
      "WPL overhead, ENAS shared_step", label, cases, reps=reps, baseline=PLAIN
    )
  return rows
