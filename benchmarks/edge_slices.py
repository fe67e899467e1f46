"""Issue 27: the per-step copies of the edge matrices in the time scan.

  python benchmarks/edge_slices.py --what=hlo --hidden=1000
      compiles the ENAS shared step (`enas_bench` "large", 12 nodes, WPL,
      `search.grad_after_scan_from` as --gas) and lists, for every while
      loop of the compiled HLO, the ops with a float32 output of at least
      200k elements (and every dot): a kLoop fusion "parameter, slice" of
      shape [H, 2H] is one edge matrix copied out of the [11, H, 2H] stack.
  python benchmarks/edge_slices.py --what=ab --hidden=1000 --reps=5
      a stand-alone recurrence (35 steps of 11 highway nodes, B = 64, the
      node loop unrolled as the search's is), jax.grad of a scalar of its
      outputs, two ways, alternately: the node matrices sliced from the
      stack inside the time step ("stacked", as the supernet does today)
      and split once before the scan behind `lax.optimization_barrier`
      ("split"); median ms of each and the largest gradient difference.

XLA_FLAGS default to XLA's multi-threaded eigen, as main.py runs. Run on
an otherwise idle machine.
"""

import argparse
import collections
import os
import re
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def _ab(hidden: int, reps: int) -> None:
  t, b, n, h = 35, 64, 11, hidden
  key = jax.random.key(0)
  edges = jax.random.normal(key, (n, h, 2 * h)) * 0.02
  x_txbxh = jax.random.normal(key, (t, b, h))

  def make(split: bool):
    def loss(e, xs):
      rows = (
        jax.lax.optimization_barrier(tuple(e[i] for i in range(n)))
        if split
        else None
      )

      def step(hid, x):
        nodes = [hid + x]
        for j in range(n):
          z = nodes[-1] @ (rows[j] if split else e[j])
          c, cand = jax.nn.sigmoid(z[:, :h]), jnp.tanh(z[:, h:])
          nodes.append(nodes[-1] + c * (cand - nodes[-1]))
        out = sum(nodes[1:]) / n
        return out, out

      _, outs = jax.lax.scan(step, jnp.zeros((b, h)), xs)
      return jnp.mean(outs**2)

    return jax.jit(jax.grad(loss))

  fns = {"stacked": make(False), "split": make(True)}
  for f in fns.values():
    jax.block_until_ready(f(edges, x_txbxh))
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(edges, x_txbxh))
      times[k].append(1000 * (time.perf_counter() - t0))
  for k, v in times.items():
    print(
      f"{k}: median {np.median(v):.0f} ms  ({', '.join(f'{x:.0f}' for x in v)})"
    )
  ratio = np.median(times["split"]) / np.median(times["stacked"])
  print(f"split / stacked: {ratio:.3f}")
  g1, g2 = fns["stacked"](edges, x_txbxh), fns["split"](edges, x_txbxh)
  print(
    f"max |gradient difference| {float(jnp.max(jnp.abs(g1 - g2))):.3g} "
    f"(max |gradient| {float(jnp.max(jnp.abs(g1))):.3g})"
  )


def _size(shape: str) -> int:
  total = 0
  for dims in re.findall(r"f32\[([\d,]*)\]", shape):
    total += int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


def _hlo(hidden: int, gas: int) -> None:
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  from benchmarks import enas_bench  # noqa: PLC0415

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.search.grad_after_scan_from = gas
  s = enas_bench.setup(c)
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  step = jax.jit(s["steps"].shared_step)
  args = (s["shared"], s["wpl"], arch, s["inputs"], s["targets"], s["hidden"])
  args += (jnp.float32(0.1), jnp.float32(1.0))
  text = step.lower(*args, key=s["key"]).compile().as_text()
  comps, cur = {}, None
  for line in text.splitlines():
    m = (
      None
      if line.startswith(" ")
      else re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    )
    if m:
      cur = m.group(1)
      comps[cur] = []
    elif cur and line.strip() not in ("", "}"):
      comps[cur].append(line.strip())
  op_re = re.compile(r"%?([\w.\-]+) = (\S+(?: \S+)?) (\w[\w\-]*)\(")
  for lines in list(comps.values()):
    for line in lines:
      if " while(" not in line:
        continue
      body = re.search(r"body=%?([\w.\-]+)", line).group(1)
      trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      print(f"\nwhile body {body}, trip count {trip.group(1) if trip else '?'}")
      kinds = collections.Counter()
      for inner in comps.get(body, []):
        m = op_re.match(inner)
        if not m:
          continue
        _, shape, op = m.groups()
        what = op
        if op == "fusion":
          called = re.search(r"calls=%?([\w.\-]+)", inner).group(1)
          ops = collections.Counter(
            op_re.match(x).group(3)
            for x in comps.get(called, [])
            if op_re.match(x)
          )
          what = "fusion(" + ",".join(sorted(ops)) + ")"
        if _size(shape) >= 200_000 or op == "dot":
          kinds[(what, shape.split("{")[0])] += 1
      for (what, shape), k in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {k:3d} × {shape:28s} {what[:90]}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--what", choices=("ab", "hlo"), default="ab")
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--gas", type=int, default=1, help="grad_after_scan_from")
  args = ap.parse_args()
  if args.what == "ab":
    _ab(args.hidden, args.reps)
  else:
    _hlo(args.hidden, args.gas)


if __name__ == "__main__":
  main()
