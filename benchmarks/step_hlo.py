"""What XLA compiled for an ENAS training step: copies and fusion sizes.

Usage:

  python benchmarks/step_hlo.py --hidden=200 [--matmul_dtype=bfloat16] \\
      [--step=shared|fisher] [--out=FILE]

Compiles the step of the paper-sized child (`enas_bench` "large" config
with N = 12 and `--hidden`, as `step_profile.py` builds it), without
running it, and prints from the compiled HLO text:

* the copies of a whole [N, B, H] node array (WORKSPACE §6.9–6.10), and
  every copy op counted by shape, with how many sit in the entry
  computation (once per step) and how many in other computations (loop
  bodies: once per time step);
* the op counts of the highway backward's fusions (the
  `multiply_concatenate` fusions): how much of other nodes' arithmetic
  XLA fused, and so recomputes, into each node's backward pass. XLA
  names them so at small H (16, f32); where it names them otherwise
  (H = 200) the list is empty.

`--out` also writes the HLO text. Takes ~30 s (compile only).
"""

import argparse
import collections
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def computations(hlo: str) -> list[tuple[str, str]]:
  """(header line, body) of each computation in an HLO module's text."""
  out = []
  for block in re.split(r"\n\n", hlo):
    lines = block.strip().split("\n")
    if lines and lines[0].rstrip().endswith("{"):
      out.append((lines[0], "\n".join(lines[1:])))
  return out


def census(hlo: str, nodes_shape: str) -> dict:
  """Copy counts and the highway backward fusions' op counts."""
  copies = collections.Counter()
  where = collections.Counter()
  for head, body in computations(hlo):
    for shape in re.findall(r"= (\S+) copy\(", body):
      copies[shape] += 1
      where["entry" if head.startswith("ENTRY") else "other"] += 1
  node_copies = sum(
    n for s, n in copies.items() if s.startswith(nodes_shape + "{")
  )
  bodies = dict(
    (re.match(r"(%[\w.\-]+)", h).group(1), b)
    for h, b in computations(hlo)
    if h.startswith("%")
  )
  called = re.findall(
    r"%multiply_concatenate_fusion[.\d]* = [^\n]*calls=(%[\w.\-]+)", hlo
  )
  sizes = sorted(len(re.findall(r"= \S+ [\w\-]+\(", bodies[c])) for c in called)
  return {
    "node_copies": node_copies,
    "copies": copies,
    "where": where,
    "bwd_fusion_ops": sizes,
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=200)
  ap.add_argument("--step", choices=("shared", "fisher"), default="shared")
  ap.add_argument("--matmul_dtype", default="float32")
  ap.add_argument("--out", default="")
  a = ap.parse_args()

  from benchmarks import step_profile  # noqa: PLC0415

  f, args, key = step_profile.paper_step(a.hidden, a.step, a.matmul_dtype)
  hlo = f.lower(*args, key=key).compile().as_text()
  if a.out:
    pathlib.Path(a.out).write_text(hlo)
  b = args[3].shape[1]  # inputs [T, B]
  r = census(hlo, f"f32[12,{b},{a.hidden}]")
  print(
    f"H={a.hidden} {a.step} step, matmul_dtype={a.matmul_dtype}: "
    f"{r['node_copies']} copies of the [12, {b}, {a.hidden}] node array; "
    f"{sum(r['copies'].values())} copy ops ({r['where']['entry']} in the "
    f"entry computation, {r['where']['other']} elsewhere)"
  )
  for shape, n in r["copies"].most_common(6):
    print(f"  {n:4d} × {shape}")
  print(f"highway backward fusions, ops each: {r['bwd_fusion_ops']}")


if __name__ == "__main__":
  main()
