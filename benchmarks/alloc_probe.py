"""Issue 11: the H = 1000 shared step under glibc allocator settings.

Usage (one fresh process per setting; GLIBC_TUNABLES is read at start-up):

  python benchmarks/alloc_probe.py --hidden=1000 --reps=4
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/alloc_probe.py
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\\
glibc.malloc.trim_threshold=4294967296 python benchmarks/alloc_probe.py
  python benchmarks/alloc_probe.py --mallopt   # in-process alternative

Prints one JSON line: median and min step time, minor page faults per step
(`getrusage`) and peak RSS. `--mallopt` calls glibc's `mallopt` before JAX
is imported (one arena, no mmap, no trimming), the in-process route that
WORKSPACE §6.2 found not to work.
"""

import argparse
import ctypes
import json
import os
import pathlib
import resource
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--reps", type=int, default=4)
  ap.add_argument("--mallopt", action="store_true")
  args = ap.parse_args()
  if args.mallopt:
    libc = ctypes.CDLL("libc.so.6")
    m_arena_max, m_mmap_max, m_trim_threshold = -8, -4, -1
    libc.mallopt(m_arena_max, 1)
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  import jax  # noqa: PLC0415 (after mallopt)
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = args.hidden, 12
  s = enas_bench.setup(c)
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  step = jax.jit(s["steps"].shared_step)
  step_args = (s["shared"], s["wpl"], arch, s["inputs"], s["targets"])
  step_args += (s["hidden"], jnp.float32(0.1), jnp.float32(1.0))
  for _ in range(2):  # compile, then one warm call
    jax.block_until_ready(step(*step_args, key=s["key"]))
  times, r0 = [], resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(args.reps):
    t0 = time.perf_counter()
    jax.block_until_ready(step(*step_args, key=s["key"]))
    times.append(time.perf_counter() - t0)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  print(
    json.dumps(
      {
        "hidden": args.hidden,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "mallopt": args.mallopt,
        "median_ms": sorted(times)[len(times) // 2] * 1e3,
        "min_ms": min(times) * 1e3,
        "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / args.reps,
        "peak_rss_gb": r1.ru_maxrss / 2**20,
      }
    )
  )


if __name__ == "__main__":
  main()
