"""Golden numbers: one training step of each study, against stored values.

These pin the numerics of the code as it is, so that a refactor (issue 11
rewrites the ENAS step) that changes a result by more than float noise is
seen. They are not a correctness proof (the other tests compare with
independent computations); a *deliberate* change of the maths updates them:

  python tests/golden_test.py --print   # prints the new _GOLDEN dict

and say in the commit why the numbers moved.
"""

import functools
import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # also runnable as a script (--print)
  sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl.testing import absltest  # noqa: E402

from experiments import enas_ptb  # noqa: E402
from wpl_jax import fisher, partition  # noqa: E402
from wpl_jax.enas import search_space  # noqa: E402
from wpl_jax.enas.train import setup as enas_setup  # noqa: E402
from wpl_jax.enas.train import steps as enas_steps  # noqa: E402
from wpl_jax.two_models import model as model_lib  # noqa: E402
from wpl_jax.two_models import study as two_lib  # noqa: E402

# Relative tolerance: float noise across CPUs and XLA versions, far below
# any change of the maths.
_RTOL = 2e-4

_GOLDEN = {  # measured 2026-12-02 at 83548aa (2-core AMD EPYC)
  "two_models": {
    "a_losses": [1.3943742513656616, 1.3266156911849976, 1.2702876329421997],
    "a_params": [-1.39678249967983, 58.059056464930414],
    "fisher": [5.873886243393329, 0.27442042379090004],
    "b_losses": [1.449985146522522, 1.374377727508545, 1.3209002017974854],
    "b_penalty": [0.0, 0.001012543449178338, 0.0030281003564596176],
    "b_params": [-4.175260078452993, 77.06583069133387],
  },
  "enas": {
    "loss": [2.9957733154296875, 2.935962438583374],
    "params": [-0.30170999170150026, 0.4096931436203006],
    "fisher": [4.104562840043097e-09, 1.3360404226348912e-18],
    "reward": [4.48137903213501],
    "controller": [-1.1525534744732795, 8.276378517571091],
  },
}


def _sums(tree) -> list[float]:
  leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(tree)]
  return [
    float(sum(v.sum() for v in leaves)),
    float(sum((v * v).sum() for v in leaves)),
  ]


def _two_models() -> dict:
  """A: 3 Adam steps; B (k = 2): 3 WPL steps with A's per-example Fisher."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 10)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
  params = model_lib.init_a(
    jax.random.key(0), in_dim=10, width=16, num_classes=4, depth=3
  )
  tx = optax.adam(1e-2)
  step_a = jax.jit(
    functools.partial(
      two_lib.train_step, loss_fn=lambda q, b: (two_lib.loss_a(q, b), {}), tx=tx
    )
  )
  state = two_lib.TrainState(params, tx.init(params), jnp.zeros([]))
  losses_a = []
  for i in range(3):
    state, m = step_a(state, (x, y), jax.random.key(i))
    losses_a.append(float(m["loss"]))
  joint = model_lib.attach_b(
    state.params, jax.random.key(1), num_shared=2, depth=3
  )
  mask = partition.make_mask(joint, model_lib.SHARED_REGEX)
  # A's Fisher on the joint tree (forward_a reads A's layers of it; B's
  # get 0), pulled on the shared layers only.
  f = fisher.fisher_diagonal(
    two_lib.loss_a, joint, (x, y), estimator="per_example"
  )
  penalty = two_lib.Penalty(anchor=joint, fisher=f, alpha=jnp.float32(10))
  step_b = jax.jit(
    functools.partial(
      two_lib.train_step,
      loss_fn=functools.partial(two_lib.loss_b, penalty=penalty, mask=mask),
      tx=tx,
    )
  )
  state_b = two_lib.TrainState(joint, tx.init(joint), jnp.zeros([]))
  losses_b, pulls = [], []
  for i in range(3):
    state_b, m = step_b(state_b, (x, y), jax.random.key(10 + i))
    losses_b.append(float(m["loss"]))
    pulls.append(float(m["penalty"]))
  return {
    "a_losses": losses_a,
    "a_params": _sums(state.params),
    "fisher": _sums(f),
    "b_losses": losses_b,
    "b_penalty": pulls,
    "b_params": _sums(state_b.params),
  }


def _enas() -> dict:
  """A shared step, a Fisher step (reference WPL), a second shared step
  (WPL on) and a controller step."""
  c = enas_ptb.get_config("smoke,wpl")
  c.model.vocab_size, c.model.hidden, c.model.num_nodes = 20, 8, 3
  c.data.batch_size, c.data.bptt = 3, 4
  model = enas_setup.make_model(c)
  steps = enas_steps.Steps(model=model, config=c)
  state = enas_setup.init_state(c, model, jax.random.key(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 20, (4, 3)), jnp.int32)
  y = jnp.asarray(rng.integers(0, 20, (4, 3)), jnp.int32)
  h = jnp.zeros((3, 8), jnp.float32)
  arch = search_space.from_string("tanh|0:relu|1:sigmoid")
  shared, h1, m = jax.jit(steps.shared_step)(
    state["shared"],
    state["wpl"],
    arch,
    x,
    y,
    h,
    jnp.float32(1.0),
    jnp.float32(0.0),
    key=jax.random.key(1),
  )
  wpl_state, _ = jax.jit(steps.fisher_step)(
    shared,
    state["wpl"],
    arch,
    x,
    y,
    h,
    jnp.float32(60.0),
    key=jax.random.key(2),
  )
  shared2, _, m2 = jax.jit(steps.shared_step)(
    shared,
    wpl_state,
    arch,
    x,
    y,
    h1,
    jnp.float32(1.0),
    jnp.float32(1.0),
    key=jax.random.key(3),
  )
  ctrl, _, cm = jax.jit(steps.controller_step)(
    state["controller"], shared2, x, y, h, key=jax.random.key(4)
  )
  return {
    "loss": [float(m["loss"]), float(m2["loss"])],
    "params": _sums(shared2.params),
    "fisher": _sums(wpl_state.fisher),
    "reward": [float(cm["reward"])],
    "controller": _sums(ctrl.params),
  }


def measure() -> dict:
  return {"two_models": _two_models(), "enas": _enas()}


class GoldenTest(absltest.TestCase):
  def test_training_steps_match_the_stored_numbers(self):
    got = measure()
    for study, values in _GOLDEN.items():
      for name, want in values.items():
        np.testing.assert_allclose(
          got[study][name],
          want,
          rtol=_RTOL,
          err_msg=(
            f"{study}.{name} moved; if the maths changed on purpose, run "
            "`python tests/golden_test.py --print` and update _GOLDEN"
          ),
        )


if __name__ == "__main__":
  if "--print" in sys.argv:
    import pprint

    pprint.pprint(measure(), width=78, sort_dicts=False)
  else:
    absltest.main()
