"""Runs the benchmark groups in one process; prints Markdown, writes JSON.

Usage (from the project root):

  python -m benchmarks.run                 # full suite (~30 min, 2 cores)
  python -m benchmarks.run --quick         # small sizes, 3 repetitions
  python -m benchmarks.run --groups=fisher,wpl --sizes=large

Every figure is the median of several repetitions after a warm-up call,
interleaved across the cases of a table so that load from other processes
falls on all of them alike; compile time is reported apart. Groups:
fisher (estimators vs one batch gradient), flax (the per-example Fisher
of plain Flax NNX/Linen CNNs and a GRU vs their batch gradient), torch (the
PyTorch peer; needs `pip install torch numpy`, benchmark-only), enas
(search-step throughput, vmapped evaluation, compile counts), wpl (penalty
and `add_wpl` overhead), sharding (one ENAS and one two-model step on 1 and
on 4 fake CPU devices, in a subprocess).
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

GROUPS = ("fisher", "flax", "torch", "enas", "wpl", "sharding")
_DEFAULT_OUT = pathlib.Path(__file__).parent / "out" / "results.json"


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small sizes, 3 reps")
  p.add_argument("--groups", default=",".join(GROUPS), help="comma list")
  p.add_argument("--sizes", default=None, help="small,large (default both)")
  p.add_argument("--reps", type=int, default=None, help="default 7 (quick 3)")
  p.add_argument(
    "--threads",
    choices=("1", "all"),
    default="1",
    help="intra-op threads of XLA and PyTorch: 1 (default; steady on a "
    "shared machine, and the same for both) or the libraries' defaults",
  )
  p.add_argument("--out", type=pathlib.Path, default=_DEFAULT_OUT)
  args = p.parse_args(argv)
  args.groups = [g for g in args.groups.split(",") if g]
  unknown = set(args.groups) - set(GROUPS)
  if unknown:
    p.error(f"unknown groups {sorted(unknown)}; choose from {GROUPS}")
  args.sizes = (args.sizes or ("small" if args.quick else "small,large")).split(
    ","
  )
  args.reps = args.reps or (3 if args.quick else 7)
  return args


def main(argv=None) -> None:
  args = _parse(argv if argv is not None else sys.argv[1:])
  if args.threads == "1":
    # Must precede the first `import jax`.
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
  # Imported here, after XLA_FLAGS is set.
  from benchmarks import (
    common,
    enas_bench,
    fisher_bench,
    flax_bench,
    sharding_bench,
    torch_peer,
    wpl_bench,
  )

  info = common.machine()
  info["threads"] = args.threads
  info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  print(f"# wpl_jax benchmarks ({'quick' if args.quick else 'full'})")
  print(json.dumps(info, indent=1), flush=True)
  t0 = time.time()
  rows, facts = [], []
  for group in args.groups:
    t_group = time.time()
    if group == "fisher":
      rows += fisher_bench.run(args.sizes, args.reps)
    elif group == "flax":
      rows += flax_bench.run(args.sizes, args.reps)
    elif group == "torch":
      try:
        import torch

        info["torch"] = torch.__version__
        if args.threads == "1":
          torch.set_num_threads(1)
      except ImportError:
        pass  # torch_peer.run says it is skipped.
      rows += torch_peer.run(args.sizes, args.reps)
    elif group == "enas":
      ks = (1, 8) if args.quick else enas_bench.EVAL_KS
      new_rows, new_facts = enas_bench.run(args.sizes, args.reps, ks)
      rows += new_rows
      facts += new_facts
    elif group == "wpl":
      rows += wpl_bench.run(args.sizes, args.reps)
    elif group == "sharding":
      rows += sharding_bench.run(args.sizes, args.reps)
    print(f"[{group}: {time.time() - t_group:.0f} s]", flush=True)
  info["load_avg_end"] = os.getloadavg()
  info["peak_rss_mib"] = common.peak_rss_mb()
  info["wall_s"] = time.time() - t0
  print()
  print(common.markdown(rows))
  if facts:
    print()
    print(common.facts_markdown(facts))
  print(
    f"\nload average start {info['load_avg_start']}, end "
    f"{info['load_avg_end']}; peak RSS {info['peak_rss_mib']:.0f} MiB; "
    f"{info['wall_s']:.0f} s"
  )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  record = {
    "machine": info,
    "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
    "rows": [dataclasses.asdict(r) for r in rows],
    "compilations": facts,
  }
  args.out.write_text(json.dumps(record, indent=1), encoding="utf-8")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
