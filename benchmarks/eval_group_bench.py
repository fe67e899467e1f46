"""Issue 11: K archs evaluated in one vmap or one at a time (time, memory).

Usage (run on an otherwise idle machine):

  python -m benchmarks.eval_group_bench --hidden=1000 --k=16 --groups=0,1

For each `search.eval_vmap` in --groups (0 = all K archs in one vmap, g =
vmapped groups of g run one after the other) a fresh worker process builds
`enas_ptb:cpu,wpl` at width H (N = 12, V = 10000, batch 64 × 35), calls the
search's `eval_archs` on K archs once to compile, then --reps more times,
and reports the best time and the process's peak RSS (which includes the
compile and the model's state; the difference between groups is the
evaluation's). The workers run in turn, --rounds times, ABAB.
"""

import argparse
import os
import resource
import sys
import time

from benchmarks import common


def worker(hidden: int, k: int, group: int, reps: int) -> dict:
  import jax  # noqa: PLC0415 (after the XLA flags are set)
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.search.eval_vmap = group
  s = enas_bench.setup(c)
  archs = jax.tree.map(lambda a: jnp.resize(a, (k, *a.shape[1:])), s["archs"])
  fn = jax.jit(s["steps"].eval_archs)
  args = (s["shared"], archs, s["inputs"], s["targets"], s["hidden"])
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return {
    "hidden": hidden,
    "k": k,
    "eval_vmap": group,
    "best_s": best,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    "rss_before_call_gb": before,
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--k", type=int, default=16)
  ap.add_argument("--groups", default="0,1")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker is not None:
    common.report(worker(args.hidden, args.k, args.worker, args.reps))
    return
  env = common.worker_env(
    os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # as main.py
  )
  results = {}
  for _ in range(args.rounds):
    for g in args.groups.split(","):
      cmd = [sys.executable, "-m", "benchmarks.eval_group_bench"]
      cmd += [f"--hidden={args.hidden}", f"--k={args.k}"]
      cmd += [f"--reps={args.reps}", f"--worker={g}"]
      r = common.run_worker(cmd, env, f"eval_vmap={g}")
      results.setdefault(g, []).append(r)
      print(
        f"H={args.hidden} K={args.k} eval_vmap={g}: {r['best_s']:.2f} s, "
        f"peak RSS {r['peak_rss_gb']:.2f} GB "
        f"(before the first call {r['rss_before_call_gb']:.2f} GB)",
        flush=True,
      )
  groups = list(results)
  base = min(r["best_s"] for r in results[groups[0]])
  for g in groups:
    t = min(r["best_s"] for r in results[g])
    m = max(r["peak_rss_gb"] for r in results[g])
    print(f"eval_vmap={g}: best {t:.2f} s ({t / base:.2f}x), peak {m:.2f} GB")


if __name__ == "__main__":
  main()
