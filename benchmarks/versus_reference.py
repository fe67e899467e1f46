"""Issue 27: the paper's 2019 PyTorch trainer and wpl_jax, back to back, CPU.

Usage (from the project root, on an otherwise idle machine):

  .venv/bin/python -m benchmarks.versus_reference \\
      [--hidden=16,200,400,1000] [--reps=5] [--time_limit=600] \\
      [--order=torch,jax|jax,torch|alternate] [--torch_threads=N] \\
      [--out=benchmarks/out/versus_reference/STAMP]

Needs `.venv-torch` (torch, numpy, scipy: `python -m venv .venv-torch &&
.venv-torch/bin/pip install torch==2.13.0 numpy scipy`) and the patched
reference in `.device/ref` (`PYTHON=.venv312/bin/python bash
benchmarks/device/prepare.sh`), and the PTB files (`--data`, default
$WPL_DATA_DIR/ptb or ../shared/data/ptb).

First both libraries' float32 GEMM ceiling (`--gemm`³, default 2048, median
of `--gemm_reps`; one tiny subprocess each, in the env of its side). Then,
for each width H, one fresh subprocess per side, one right after the other:

* the reference (`benchmarks/device/torch_pieces.py --device=cpu --tf32=0`,
  `.venv-torch`): the paper's own `Trainer` methods, unmodified, clocked by
  markers around its statements; torch at its default thread count (all
  cores) unless `--torch_threads`;
* wpl_jax (`python -m benchmarks.device.jax_pieces --precision=highest`,
  this interpreter, JAX_PLATFORMS=cpu, and GLIBC_TUNABLES as main.py sets
  it, `glibc.malloc.hugetlb=1`, read from main.py; `--jax_tunables`
  overrides): the search's own jitted steps (`jit_steps`);
  XLA:CPU uses all cores.

Both build the paper's ENAS RNN search at width H (12 nodes, vocabulary
10000, batch 64 × 35, WPL on) and time, `--reps` times after warm-up:

* shared step: one training batch of the shared model, WPL term included
  (forward, backward, gradient clipping, SGD step);
* Fisher update: after an architecture's batches, a validation batch's
  gradient squared into the Fisher diagonal and the anchor update;
* controller step: sample cells, score them on a validation batch with the
  shared model, REINFORCE update. Not the same work: the reference samples
  and scores `policy_batch_size` = 5 cells per step (its default), wpl_jax's
  paper config `controller.batch_size` = 1;
* reward eval: one cell's loss on one validation batch (no gradient);
* eval K=16: 16 cells scored on one validation batch one at a time
  (reference: `derive(16)`, which also samples the 16 cells; wpl_jax:
  `eval_archs` mapped one cell at a time, `eval16_mapped`, the CPU
  default).

Each side writes its rows as JSON lines (`--out`/raw/SIDE_hH.jsonl, its
output in .log beside); the driver gathers them, with the machine, the
ceilings and each subprocess's command, env and exit status, into
`--out`/records.jsonl and prints the table (also `--out`/table.md):
H | piece | reference median ms | wpl_jax median ms | × (reference /
wpl_jax), then the paper epoch both sides' medians project (61 archs × 7
shared steps + 61 Fisher updates + 2000 controller steps; the projection
of torch_pieces.py). Exit status 1 if a prerequisite is missing, 2 if a
subprocess failed (the table is still written).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import time

from benchmarks.device import summary, torch_pieces

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = "reference-pytorch"  # torch_pieces.CODE
JAX = "wpl_jax"  # jax_pieces' code
SIDES = ("torch", "jax")
# (row label, the reference's piece, wpl_jax's piece)
PAIRS = (
  ("shared step", "shared_step", "shared_step"),
  ("Fisher update", "fisher_update", "fisher_update"),
  ("controller step", "controller_step", "controller_step"),
  ("controller step, 5 cells both", "controller_step", "controller_step_k5"),
  ("reward eval", "reward_eval", "reward_eval"),
  ("eval K=16", "eval_k16", "eval16_mapped"),
)
BUSY = 0.25  # CPU busy above this fraction with nothing of ours running
FLAG_RE = re.compile(r"^(avx512.*|amx.*|avx_vnni)$")
ENV_KEYS = (
  "GLIBC_TUNABLES",
  "JAX_PLATFORMS",
  "XLA_FLAGS",
  "OMP_NUM_THREADS",
  "MKL_NUM_THREADS",
)
MISSING_TORCH = (
  "make it: python -m venv .venv-torch && .venv-torch/bin/pip install "
  "torch==2.13.0 numpy scipy"
)
MISSING_REF = (
  "make it: PYTHON=.venv312/bin/python bash benchmarks/device/prepare.sh"
)

TORCH_GEMM = """
import json, statistics, sys, time
import torch
n, reps, threads = (int(v) for v in sys.argv[1:4])
if threads > 0:
  torch.set_num_threads(threads)
torch.set_float32_matmul_precision("highest")
g = torch.Generator().manual_seed(0)
a = torch.randn(n, n, generator=g)
b = torch.randn(n, n, generator=g)
for _ in range(2):
  a @ b
ts = []
for _ in range(reps):
  t0 = time.perf_counter()
  a @ b
  ts.append(time.perf_counter() - t0)
print(json.dumps({"code": "reference-pytorch", "times_s": ts,
  "torch": torch.__version__, "torch_threads": torch.get_num_threads()}))
"""
JAX_GEMM = """
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
n, reps = (int(v) for v in sys.argv[1:3])
rng = np.random.default_rng(0)
a = jnp.asarray(rng.standard_normal((n, n), np.float32))
b = jnp.asarray(rng.standard_normal((n, n), np.float32))
f = jax.jit(jnp.matmul)
for _ in range(2):
  f(a, b).block_until_ready()
ts = []
for _ in range(reps):
  t0 = time.perf_counter()
  f(a, b).block_until_ready()
  ts.append(time.perf_counter() - t0)
print(json.dumps({"code": "wpl_jax", "times_s": ts, "jax": jax.__version__,
  "platform": jax.devices()[0].platform}))
"""


# ---------------------------------------------------------------- pure parts


def main_tunables(main_py: pathlib.Path = ROOT / "main.py") -> str:
  """main.py's TUNABLES, read from its source (importing it defines flags)."""
  for node in ast.parse(main_py.read_text()).body:
    if isinstance(node, ast.Assign) and any(
      isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets
    ):
      return ast.literal_eval(node.value)
  raise ValueError(f"no TUNABLES = ... in {main_py}")


def side_order(order: str, i: int) -> tuple[str, str]:
  """The sides' order for the i-th width: `--order` as given, or alternating
  (torch first at even i)."""
  if order == "alternate":
    return SIDES if i % 2 == 0 else SIDES[::-1]
  sides = tuple(order.split(","))
  if sorted(sides) != sorted(SIDES):
    raise ValueError(f"--order {order!r}: torch,jax, jax,torch or alternate")
  return sides


def gemm_row(out: dict, n: int) -> dict:
  """A ceiling subprocess's output -> median/min ms and GFLOP/s."""
  ts = out.pop("times_s")
  med = statistics.median(ts)
  return {
    "kind": "ceiling",
    **out,
    "n": n,
    "median_ms": med * 1e3,
    "min_ms": min(ts) * 1e3,
    "reps": len(ts),
    "gflops": 2 * n**3 / med / 1e9,
  }


def lscpu_facts(text: str) -> dict:
  """Model name, CPU counts and the matrix/vector flags from `lscpu`."""
  kv = {}
  for line in text.splitlines():
    if ":" in line:
      k, v = line.split(":", 1)
      kv.setdefault(k.strip(), v.strip())
  flags = [f for f in kv.get("Flags", "").split() if FLAG_RE.match(f)]
  return {
    "model_name": kv.get("Model name"),
    "cpus": kv.get("CPU(s)"),
    "cores_per_socket": kv.get("Core(s) per socket"),
    "sockets": kv.get("Socket(s)"),
    "threads_per_core": kv.get("Thread(s) per core"),
    "hypervisor": kv.get("Hypervisor vendor"),
    "flags": flags,
  }


def split_rows(rows: list[dict]) -> tuple[dict, dict]:
  """Float32 piece rows -> ({(H, piece): row} of the reference, of wpl_jax).

  A later row of the same H and piece replaces an earlier one.
  """
  ref, jx = {}, {}
  for r in rows:
    if "piece" not in r or r.get("kind") or summary.precision_of(r) != "f32":
      continue
    key = (r.get("hidden"), r["piece"])
    if r.get("code") == REF:
      ref[key] = r
    elif r.get("code") == JAX:
      jx[key] = r
  return ref, jx


def _note(r: dict | None, side: str) -> str:
  if r is None:
    return f"{side}: no row"
  why = r.get("error") or r.get("skipped")
  return f"{side}: {why}" if why else ""


def ratio(ref_ms, jax_ms):
  """reference / wpl_jax, None unless both are positive numbers."""
  if ref_ms and jax_ms and ref_ms > 0 and jax_ms > 0:
    return ref_ms / jax_ms
  return None


def pair_pieces(rows: list[dict]) -> list[dict]:
  """One dict per (H, piece of PAIRS) seen on either side, H ascending."""
  ref, jx = split_rows(rows)
  widths = sorted({h for h, _ in (*ref, *jx) if h is not None})
  out = []
  for h in widths:
    for label, rp, jp in PAIRS:
      t, j = ref.get((h, rp)), jx.get((h, jp))
      if t is None and j is None:
        continue
      tm = (t or {}).get("median_ms")
      jm = (j or {}).get("median_ms")
      notes = [n for n in (_note(t, "reference"), _note(j, "wpl_jax")) if n]
      out.append(
        {
          "hidden": h,
          "piece": label,
          "reference_ms": tm,
          "wpl_jax_ms": jm,
          "ratio": ratio(tm, jm),
          "note": "; ".join(notes),
        }
      )
  return out


def epochs(rows: list[dict]) -> list[dict]:
  """The paper epoch projected from each side's medians, per H (seconds)."""
  ref, jx = split_rows(rows)
  out = []
  for h in sorted({h for h, _ in (*ref, *jx) if h is not None}):
    row = {"hidden": h}
    for name, side in (("reference", ref), ("wpl_jax", jx)):
      med = {p: r.get("median_ms") for (hh, p), r in side.items() if hh == h}
      proj = torch_pieces.projection(med)
      row[f"{name}_s"] = proj.get("projected_s")
    row["ratio"] = ratio(row["reference_s"], row["wpl_jax_s"])
    out.append(row)
  return out


def _f(v, spec=".2f"):
  return "" if v is None else format(v, spec)


def _x(v):
  return "" if v is None else f"{v:.2f}×"


def _env_text(env: dict) -> str:
  return ", ".join(
    f"{k}={v!r}" if v is not None else f"{k} unset" for k, v in env.items()
  )


def markdown(rows: list[dict]) -> str:
  """The Markdown report of a run's records (machine, ceilings, tables)."""
  meta = [r for r in rows if r.get("kind") == "machine"]
  ceil = {r["code"]: r for r in rows if r.get("kind") == "ceiling"}
  runs = [r for r in rows if r.get("kind") == "run"]
  lines = ["# wpl_jax versus the paper's PyTorch trainer (CPU, float32)", ""]
  low = sorted(
    {
      r["matmul_dtype"]
      for r in rows
      if r.get("code") == JAX and r.get("matmul_dtype", "float32") != "float32"
    }
  )
  if low:  # an opt-in of wpl_jax's: say so before anything else
    lines += [
      f"- **wpl_jax ran with model.matmul_dtype = {', '.join(low)}** (the "
      "model's large products on bf16 inputs; the reference is float32)",
    ]
  if meta:
    m = meta[-1]
    c = m.get("cpu", {})
    lines.append(
      f"- machine: {c.get('model_name')}; {c.get('cpus')} CPUs "
      f"({c.get('sockets')} socket × {c.get('cores_per_socket')} cores × "
      f"{c.get('threads_per_core')} threads), os.cpu_count "
      f"{m.get('cpu_count')}, affinity {m.get('affinity')}"
      + (f", {c['hypervisor']} guest" if c.get("hypervisor") else "")
    )
    lines.append(f"- flags: {' '.join(c.get('flags') or []) or 'none'}")
    mod = m.get("modified") or []
    names = ", ".join(mod[:6]) + (", …" if len(mod) > 6 else "")
    lines.append(
      f"- commit {m.get('commit')}"
      + (f" + {len(mod)} modified files ({names})" if mod else "")
      + f"; started {m.get('started')}, ended "
      f"{m.get('ended')}; load average at start {m.get('load_start')}, "
      f"at end {m.get('load_end')}"
    )
    busy = [
      f"{when} {frac:.0%}"
      for when, frac in (
        ("start", m.get("busy_start")),
        ("end", m.get("busy_end")),
      )
      if frac is not None and frac > BUSY
    ]
    if busy:
      lines.append(
        f"- WARNING: the machine was not idle (CPU busy over 2 s with no "
        f"benchmark running, at {' and at '.join(busy)}): the times are not "
        "a measurement"
      )
    lines.append(
      f"- reps {m.get('reps')} per piece, time limit {m.get('time_limit')} s "
      f"per side, order {m.get('order')}"
    )
  for code, name in ((REF, "reference (torch)"), (JAX, "wpl_jax (XLA)")):
    r = ceil.get(code)
    if r is None:
      continue
    if "gflops" in r:
      ver = r.get("torch") or r.get("jax") or "?"
      thr = r.get("torch_threads")
      lines.append(
        f"- f32 GEMM ceiling, {name} {ver}"
        + (f", {thr} threads" if thr else "")
        + f": {r['n']}³ {r['median_ms']:.1f} ms median of {r['reps']}, "
        f"{r['gflops']:.1f} GFLOP/s"
      )
    else:
      lines.append(f"- f32 GEMM ceiling, {name}: {r.get('error')}")
  for side in SIDES:
    rs = [r for r in runs if r.get("side") == side]
    if rs:
      envs = {_env_text(r.get("env", {})) for r in rs}
      extra = sorted({str(r.get("threads")) for r in rs if r.get("threads")})
      lines.append(
        f"- {side} side env: {' | '.join(sorted(envs))}"
        + (f"; torch threads {', '.join(extra)}" if extra else "")
      )
  bad = [r for r in runs if r.get("rc")]
  for r in bad:
    lines.append(
      f"- FAILED: {r['side']} at H={r['hidden']}: rc {r['rc']} ({r.get('log')})"
    )
  lines += [
    "",
    "| H | piece | reference median ms | wpl_jax median ms | "
    "× (reference / wpl_jax) | note |",
    "|---:|---|---:|---:|---:|---|",
  ]
  for p in pair_pieces(rows):
    lines.append(
      f"| {p['hidden']} | {p['piece']} | {_f(p['reference_ms'])} "
      f"| {_f(p['wpl_jax_ms'])} | {_x(p['ratio'])} | {p['note'][:120]} |"
    )
  lines += [
    "",
    "controller step: the reference scores 5 cells per step "
    "(policy_batch_size 5; its reward is the last cell's), wpl_jax 1 "
    '(controller.batch_size 1, the paper config); "5 cells both" runs '
    "wpl_jax's step at controller.batch_size 5, the same forwards. "
    "eval K=16: the reference's `derive(16)` also samples the 16 cells; "
    "wpl_jax's is `eval_archs` mapped one cell at a time (`eval16_mapped`).",
    "",
    "Paper epoch projected from the medians (61 archs × 7 shared steps + "
    "61 Fisher updates + 2000 controller steps):",
    "",
    "| H | reference s | wpl_jax s | × |",
    "|---:|---:|---:|---:|",
  ]
  for e in epochs(rows):
    lines.append(
      f"| {e['hidden']} | {_f(e['reference_s'], '.1f')} "
      f"| {_f(e['wpl_jax_s'], '.1f')} | {_x(e['ratio'])} |"
    )
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------- the run


def _args(argv=None) -> argparse.Namespace:
  data = pathlib.Path(
    os.environ.get("WPL_DATA_DIR", ROOT.parent / "shared" / "data")
  )
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M")
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", default="16,200,400,1000")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument(
    "--time_limit", type=float, default=600.0, help="seconds per side and H"
  )
  ap.add_argument(
    "--kill_after",
    type=float,
    default=0.0,
    help="hard limit per subprocess, s (0: 2 × time_limit + 300)",
  )
  ap.add_argument("--order", default="torch,jax")
  ap.add_argument("--torch_threads", type=int, default=0, help="0: default")
  ap.add_argument(
    "--torch_python", default=str(ROOT / ".venv-torch/bin/python")
  )
  ap.add_argument("--jax_python", default=sys.executable)
  ap.add_argument("--ref", default=str(ROOT / ".device" / "ref"))
  ap.add_argument("--data", default=str(data / "ptb"))
  ap.add_argument(
    "--jax_tunables",
    default=None,
    help="GLIBC_TUNABLES of the jax side (default: main.py's TUNABLES)",
  )
  ap.add_argument("--gemm", type=int, default=2048)
  ap.add_argument("--gemm_reps", type=int, default=10)
  ap.add_argument("--torch_extra", default="", help="more torch_pieces flags")
  ap.add_argument("--jax_extra", default="", help="more jax_pieces flags")
  ap.add_argument(
    "--out",
    default=str(ROOT / "benchmarks" / "out" / "versus_reference" / stamp),
  )
  a = ap.parse_args(argv)
  try:
    a.widths = [int(h) for h in a.hidden.split(",") if h]
    side_order(a.order, 0)
  except ValueError as e:
    ap.error(str(e))
  if a.reps < 1 or not a.widths:
    ap.error("--reps >= 1 and at least one --hidden")
  if a.kill_after <= 0:
    a.kill_after = 2 * a.time_limit + 300
  return a


def check_prerequisites(a) -> None:
  """Exits with one line naming what is missing and how to make it."""
  if not os.path.isfile(a.torch_python):
    sys.exit(f"versus_reference: no {a.torch_python}; {MISSING_TORCH}")
  p = subprocess.run(
    [a.torch_python, "-c", "import torch, numpy, scipy"],
    capture_output=True,
    text=True,
  )
  if p.returncode:
    last = (p.stderr.strip().splitlines() or ["?"])[-1]
    sys.exit(f"versus_reference: {a.torch_python}: {last}; {MISSING_TORCH}")
  if not os.path.isfile(os.path.join(a.ref, "PATCHES.txt")):
    sys.exit(
      f"versus_reference: no prepared reference in {a.ref}; {MISSING_REF}"
    )
  try:
    torch_pieces.find_ptb(a.data)
  except FileNotFoundError as e:
    sys.exit(f"versus_reference: {e} (set --data or WPL_DATA_DIR)")


def envs(a) -> dict:
  """The environment of each side: torch as the caller's; jax as main.py."""
  torch_env = dict(os.environ)
  jax_env = dict(os.environ, JAX_PLATFORMS="cpu")
  jax_env["GLIBC_TUNABLES"] = (
    main_tunables() if a.jax_tunables is None else a.jax_tunables
  )
  return {"torch": torch_env, "jax": jax_env}


def shown(env: dict) -> dict:
  return {k: env.get(k) for k in ENV_KEYS}


def machine(a) -> dict:
  try:
    text = subprocess.run(
      ["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}
    ).stdout
  except OSError:
    text = ""
  git = ["git", "-C", str(ROOT)]
  commit = subprocess.run(
    [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
  ).stdout.strip()
  dirty = subprocess.run(
    [*git, "status", "--porcelain", "--untracked-files=all"],
    capture_output=True,
    text=True,
  ).stdout.rstrip()
  return {
    "kind": "machine",
    "cpu": lscpu_facts(text),
    "cpu_count": os.cpu_count(),
    "affinity": len(os.sched_getaffinity(0)),
    "commit": commit,
    # The jax side imports the work tree: what differs from the commit.
    "modified": [ln[3:] for ln in dirty.splitlines()],
    "started": _now(),
    "load_start": [round(v, 2) for v in os.getloadavg()],
    "reps": a.reps,
    "time_limit": a.time_limit,
    "order": a.order,
    "widths": a.widths,
  }


def busy_fraction(seconds: float = 2.0) -> float:
  """Fraction of all CPUs' time spent busy over `seconds` (/proc/stat).

  Sampled when none of this driver's subprocesses runs, so it sees only
  the rest of the machine (a load average would count our own runs).
  """

  def sample():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v), idle

  t0, i0 = sample()
  time.sleep(seconds)
  t1, i1 = sample()
  return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
    timespec="seconds"
  )


def ceiling(side: str, a, env: dict) -> dict:
  if side == "torch":
    cmd = [a.torch_python, "-c", TORCH_GEMM, str(a.gemm), str(a.gemm_reps)]
    cmd.append(str(a.torch_threads))
    code = REF
  else:
    cmd = [a.jax_python, "-c", JAX_GEMM, str(a.gemm), str(a.gemm_reps)]
    code = JAX
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
  if p.returncode or not lines:
    err = (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"kind": "ceiling", "code": code, "error": err, "env": shown(env)}
  return {**gemm_row(json.loads(lines[-1]), a.gemm), "env": shown(env)}


def pieces_cmd(side: str, a, h: int, jsonl: pathlib.Path) -> list[str]:
  common = [f"--hidden={h}", f"--reps={a.reps}", f"--time_limit={a.time_limit}"]
  if side == "torch":
    cmd = [a.torch_python, str(ROOT / "benchmarks/device/torch_pieces.py")]
    cmd += [f"--ref={a.ref}", f"--data={a.data}", "--device=cpu", "--tf32=0"]
    cmd += [f"--threads={a.torch_threads}", *common, f"--jsonl={jsonl}"]
    return cmd + shlex.split(a.torch_extra)
  cmd = [a.jax_python, "-m", "benchmarks.device.jax_pieces"]
  cmd += ["--precision=highest", f"--gemm={a.gemm}", *common]
  return cmd + [f"--jsonl={jsonl}", *shlex.split(a.jax_extra)]


def run_side(side: str, a, h: int, env: dict, out: pathlib.Path):
  """One side at width H in a fresh process -> (run record, its rows)."""
  raw = out / "raw"
  jsonl, log = raw / f"{side}_h{h}.jsonl", raw / f"{side}_h{h}.log"
  jsonl.unlink(missing_ok=True)
  cmd = pieces_cmd(side, a, h, jsonl)
  started, t0 = _now(), time.perf_counter()
  with open(log, "w") as fh:
    try:
      rc = subprocess.run(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        timeout=a.kill_after,
      ).returncode
    except subprocess.TimeoutExpired:
      rc = "killed after --kill_after"
  rows = summary.load(jsonl) if jsonl.exists() else []
  threads = None
  for r in rows:
    m = re.search(r"(\d+) threads\)", str(r.get("device", "")))
    threads = int(m.group(1)) if m else threads
  run = {
    "kind": "run",
    "side": side,
    "hidden": h,
    "rc": rc,
    "seconds": round(time.perf_counter() - t0, 1),
    "started": started,
    "cmd": cmd,
    "env": shown(env),
    "log": str(log),
    "threads": threads,
  }
  return run, rows


def main(argv=None) -> int:
  a = _args(argv)
  check_prerequisites(a)
  out = pathlib.Path(a.out)
  (out / "raw").mkdir(parents=True, exist_ok=True)
  env = envs(a)
  records = [machine(a)]
  records[0]["busy_start"] = busy_fraction()
  if records[0]["busy_start"] > BUSY:
    print(
      f"versus_reference: WARNING: the CPUs are {records[0]['busy_start']:.0%}"
      " busy before the benchmark starts: the machine is not idle",
      file=sys.stderr,
      flush=True,
    )
  for side in side_order(a.order, 0):
    records.append(ceiling(side, a, env[side]))
    print(json.dumps(records[-1]), flush=True)
  failed = False
  for i, h in enumerate(a.widths):
    for side in side_order(a.order, i):
      run, rows = run_side(side, a, h, env[side], out)
      failed |= bool(run["rc"])
      records += [run, *rows]
      print(
        f"H={h} {side}: rc {run['rc']}, {run['seconds']} s, "
        f"{len(rows)} rows ({run['log']})",
        flush=True,
      )
  records[0]["ended"] = _now()
  records[0]["load_end"] = [round(v, 2) for v in os.getloadavg()]
  records[0]["busy_end"] = busy_fraction()  # our processes have ended
  with open(out / "records.jsonl", "w") as fh:
    fh.writelines(json.dumps(r) + "\n" for r in records)
  text = markdown(records)
  (out / "table.md").write_text(text)
  print("\n" + text + f"\nrecords and table in {out}", flush=True)
  return 2 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
