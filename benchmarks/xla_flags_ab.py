"""XLA:CPU flag sets against the default, on the search's own steps.

Usage (from the project root, on an otherwise idle machine):

  python -m benchmarks.xla_flags_ab --hidden=1000 --reps=5 --rounds=2 \\
      --sets='onednn=--xla_cpu_use_onednn=true;xnn=--xla_cpu_use_xnnpack=true'

Each flag set (NAME=FLAGS, ';'-separated; the baseline "default" runs
with XLA's defaults) runs `benchmarks/step_ab.py --what=fisher` (the
Fisher update and the shared step of `enas_ptb:paper,wpl` at width H,
timed alternately in one process) in a fresh process with those
XLA_FLAGS after `--xla_cpu_multi_thread_eigen=true` (XLA's default, as
main.py runs; step_ab alone would set it false), under main.py's launch
setting (GLIBC_TUNABLES). The sets run
one after another, `--rounds` times (round r in reverse order when r is
odd: ABBA), and each set's medians over its rounds are printed as ratios
against the default's: below 1 is faster. A set whose process fails (an
unknown flag on this jaxlib) is a row saying so.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

from benchmarks import versus_reference

BASE_FLAGS = "--xla_cpu_multi_thread_eigen=true"
LINE = re.compile(r"H=(\d+) (\w+): median (\d+) ms, min (\d+) ms")


def parse_sets(text: str) -> list[tuple[str, str]]:
  """'a=FLAGS;b=FLAGS' -> [("default", ""), ("a", FLAGS), ...]."""
  out = [("default", "")]
  for part in filter(None, (p.strip() for p in text.split(";"))):
    name, sep, flags = part.partition("=")
    if not sep or not name or not flags:
      raise ValueError(f"bad flag set {part!r}; use NAME=FLAGS")
    out.append((name, flags))
  return out


def parse_medians(stdout: str) -> dict[str, float]:
  """step_ab's lines -> {"shared_step": ms, "fisher_step": ms}."""
  return {m[2]: float(m[3]) for m in LINE.finditer(stdout)}


def summarize(results: dict[str, list[dict]]) -> list[dict]:
  """Median over rounds per set and piece, and the ratio to "default"."""
  rows = []
  base = {}
  for name, runs in results.items():
    pieces = sorted({k for r in runs for k in r})
    for piece in pieces:
      vals = [r[piece] for r in runs if piece in r]
      med = statistics.median(vals) if vals else None
      if name == "default":
        base[piece] = med
      rows.append(
        {"set": name, "piece": piece, "median_ms": med, "n": len(vals)}
      )
  for row in rows:
    b = base.get(row["piece"])
    m = row["median_ms"]
    row["ratio"] = m / b if b and m else None
  return rows


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--sets", required=True)
  ap.add_argument("--estimator", default="batch_grad_squared")
  ap.add_argument("--jsonl", default="")
  a = ap.parse_args()
  try:
    sets = parse_sets(a.sets)
  except ValueError as e:
    ap.error(str(e))
  tunables = versus_reference.main_tunables()
  results = {name: [] for name, _ in sets}
  for r in range(a.rounds):
    order = sets if r % 2 == 0 else sets[::-1]
    for name, flags in order:
      env = {**os.environ, "GLIBC_TUNABLES": tunables, "JAX_PLATFORMS": "cpu"}
      env["XLA_FLAGS"] = f"{BASE_FLAGS} {flags}".strip()
      cmd = [sys.executable, "benchmarks/step_ab.py", "--what=fisher"]
      cmd += [f"--hidden={a.hidden}", f"--reps={a.reps}"]
      cmd += [f"--estimator={a.estimator}"]
      p = subprocess.run(cmd, env=env, capture_output=True, text=True)
      med = parse_medians(p.stdout)
      err = "" if p.returncode == 0 else p.stderr.strip().splitlines()[-1:]
      print(f"round {r} {name}: {med or err}", flush=True)
      if med:
        results[name].append(med)
      if a.jsonl:
        with open(a.jsonl, "a") as f:
          rec = {"round": r, "set": name, "flags": flags, "medians": med}
          f.write(json.dumps({**rec, "error": err, "hidden": a.hidden}) + "\n")
  print(
    f"\nH = {a.hidden}, {a.rounds} rounds × {a.reps} reps; ratio < 1: faster"
  )
  print("| set | piece | median ms | runs | × default |")
  print("|---|---|---:|---:|---:|")
  for row in summarize(results):
    m, x = row["median_ms"], row["ratio"]
    print(
      f"| {row['set']} | {row['piece']} | "
      f"{'-' if m is None else f'{m:.0f}'} | {row['n']} | "
      f"{'-' if x is None else f'{x:.3f}'} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
