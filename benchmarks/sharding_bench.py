"""Group sharding: one step on a 1-device mesh and on 4 fake CPU devices.

  python -m benchmarks.run --groups=sharding --quick
  python -m benchmarks.sharding_bench            # the same rows, alone
  python -m benchmarks.sharding_bench --platform=gpu   # on real devices
  python -m benchmarks.sharding_bench --paper    # paper-size memory table

The loops' own jitted steps (`enas_setup.jit_steps`, the two-model
`data_parallel` step) time one ENAS shared step (WPL on) and one two-model
optimiser step with the batch split over 1 and over 4 devices of one
process. XLA's host-device count is fixed when JAX starts, so the rows
are measured in a subprocess started with
`--xla_force_host_platform_device_count=4`. The 4 "devices" share this
machine's cores: no speed-up is expected on CPU; the rows prove the path
(same program, split batch, compiler-inserted all-reduce) and show its
overhead.

Fake devices exist on the CPU platform only, so this mode (the default,
`--platform=cpu`, and what `benchmarks.run` measures) forces
JAX_PLATFORMS=cpu in its subprocess, on any machine. `--platform=gpu`
(`cuda`, `tpu`) instead runs the rows on that platform's real devices, 1
and min(4, all) of them (1 only on a one-device host), without the fake
device count. Either way every row's device column names the platform and
device kind the subprocess ran on.

`--paper` compiles (never runs) the paper-size ENAS steps (H = 1000,
N = 12, V = 10k, B = 64 × T = 35) on 1 and on 8 fake devices, with the
edge stacks replicated or split 2 ways (`model.shard_edges`), and prints
XLA's per-device memory analysis: what a TPU v2/v3-8 core would hold. It
needs the 8 fake devices, so it always forces the CPU platform.
"""

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import enas_bench, fisher_bench
from benchmarks.common import (
  PLATFORMS,
  Case,
  Row,
  device_label,
  facts_markdown,
  markdown,
  measure,
)
from experiments import two_models
from wpl_jax.enas import search_space
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.runtime import sharding
from wpl_jax.two_models import model as model_lib
from wpl_jax.two_models import steps as tm
from wpl_jax.two_models import train as two_models_train

DEVICES = 4


def _timed(name, fn, args, units, unit_name) -> tuple[Case, float]:
  """A blocking case, compiled first (compile seconds returned apart).

  Blocking after each call: XLA:CPU must not queue many collective
  programs (`sharding.cpu_sync`).
  """
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  case = Case(
    name,
    lambda: jax.block_until_ready(fn(*args)),
    jax=False,
    units=units,
    unit_name=unit_name,
  )
  return case, compile_s


def _enas_step(config, model, mesh, tokens, arch):
  """(jitted shared step, its args) as `enas_setup.jit_steps` builds it,
  but not donated: every call reuses the same state."""
  steps = enas_steps.Steps(model=model, config=config)
  init = jax.jit(lambda k: enas_setup.init_state(config, model, k))
  state = enas_setup.place_state(init(jax.random.key(0)), mesh)
  xs, ys = sharding.shard_batch((tokens[:-1], tokens[1:]), mesh, axis=1)
  args = (
    state["shared"],
    state["wpl"],
    sharding.put(arch, sharding.replicated(mesh)),
    xs,
    ys,
    state["train_hidden"],
    jnp.float32(20.0),
    jnp.float32(1.0),
    jax.random.key(2),
  )
  step = jax.jit(
    lambda *z: steps.shared_step(*z[:-1], key=z[-1]),
    out_shardings=(
      sharding.shardings_of(state["shared"]),
      sharding.batch_sharding(mesh, 0),
      sharding.replicated(mesh),
    ),
  )
  return step, args


def _mlp_step(width, mesh, x, y):
  """(jitted two-model step of A with the batch split, its args)."""
  tx = tm.make_optimizer(two_models.get_config("smoke").opt_a)
  params = model_lib.init_a(
    jax.random.key(3), in_dim=784, width=width, num_classes=10, depth=4
  )
  rep = sharding.replicated(mesh)
  state = sharding.put(
    tm.TrainState(params, tx.init(params), jnp.zeros([])), rep
  )
  batch = sharding.shard_batch((x, y), mesh, axis=0)
  step = jax.jit(
    two_models_train.data_parallel(
      functools.partial(
        tm.train_step, loss_fn=lambda q, bb: (tm.loss_a(q, bb), {}), tx=tx
      ),
      mesh,
    ),
    out_shardings=rep,
  )
  return step, (state, batch, jax.random.key(4))


def device_counts() -> tuple[int, ...]:
  """Meshes measured: 1 device and up to DEVICES (4 fake ones on CPU)."""
  return tuple(sorted({1, min(DEVICES, jax.device_count())}))


def _child(sizes: list[str], reps: int) -> list[dict]:
  """Runs in the subprocess (4 fake CPU devices, or real ones): the rows."""
  rows = []
  for size in sizes:
    config = enas_bench.config_at(size, wpl=True)
    hidden, nodes = fisher_bench.ENAS_SIZES[size]
    b, t = config.data.batch_size, config.data.bptt
    model = enas_setup.make_model(config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.model.vocab_size, (t + 1, b), np.int32)
    arch = search_space.sample_uniform(jax.random.key(1), nodes)
    width, mb = fisher_bench.MLP_SIZES[size]
    x = rng.normal(size=(mb, 784)).astype(np.float32)
    y = rng.integers(0, 10, mb).astype(np.int32)
    cases, compiles = {"enas": [], "mlp": []}, {}
    for d in device_counts():
      config.num_devices = d
      mesh = enas_setup.make_mesh(config)
      step, args = _enas_step(config, model, mesh, tokens, arch)
      name = f"ENAS shared step, {d} device(s)"
      case, compiles[name] = _timed(name, step, args, b * t, "tokens")
      cases["enas"].append(case)
      step, args = _mlp_step(width, mesh, x, y)
      name = f"two-model step, {d} device(s)"
      case, compiles[name] = _timed(name, step, args, mb, "examples")
      cases["mlp"].append(case)
    if jax.default_backend() == "cpu":
      note = (
        f"{jax.device_count()} fake CPU devices on {os.cpu_count()} cores: "
        "no speed-up expected; proves the sharded path"
      )
    else:
      note = f"{jax.device_count()} real device(s): {device_label()}"
    for group, label in (
      ("enas", f"{size}: H={hidden}, N={nodes}, B={b}×T={t}, WPL on"),
      ("mlp", f"{size}: A 784-{width}×4-10, B={mb}"),
    ):
      got = measure(
        "sharding",
        label,
        cases[group],
        reps=reps,
        baseline=cases[group][0].name,
      )
      for r in got:
        r.compile_s = compiles[r.case]
        r.note = note
      rows += [dataclasses.asdict(r) for r in got]
  return rows


PAPER_CASES = (
  (1, 0, "batch_grad_squared"),
  (8, 0, "batch_grad_squared"),
  (8, 2, "batch_grad_squared"),
  (8, 0, "per_example"),
  (8, 2, "per_example"),
)


def _abstract(tree, shardings):
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )


def _paper_child() -> list[dict]:
  """Per-device MiB of each paper-size step (XLA memory analysis)."""
  from experiments import enas_ptb  # noqa: PLC0415

  rows = []
  for devices, edges, estimator in PAPER_CASES:
    c = enas_ptb.get_config("paper,wpl")
    c.num_devices, c.model.shard_edges = devices, edges
    c.wpl.estimator = estimator
    mesh = enas_setup.make_mesh(c)
    model = enas_setup.make_model(c)
    steps = enas_steps.Steps(model=model, config=c)
    shapes = jax.eval_shape(
      lambda k, c=c, m=model: enas_setup.init_state(c, m, k),
      jax.random.key(0),
    )
    placed = sharding.tree_shardings(shapes, mesh, sharding.edge_rules(mesh))
    for name in ("train_hidden", "fisher_hidden", "ctrl_hidden"):
      placed[name] = sharding.batch_sharding(mesh, 0)
    st = _abstract(shapes, placed)
    rep = sharding.replicated(mesh)
    hid = sharding.batch_sharding(mesh, 0)
    t, b, h, k = c.data.bptt, c.data.batch_size, c.model.hidden, 16
    n = c.model.num_nodes
    x = jax.ShapeDtypeStruct(
      (t, b), jnp.int32, sharding=sharding.batch_sharding(mesh, 1)
    )
    xr = jax.ShapeDtypeStruct((t, b), jnp.int32, sharding=rep)
    hr = jax.ShapeDtypeStruct((b, h), jnp.float32, sharding=rep)
    f32 = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    a1 = search_space.Arch(
      activations=jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rep),
      parents=jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rep),
    )
    ak = search_space.Arch(
      activations=jax.ShapeDtypeStruct((k, n), jnp.int32, sharding=hid),
      parents=jax.ShapeDtypeStruct((k, n), jnp.int32, sharding=hid),
    )
    jobs = {
      "fisher_step": (
        jax.jit(
          steps.fisher_step,
          donate_argnums=(1,),
          out_shardings=(placed["wpl"], hid),
        ),
        (st["shared"], st["wpl"], a1, x, x, st["fisher_hidden"], f32),
      )
    }
    if estimator == "batch_grad_squared":
      jobs["shared_step"] = (
        jax.jit(
          steps.shared_step,
          donate_argnums=(0,),
          out_shardings=(placed["shared"], hid, rep),
        ),
        (st["shared"], st["wpl"], a1, x, x, st["train_hidden"], f32, f32),
      )
      jobs[f"eval_archs K={k}"] = (
        jax.jit(steps.eval_archs, out_shardings=rep),
        (st["shared"], ak, xr, xr, hr),
      )
    for name, (fn, args) in jobs.items():
      kw = {} if name.startswith("eval") else {"key": key}
      m = fn.lower(*args, **kw).compile().memory_analysis()
      mib = {
        f: getattr(m, f"{f}_size_in_bytes") / 2**20
        for f in ("argument", "output", "alias", "temp")
      }
      rows.append(
        {
          "devices": devices,
          "shard_edges": edges,
          "fisher": estimator,
          "step": name,
          **{f"{f} MiB": round(v) for f, v in mib.items()},
          "peak MiB": round(
            mib["argument"] + mib["output"] - mib["alias"] + mib["temp"]
          ),
        }
      )
  return rows


def paper_memory() -> list[dict]:
  """`_paper_child`'s rows, compiled in an 8-fake-device subprocess."""
  return _subprocess(["--paper-child"], 8)


def subprocess_env(devices: int, platform: str = "cpu") -> dict:
  """The subprocess's environment: `devices` fake CPU devices, or real ones.

  On CPU (`platform="cpu"`) XLA_FLAGS gets
  `--xla_force_host_platform_device_count=devices`, which only the CPU
  platform honours, so JAX_PLATFORMS is forced to "cpu": the fake-device
  mode requires it. Any other platform is set as asked, and the fake count
  is removed (the subprocess uses that platform's real devices).
  """
  if platform not in PLATFORMS:
    raise ValueError(f"platform {platform!r} not in {PLATFORMS}")
  env = dict(os.environ)
  flags = re.sub(
    r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
  )
  if platform == "cpu":
    # First, so that no malformed flag before it can hide it.
    flags = f"--xla_force_host_platform_device_count={devices} {flags}"
  env["XLA_FLAGS"] = flags
  env["JAX_PLATFORMS"] = platform
  return env


def _subprocess(
  args: list[str], devices: int, platform: str = "cpu"
) -> list[dict]:
  env = subprocess_env(devices, platform)
  r = subprocess.run(
    [sys.executable, "-m", "benchmarks.sharding_bench", *args],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  lines = [x for x in r.stdout.splitlines() if x.startswith("ROWS ")]
  if r.returncode or not lines:
    raise RuntimeError(f"sharding bench failed:\n{r.stderr[-3000:]}")
  return json.loads(lines[-1][5:])


def run(sizes: list[str], reps: int, platform: str = "cpu") -> list:
  """The group's rows, measured in a subprocess (see `subprocess_env`)."""
  rows = _subprocess(["--child", ",".join(sizes), str(reps)], DEVICES, platform)
  return [Row(**d) for d in rows]


def main(argv: list[str]) -> None:
  if argv[:1] == ["--child"]:
    rows = _child(argv[1].split(","), int(argv[2]))
    print("ROWS " + json.dumps(rows), flush=True)
    return
  if argv[:1] == ["--paper-child"]:
    print("ROWS " + json.dumps(_paper_child()), flush=True)
    return
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument(
    "--platform",
    choices=PLATFORMS,
    default="cpu",
    help=f"cpu (default): {DEVICES} fake CPU devices; fake devices need the "
    "CPU platform, so this forces JAX_PLATFORMS=cpu on any machine. "
    f"gpu/cuda/tpu: that platform's real devices (1 and up to {DEVICES})",
  )
  ap.add_argument(
    "--paper",
    action="store_true",
    help="paper-size memory table (compiled on 8 fake CPU devices: CPU "
    "forced, --platform ignored)",
  )
  ap.add_argument("--sizes", default="small", help="small,large")
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args(argv)
  if args.paper:
    print(facts_markdown(paper_memory()))
  else:
    print(markdown(run(args.sizes.split(","), args.reps, args.platform)))


if __name__ == "__main__":
  main(sys.argv[1:])
