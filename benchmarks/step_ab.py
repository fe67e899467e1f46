"""Issue 11 A/B: ENAS shared step and Fisher update, one process per checkout.

Usage (2-core CPU, one XLA thread; run on an otherwise idle machine):

  python benchmarks/step_ab.py --hidden=200 --reps=5 --what=grad
      shared_step with autodiff vs `model.tapped_grad` (same process)
  python benchmarks/step_ab.py --root=DIR --hidden=200 --reps=5 \\
      --what=fisher --estimator=per_example
      fisher_step and shared_step of the checkout at DIR (default: this
      one), timed alternately; prints their ratio. For before/after, run it
      once with --root=<a worktree of the old commit> and once without.

Sizes: `enas_ptb:cpu,wpl` with N = 12 nodes, V = 10000, batch 64 × 35.
Prints medians in ms (`benchmarks/run.py` is the full suite).
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault(
  "XLA_FLAGS",
  "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)


def _median_ms(values):
  return sorted(values)[len(values) // 2] * 1e3


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  here = pathlib.Path(__file__).resolve().parents[1]
  ap.add_argument("--root", default=str(here), help="checkout to import")
  ap.add_argument("--hidden", type=int, default=200)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--what", choices=("grad", "fisher"), default="grad")
  ap.add_argument("--estimator", default="per_example")
  args = ap.parse_args()
  sys.path.insert(0, args.root)
  import jax  # noqa: PLC0415 (after the path and XLA flags are set)
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415

  def build(**model):
    c = enas_bench.config_at("large", wpl=True)
    c.model.hidden, c.model.num_nodes = args.hidden, 12
    c.wpl.estimator = args.estimator
    for k, v in model.items():
      c.model[k] = v
    s = enas_bench.setup(c)
    arch = jax.tree.map(lambda x: x[0], s["archs"])
    batch = (arch, s["inputs"], s["targets"], s["hidden"])
    step = jax.jit(s["steps"].shared_step)
    step_args = (s["shared"], s["wpl"], *batch, jnp.float32(0.1))
    step_args += (jnp.float32(1.0),)
    fisher = jax.jit(s["steps"].fisher_step)
    fisher_args = (s["shared"], s["wpl"], *batch, jnp.float32(2.0))
    return {
      "step": lambda: step(*step_args, key=s["key"]),
      "fisher": lambda: fisher(*fisher_args, key=s["key"]),
    }

  if args.what == "grad":
    cases = {
      "shared_step autodiff": build(tapped_grad=False)["step"],
      "shared_step tapped_grad": build(tapped_grad=True)["step"],
    }
  else:
    fns = build()
    cases = {"fisher_step": fns["fisher"], "shared_step": fns["step"]}
  for f in cases.values():
    jax.block_until_ready(f())
  times = {k: [] for k in cases}
  for _ in range(args.reps):
    for k, f in cases.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t)
  base = None
  for k, v in times.items():
    m = _median_ms(v)
    base = base or m
    print(
      f"{pathlib.Path(args.root).name} H={args.hidden} {k}: median "
      f"{m:.0f} ms, min {min(v) * 1e3:.0f} ms, {m / base:.2f}x the first row"
    )


if __name__ == "__main__":
  main()
