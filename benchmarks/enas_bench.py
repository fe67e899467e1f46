"""Group 3: ENAS search throughput, vmapped evaluation, compile counts."""

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import fisher_bench
from benchmarks.common import Case, CompileCounter, measure
from experiments import enas_ptb
from wpl_jax.enas import controller as controller_lib
from wpl_jax.enas import losses, sampler, search_space, supernet
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps

EVAL_KS = (1, 8, 32)


def config_at(size: str, *, wpl: bool = False) -> ml_collections.ConfigDict:
  """enas_ptb's `cpu` config, at the benchmark's `size`, WPL on or off."""
  config = enas_ptb.get_config("cpu,wpl" if wpl else "cpu")
  hidden, nodes = fisher_bench.ENAS_SIZES[size]
  config.model.hidden = hidden
  config.model.num_nodes = nodes
  config.model.vocab_size = fisher_bench.VOCAB
  config.data.batch_size = fisher_bench.ENAS_BATCH
  config.data.bptt = fisher_bench.ENAS_BPTT
  return config


def setup(config: ml_collections.ConfigDict, *, seed: int = 0) -> dict:
  """Steps, states and one batch, as `train.enas_search` builds them."""
  model = enas_setup.make_model(config)
  steps = enas_steps.Steps(model, config)
  keys = jax.random.split(jax.random.key(seed), 5)
  variables = supernet.init_variables(model, key=keys[0])
  params = variables["params"]
  tx = enas_setup.shared_optimizer(
    config.shared.grad_clip, config.shared.weight_decay
  )
  shared = enas_setup.SharedState(
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(params),
  )
  n = config.model.num_nodes
  ctrl_params = controller_lib.init_params(
    key=keys[1], num_nodes=n, hidden_size=config.controller.hidden
  )
  ctrl = enas_setup.ControllerState(
    params=ctrl_params,
    opt_state=enas_setup.controller_optimizer(config.controller.lr).init(
      ctrl_params
    ),
    baseline=jnp.zeros([], jnp.float32),
    step=jnp.zeros([], jnp.int32),
  )
  b, t, v = config.data.batch_size, config.data.bptt, config.model.vocab_size
  tokens = jax.random.randint(keys[2], (t + 1, b), 0, v)
  archs = jax.vmap(lambda k: search_space.sample_uniform(k, n))(
    jax.random.split(keys[3], max(EVAL_KS))
  )
  wpl_state = enas_wpl.init_state(params)
  # Non-zero Fisher and anchor, so the penalty is not trivially zero.
  wpl_state = wpl_state._replace(
    fisher=jax.tree.map(lambda f: f + 1e-3, wpl_state.fisher)
  )
  return {
    "model": model,
    "steps": steps,
    "shared": shared,
    "ctrl": ctrl,
    "wpl": wpl_state,
    "inputs": tokens[:-1],
    "targets": tokens[1:],
    "hidden": jnp.zeros((b, config.model.hidden), jnp.float32),
    "archs": archs,
    "key": keys[4],
  }


def _arch(archs, i):
  return jax.tree.map(lambda a: a[i], archs)


def shared_step_case(name: str, s: dict) -> Case:
  """One shared-weights SGD step on one batch (tokens/s)."""
  steps = s["steps"]
  args = (
    s["shared"],
    s["wpl"],
    _arch(s["archs"], 0),
    s["inputs"],
    s["targets"],
    s["hidden"],
    jnp.float32(20.0),
    jnp.float32(1.0),
    s["key"],
  )
  tokens = s["inputs"].size
  return Case(
    name,
    lambda *a: steps.shared_step(*a[:-1], key=a[-1]),
    args,
    units=tokens,
    unit_name="tokens",
  )


def controller_case(s: dict) -> Case:
  """One REINFORCE step of the controller on one sampled arch (steps/s)."""
  steps = s["steps"]
  args = (s["ctrl"], s["shared"], s["inputs"], s["targets"], s["hidden"])
  return Case(
    "controller_step (REINFORCE, K=1 arch)",
    lambda c, sh, x, y, h, k: steps.controller_step(c, sh, x, y, h, key=k),
    args + (s["key"],),
    units=1,
    unit_name="steps",
  )


def run(sizes: list[str], reps: int, ks=EVAL_KS) -> tuple[list, list]:
  rows, facts = [], []
  for size in sizes:
    config = config_at(size)
    s = setup(config)
    hidden, nodes = fisher_bench.ENAS_SIZES[size]
    label = (
      f"{size}: H={hidden}, N={nodes}, B={fisher_bench.ENAS_BATCH}"
      f"×T={fisher_bench.ENAS_BPTT}, V={fisher_bench.VOCAB}"
    )
    rows += measure(
      "ENAS search steps",
      label,
      [shared_step_case("shared_step (train mode)", s), controller_case(s)],
      reps=reps,
    )
    rows += _eval_rows(s, label, reps, ks)
    facts += _compile_counts(s, size)
  return rows, facts


def _eval_rows(s: dict, label: str, reps: int, ks) -> list:
  """Vmapped evaluation of K archs against a loop of K jitted calls."""
  model, shared = s["model"], s["shared"]
  variables = {"params": shared.params, "batch_stats": shared.batch_stats}
  x, y, h = s["inputs"], s["targets"], s["hidden"]

  def vmapped(v, archs, x, y, h):
    return sampler.evaluate_architectures(model, v, archs, x, y, h)

  single = jax.jit(
    lambda v, arch, x, y, h: losses.eval_loss(model, v, arch, x, y, h)[0]
  )
  compiled = single.lower(variables, _arch(s["archs"], 0), x, y, h).compile()
  rows = []
  for k in ks:
    archs = jax.tree.map(lambda a, k=k: a[:k], s["archs"])
    one_by_one = [_arch(archs, i) for i in range(k)]

    def loop(one_by_one=one_by_one):
      return jax.block_until_ready(
        [compiled(variables, a, x, y, h) for a in one_by_one]
      )

    loop_name = f"loop of {k} jitted single evaluations"
    new = measure(
      "ENAS evaluation",
      label,
      [
        Case(loop_name, loop, jax=False, units=k, unit_name="archs"),
        Case(
          f"vmapped evaluate_architectures, K={k}",
          vmapped,
          (variables, archs, x, y, h),
          units=k,
          unit_name="archs",
        ),
      ],
      reps=reps,
      baseline=loop_name,
    )
    rows += new
  return rows


def _compile_counts(s: dict, size: str, num_archs: int = 5) -> list[dict]:
  """XLA compilations of each jitted step over `num_archs` architectures."""
  steps = s["steps"]
  counter = CompileCounter()
  archs = [_arch(s["archs"], i) for i in range(num_archs)]
  eval_sets = [
    jax.tree.map(lambda a, i=i: a[i : i + 8], s["archs"]) for i in range(3)
  ]
  keys = list(jax.random.split(s["key"], num_archs))
  lr, alpha = jnp.float32(20.0), jnp.float32(1.0)
  jax.block_until_ready((archs, eval_sets, keys))
  x, y, h = s["inputs"], s["targets"], s["hidden"]
  shared_step = jax.jit(lambda *a: steps.shared_step(*a[:-1], key=a[-1]))
  fisher_step = jax.jit(lambda *a: steps.fisher_step(*a[:-1], key=a[-1]))
  eval_archs = jax.jit(steps.eval_archs)
  ctrl_step = jax.jit(
    lambda c, sh, x, y, h, k: steps.controller_step(c, sh, x, y, h, key=k)
  )
  calls = {
    "shared_step": [
      lambda a=a, k=k: shared_step(
        s["shared"], s["wpl"], a, x, y, h, lr, alpha, k
      )
      for a, k in zip(archs, keys, strict=True)
    ],
    "fisher_step": [
      lambda a=a, k=k: fisher_step(s["shared"], s["wpl"], a, x, y, h, alpha, k)
      for a, k in zip(archs, keys, strict=True)
    ],
    "eval_archs (K=8)": [
      lambda e=e: eval_archs(s["shared"], e, x, y, h) for e in eval_sets
    ],
    "controller_step": [
      lambda k=k: ctrl_step(s["ctrl"], s["shared"], x, y, h, k) for k in keys
    ],
  }
  facts = []
  for name, fns in calls.items():
    before = counter.count
    for fn in fns:
      jax.block_until_ready(fn())
    facts.append(
      {
        "size": size,
        "function": name,
        "calls": len(fns),
        "distinct archs": len(fns),
        "compilations": counter.count - before,
      }
    )
  return facts
