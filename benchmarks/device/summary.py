"""The device run's Markdown summary, from its results JSONL.

  python -m benchmarks.device.summary $OUT/results.jsonl [--junit=FILE]

Prints what came back as tables: the parts (exit status, seconds), the
probe, the test results (from the JUnit XML beside the JSONL), the pieces
of wpl_jax and of the reference's PyTorch code per precision (float32:
JAX "highest" and torch TF32 off; TF32: JAX "tensorfloat32" and torch TF32
on) with the ratio reference / wpl_jax, the ceilings, the projected paper
epoch, the device memory and the end-to-end runs. Rows it does not know
are listed as they are.
"""

import json
import pathlib
import sys
import xml.etree.ElementTree as ET

PIECES = (
  "shared_step",
  "fisher_update",
  "controller_step",
  "reward_eval",
  "eval16_vmapped",
  "eval16_mapped",
  "eval16_sequential",
)
# The reference's names for the same pieces (torch_pieces.py).
ALIASES = {"eval_k16": "eval16_sequential"}
PRECISION = {"highest": "f32", "tensorfloat32": "tf32", "default": "default"}


def load(path: pathlib.Path) -> list[dict]:
  rows = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        rows.append({"unparsed": line[:200]})
  return rows


def _f(v, spec=".2f"):
  return "" if v is None else format(v, spec)


def precision_of(r: dict) -> str:
  if r.get("code") == "reference-pytorch":
    return "tf32" if r.get("tf32") else "f32"
  return PRECISION.get(r.get("precision"), str(r.get("precision")))


def tables(rows: list[dict], junit: pathlib.Path | None) -> str:
  out = []
  parts = [r for r in rows if "part" in r]
  if parts:
    out += ["| part | rc | seconds | limit |", "|---|---|---|---|"]
    out += [
      f"| {r['part']} | {r.get('rc')} | {r.get('seconds')} "
      f"| {r.get('limit', '')} |"
      for r in parts
    ]
  for r in rows:
    if r.get("piece") == "probe":
      keys = (
        "python jax jaxlib cuda_plugin flax optax torch devices "
        "flax_nnx default_f32_matmul_is_tf32 matmul_rel_err_default "
        "matmul_rel_err_highest matmul_rel_err_tensorfloat32"
      ).split()
      out += ["", "| probe | value |", "|---|---|"]
      out += [f"| {k} | {str(r.get(k))[:90]} |" for k in keys]
  if junit and junit.exists():
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {
      k: sum(int(s.get(k, 0)) for s in suites)
      for k in ("tests", "failures", "errors", "skipped")
    }
    out += ["", f"tests on the device: {tot}"]
    for case in root.iter("testcase"):
      for bad in list(case):
        if bad.tag in ("failure", "error"):
          msg = (bad.get("message") or "")[:150]
          out.append(
            f"- {bad.tag}: {case.get('classname')}.{case.get('name')}: {msg}"
          )
  by = {}
  for r in rows:
    piece = ALIASES.get(r.get("piece"), r.get("piece"))
    if piece in PIECES:
      by[(r.get("code"), precision_of(r), piece)] = r
  if by:
    out += [
      "",
      "| piece | precision | wpl_jax ms | reference ms | reference / "
      "wpl_jax | wpl_jax first call s |",
      "|---|---|---|---|---|---|",
    ]
    for piece in PIECES:
      for prec in ("f32", "tf32"):
        j = by.get(("wpl_jax", prec, piece), {})
        t = by.get(("reference-pytorch", prec, piece), {})
        if not j and not t:
          continue
        jm, tm = j.get("median_ms"), t.get("median_ms")
        ratio = f"{tm / jm:.2f}×" if jm and tm else ""
        note = j.get("error") or j.get("skipped") or ""
        note += t.get("error") or t.get("skipped") or ""
        out.append(
          f"| {piece} | {prec} | {_f(jm)} | {_f(tm)} | {ratio} "
          f"| {_f(j.get('first_call_s'), '.1f')} {note[:80]} |"
        )
  rest = [
    r
    for r in rows
    if "part" not in r
    and ALIASES.get(r.get("piece"), r.get("piece")) not in PIECES
    and r.get("piece") != "probe"
  ]
  if rest:
    out += ["", "other rows:"]
    for r in rest:
      keep = {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in r.items()
        if k not in ("jax", "device", "platform", "t_s", "basis")
      }
      out.append("- " + json.dumps(keep)[:400])
  return "\n".join(out)


def main() -> None:
  path = pathlib.Path(sys.argv[1])
  junit = path.parent / "junit.xml"
  for a in sys.argv[2:]:
    if a.startswith("--junit="):
      junit = pathlib.Path(a.split("=", 1)[1])
  print(tables(load(path), junit))


if __name__ == "__main__":
  main()
