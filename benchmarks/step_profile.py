"""Where an ENAS search step's time goes: XLA:CPU's own trace, summed by op.

Usage (run on an otherwise idle machine):

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/step_profile.py \\
      --hidden=1000 --step=shared [--matmul_dtype=bfloat16] [--top=15]

Runs the step (`shared`: `Steps.shared_step`, `fisher`: `Steps.fisher_step`
under `batch_grad_squared`) of the paper-sized child (`enas_bench` "large"
config with N = 12 and `--hidden`) twice, then once under
`jax.profiler.trace`, and prints the trace's op events summed by kind (the
op name without its `.N` suffix): total ms, count, share of the step's
wall time. Kinds: "ynn_fusion" are XLA:CPU's matmul fusions (the
products), "wrapped_add" stand-alone adds (a scan's per-step gradient
accumulation), the rest elementwise fusions, copies and slices. The trace
adds its own overhead (a few %); only shares are compared.

`--products=N` also lists the N slowest matmul fusions one by one, each
with its shapes from the compiled HLO, its calls per step and its rate in
GFLOP/s inside the step (2·M·N·K per call over the traced time: two ops
running at once on the two cores each show the shared time, so a rate
below the stand-alone one can also mean overlap). Products XLA leaves to
its own dot kernel (a transposed operand YNN does not take) run as
thunks whose work the trace does not time; they are not listed.
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def paper_step(hidden: int, step: str, matmul_dtype: str):
  """`(jitted step, args, key)`: the paper-sized child's `step` ("shared",
  "fisher" or "eval"), as this script and `step_hlo.py` build it: the
  `enas_bench` "large" config with N = 12 and `hidden`, WPL on with the
  `batch_grad_squared` Fisher, the first sampled arch; call it as
  `f(*args, key=key)`."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.wpl.estimator = "batch_grad_squared"
  c.model.matmul_dtype = matmul_dtype
  s = enas_bench.setup(c)
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  batch = (arch, s["inputs"], s["targets"], s["hidden"])
  if step == "shared":
    f = jax.jit(s["steps"].shared_step)
    args = (s["shared"], s["wpl"], *batch, jnp.float32(0.1), jnp.float32(1.0))
  elif step == "fisher":
    f = jax.jit(s["steps"].fisher_step)
    args = (s["shared"], s["wpl"], *batch, jnp.float32(2.0))
  else:  # one cell's reward eval: its perplexity on one batch
    archs = jax.tree.map(lambda x: x[:1], s["archs"])
    ev = s["steps"].eval_archs
    f = jax.jit(lambda *args, key: ev(*args))
    args = (s["shared"], archs, *batch[1:])
  return f, args, s["key"]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument(
    "--step", choices=("shared", "fisher", "eval"), default="shared"
  )
  ap.add_argument("--matmul_dtype", default="float32")
  ap.add_argument("--top", type=int, default=15)
  ap.add_argument("--products", type=int, default=0)
  a = ap.parse_args()

  import jax  # noqa: PLC0415

  f, args, key = paper_step(a.hidden, a.step, a.matmul_dtype)
  for _ in range(2):
    jax.block_until_ready(f(*args, key=key))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args, key=key))
      wall = (time.perf_counter() - t0) * 1e3
    path = next(pathlib.Path(d).rglob("*.trace.json.gz"))
    events = json.load(gzip.open(path))["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  per_op, per_op_n = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(("$", "ThunkExecutor")):
      continue
    if "SlinkyThreadPool" in name:
      continue
    kind = re.sub(r"\.\d+$", "", name)
    total[kind] += e["dur"] / 1e3
    count[kind] += 1
    per_op[name] += e["dur"] / 1e3
    per_op_n[name] += 1
  ops = sum(count.values())
  print(
    f"H={a.hidden} {a.step} step, matmul_dtype={a.matmul_dtype}: wall "
    f"{wall:.0f} ms under the trace, {ops} op events, "
    f"{sum(total.values()):.0f} ms in them (two threads may overlap)"
  )
  for kind, ms in total.most_common(a.top):
    print(f"  {ms:8.1f} ms {100 * ms / wall:5.1f} %  {count[kind]:6d}  {kind}")
  if a.products:
    hlo = f.lower(*args, key=key).compile().as_text()
    dots = matmul_fusions(hlo)
    rows = [
      (ms, name, dots[name]) for name, ms in per_op.items() if name in dots
    ]
    print(
      f"matmul fusions: {sum(r[0] for r in rows):.0f} ms in {len(rows)} "
      f"ops; the {a.products} longest (ms, calls, GFLOP/s in the step):"
    )
    for ms, name, (flops, desc) in sorted(rows, reverse=True)[: a.products]:
      n = per_op_n[name]
      rate = flops * n / (ms * 1e6)
      print(f"  {ms:7.1f} ms {n:5d}x {rate:6.0f}  {name}: {desc}")


def matmul_fusions(hlo: str) -> dict[str, tuple[int, str]]:
  """YNN matmul fusion name -> (FLOPs per call, "lhs x rhs -> out") from
  compiled HLO text."""
  comps, cur = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if m:
      cur = comps.setdefault(m.group(1), [])
    elif line.startswith("}"):
      cur = None
    elif cur is not None:
      cur.append(line)
  shape = re.compile(r"\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]")
  call = re.compile(r"\s*(?:ROOT )?%(\S+) = .* kind=kCustom, calls=%(\S+),")
  dot = re.compile(
    r"= (\w+)\[([\d,]*)\]\S* dot\(%(\S+), %(\S+)\).*?"
    r"lhs_contracting_dims=\{([\d,]*)\}"
  )
  out = {}
  for lines in comps.values():
    for line in lines:
      m = call.match(line)
      if not m or "__ynn_fusion" not in line:
        continue
      body = comps.get(m.group(2), [])
      shapes = {}
      for b in body:
        sm = shape.match(b)
        if sm:
          shapes[sm.group(1)] = (sm.group(2), sm.group(3))
      for b in body:
        dm = dot.search(b)
        if not dm:
          continue
        odt, odims, lhs, rhs, lc = dm.groups()
        ldt, ldims = shapes[lhs]
        rdt, rdims = shapes[rhs]
        dims = [int(v) for v in ldims.split(",") if v]
        k = 1
        for i in filter(None, lc.split(",")):
          k *= dims[int(i)]
        size = 1
        for v in filter(None, odims.split(",")):
          size *= int(v)
        desc = f"{ldt}[{ldims}] x {rdt}[{rdims}] -> {odt}[{odims}]"
        out[m.group(1)] = (2 * size * k, desc)
  return out


if __name__ == "__main__":
  main()
