"""Issue 11: K archs evaluated in one vmap or one at a time (time, memory).

Usage (run on an otherwise idle machine):

  python -m benchmarks.eval_group_bench --hidden=1000 --k=16 --groups=0,1 \\
      [--platform=cpu|gpu|cuda|tpu]

For each `search.eval_vmap` in --groups (0 = all K archs in one vmap, g =
vmapped groups of g run one after the other) a fresh worker process builds
`enas_ptb:cpu,wpl` at width H (N = 12, V = 10000, batch 64 × 35), calls the
search's `eval_archs` on K archs once to compile, then --reps more times,
and reports the best time and the process's peak RSS (which includes the
compile and the model's state; the difference between groups is the
evaluation's) and, off CPU, the device's peak memory (`memory_stats()`
`peak_bytes_in_use`, where the device reports it). The workers run in turn,
--rounds times, ABAB. They inherit JAX_PLATFORMS from the caller unless
--platform sets it; each reports the platform and device kind it ran on.
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
  out = {
    "hidden": hidden,
    "k": k,
    "eval_vmap": group,
    "best_s": best,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    "rss_before_call_gb": before,
    **common.device_facts(),
  }
  peak = common.device_peak_gb()
  if peak is not None:
    out["peak_device_gb"] = peak
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--k", type=int, default=16)
  ap.add_argument("--groups", default="0,1")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=2)
  common.add_platform_flag(ap)
  ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker is not None:
    common.report(worker(args.hidden, args.k, args.worker, args.reps))
    return
  env = common.worker_env(
    os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"),  # as main.py
    platform=args.platform,
  )
  results = {}
  for _ in range(args.rounds):
    for g in args.groups.split(","):
      cmd = [sys.executable, "-m", "benchmarks.eval_group_bench"]
      cmd += [f"--hidden={args.hidden}", f"--k={args.k}"]
      cmd += [f"--reps={args.reps}", f"--worker={g}"]
      r = common.run_worker(cmd, env, f"eval_vmap={g}")
      results.setdefault(g, []).append(r)
      dev = ""
      if "peak_device_gb" in r:
        dev = f" peak device {r['peak_device_gb']:.2f} GB,"
      print(
        f"H={args.hidden} K={args.k} eval_vmap={g} [{common.device_label(r)}]"
        f": {r['best_s']:.2f} s,{dev} peak RSS {r['peak_rss_gb']:.2f} GB "
        f"(before the first call {r['rss_before_call_gb']:.2f} GB)",
        flush=True,
      )
  groups = list(results)
  base = min(r["best_s"] for r in results[groups[0]])
  for g in groups:
    t = min(r["best_s"] for r in results[g])
    key = "peak_rss_gb"
    if "peak_device_gb" in results[g][0]:
      key = "peak_device_gb"  # off CPU: the device's memory, not the host's
    m = max(r[key] for r in results[g])
    devices = sorted({common.device_label(r) for r in results[g]})
    print(
      f"eval_vmap={g} [{', '.join(devices)}]: best {t:.2f} s "
      f"({t / base:.2f}x), peak {m:.2f} GB ({key[5:-3]})"
    )


if __name__ == "__main__":
  main()
