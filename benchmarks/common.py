"""Timing, memory and table helpers shared by the benchmark groups."""

import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.monitoring


@dataclasses.dataclass
class Case:
  """One thing to time.

  Attributes:
    name: row label.
    fn: for JAX cases the function to jit; otherwise a no-argument callable
      that runs the work to completion (blocking).
    args: arguments of `fn` (JAX cases only).
    jax: whether `fn` is jitted here (compile time is then measured apart).
    units: work items per call, for a throughput column (e.g. tokens).
    unit_name: their name ("tokens", "steps", "archs").
  """

  name: str
  fn: Callable
  args: tuple = ()
  jax: bool = True
  units: float | None = None
  unit_name: str = ""


@dataclasses.dataclass
class Row:
  """One measured case of a group at a size."""

  group: str
  size: str
  case: str
  median_ms: float
  min_ms: float
  reps: int
  calls_per_rep: int = 1
  compile_s: float | None = None
  temp_mb: float | None = None
  ratio: float | None = None
  baseline: str = ""
  throughput: str = ""
  note: str = ""
  device: str = ""


def _block(x):
  return jax.block_until_ready(x)


def device_facts() -> dict:
  """The platform and kind of the device this process actually runs on."""
  d = jax.devices()[0]
  return {
    "platform": d.platform,
    "device_kind": d.device_kind,
    "device_count": jax.device_count(),
  }


def device_label(facts: dict | None = None) -> str:
  """A table's device column: "cpu", or e.g. "gpu NVIDIA H200"."""
  f = facts or device_facts()
  kind = f.get("device_kind", "")
  if not kind or kind.lower() == f["platform"]:
    return f["platform"]
  return f"{f['platform']} {kind}"


def device_peak_gb() -> float | None:
  """The device's peak bytes in use (GiB), where it reports them (not CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def measure(
  group: str,
  size: str,
  cases: list[Case],
  *,
  reps: int,
  baseline: str | None = None,
  slow_s: float = 2.0,
  min_reps: int = 3,
  min_time_s: float = 0.05,
) -> list[Row]:
  """Compiles, warms up, then times `cases` interleaved; median per case.

  Repetitions run round-robin over the cases so that load from other
  processes on the machine falls on all of them alike. A case whose warm-up
  call took more than `slow_s` seconds gets `min_reps` repetitions only,
  one faster than `min_time_s` three times `reps` (cheap, and the noisiest)
  of enough back-to-back calls to last about `min_time_s` each (the time
  per call is reported).

  Returns:
    One `Row` per case; `ratio` is median / the `baseline` case's median.
  """
  runners, compile_s, temp_mb, want, inner = {}, {}, {}, {}, {}
  for c in cases:
    if c.jax:
      t0 = time.perf_counter()
      compiled = jax.jit(c.fn).lower(*c.args).compile()
      compile_s[c.name] = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      if mem is not None:
        temp_mb[c.name] = mem.temp_size_in_bytes / 2**20
      runners[c.name] = lambda n, compiled=compiled, c=c: _block(
        [compiled(*c.args) for _ in range(n)]
      )
    else:
      runners[c.name] = lambda n, c=c: [c.fn() for _ in range(n)]
    runners[c.name](1)  # warm-up (eager cases: includes first-call setup)
    t0 = time.perf_counter()
    runners[c.name](1)
    first = time.perf_counter() - t0
    want[c.name] = (
      min_reps if first > slow_s else 3 * reps if first < min_time_s else reps
    )
    inner[c.name] = max(1, math.ceil(min_time_s / max(first, 1e-6)))
  times = {c.name: [] for c in cases}
  for r in range(max(want.values())):
    for c in cases:
      if r < want[c.name]:
        n = inner[c.name]
        t0 = time.perf_counter()
        runners[c.name](n)
        times[c.name].append((time.perf_counter() - t0) / n)
  med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
  device = device_label()
  rows = []
  for c in cases:
    ratio = med[c.name] / med[baseline] if baseline in med else None
    thr = ""
    if c.units:
      thr = f"{c.units / (med[c.name] / 1e3):,.0f} {c.unit_name}/s"
    rows.append(
      Row(
        group=group,
        size=size,
        case=c.name,
        median_ms=med[c.name],
        min_ms=min(times[c.name]) * 1e3,
        reps=len(times[c.name]),
        calls_per_rep=inner[c.name],
        compile_s=compile_s.get(c.name),
        temp_mb=temp_mb.get(c.name),
        ratio=ratio,
        baseline=baseline or "",
        throughput=thr,
        device=device,
      )
    )
  return rows


class CompileCounter:
  """Counts XLA backend compilations (a `jax.monitoring` listener)."""

  _EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == self._EVENT:
      self.count += 1


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far (ru_maxrss, MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
  """What the numbers were measured on."""
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit, dirty = "unknown", ""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
    "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    "cpu": cpu,
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device": device_label(),
    "commit": commit + (" (tracked files modified)" if dirty else ""),
    "load_avg_start": os.getloadavg(),
  }


def _fmt(v, spec):
  return "" if v is None else format(v, spec)


def markdown(rows: list[Row]) -> str:
  """The rows as one Markdown table."""
  head = (
    "| group | size | case | median ms | min ms | reps×calls | × baseline "
    "| compile s | XLA temp MiB | throughput | note | device |"
  )
  lines = [head, "|" + "---|" * 12]
  for r in rows:
    ratio = "" if r.ratio is None else f"{r.ratio:.2f}× {r.baseline}"
    lines.append(
      f"| {r.group} | {r.size} | {r.case} | {r.median_ms:.2f} "
      f"| {r.min_ms:.2f} | {r.reps}×{r.calls_per_rep} | {ratio} "
      f"| {_fmt(r.compile_s, '.1f')} "
      f"| {_fmt(r.temp_mb, '.1f')} | {r.throughput} | {r.note} "
      f"| {r.device} |"
    )
  return "\n".join(lines)


def facts_markdown(facts: list[dict]) -> str:
  """A list of flat dicts with the same keys as one Markdown table."""
  keys = list(facts[0])
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(str(f[k]) for k in keys) + " |" for f in facts]
  return "\n".join(lines)


# -- worker processes (one fresh process per measured setting) -------------

RESULT = "RESULT "


# JAX_PLATFORMS for each --platform value (None: the caller's, untouched).
PLATFORMS = ("cpu", "gpu", "cuda", "tpu")


def add_platform_flag(ap, help_extra: str = "") -> None:
  """Adds `--platform` (default: inherit JAX_PLATFORMS) to a parser."""
  ap.add_argument(
    "--platform",
    choices=PLATFORMS,
    default=None,
    help="JAX_PLATFORMS of the workers (default: the caller's environment, "
    "unset means JAX's own choice)" + help_extra,
  )


def worker_env(
  tunables: str | None = None, platform: str | None = None
) -> dict:
  """Environment of a benchmark worker: Eigen single-threaded.

  XLA_FLAGS gains `--xla_cpu_multi_thread_eigen=false` (read by XLA:CPU
  only, harmless on other platforms). `platform`, when not None, sets
  JAX_PLATFORMS ("cpu", "gpu", "cuda", "tpu"); otherwise the caller's
  JAX_PLATFORMS (or its absence) is kept, so a worker runs where the caller
  would: each worker reports what it ran on (`device_facts`). `tunables`,
  when not None, sets GLIBC_TUNABLES ("" clears main.py's huge-page
  setting); otherwise the caller's environment is inherited.
  """
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = flags + " --xla_cpu_multi_thread_eigen=false"
  if platform is not None:
    if platform not in PLATFORMS:
      raise ValueError(f"platform {platform!r} not in {PLATFORMS}")
    env["JAX_PLATFORMS"] = platform
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  return env


def report(result: dict) -> None:
  """Worker side: prints `result` as the line `run_worker` reads."""
  print(RESULT + json.dumps(result), flush=True)


def run_worker(cmd: list[str], env: dict, what: str) -> dict:
  """Runs a worker and returns its last `report`; exits naming `what`."""
  p = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
  if p.returncode or not lines:
    sys.exit(f"worker {what} failed: {p.stderr[-2000:]}")
  return json.loads(lines[-1][len(RESULT) :])
