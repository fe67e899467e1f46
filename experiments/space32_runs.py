"""Runs the 32-cell searches (policy × WPL × seed) and stores each result.

  python experiments/space32_runs.py --root=runs/s32 --seeds=0,1,2 \
      [--groups=enas:off,random:reference] [--data_dir=../shared/data/ptb]
  python experiments/space32_runs.py --variants=published,concentrate \
      --root=runs/s32pub --seeds=0,...,11 --groups=enas:off,enas:reference,...

For every policy (enas, random) × WPL (off, reference, clean) × seed not
yet stored, runs `main.py --config=experiments/space32.py:POLICY,WPL
--config.seed=S --workdir=ROOT/POLICY_WPL_sS` (a killed run resumes from
its checkpoint when this is rerun), then copies its per-epoch records into
`experiments/results/space32_runs/POLICY_WPL_sS.json` (small: one record
per epoch; with --variants, `space32_runs_VARIANTS/`, the variants joined
by "_") with the command and the commit, so that each finished run can
be committed as it lands. A run that diverges (main.py's "diverged at
epoch" error) is stored too, with its records so far and the error under
"diverged", and the next run starts; any other failure stops the driver.
`space32_report.py --runs=` reads these files as well as workdirs.

With --in_one, each arm's seeds not yet stored run side by side in one
program (`--config.search.num_seeds`, one run per block of consecutive
seeds, workdir ROOT/POLICY_WPL_sA-B): each seed's records and divergence
are stored as above, with "in_one" naming the block. Each seed equals its
one-seed run up to float rounding (tests/search_seeds_test.py); on a CPU
it buys no speed, on an accelerator S seeds cost about one (WORKSPACE §7.10).
"""

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from wpl_jax.runtime import metrics as metrics_lib  # noqa: E402

RESULTS = _ROOT / "experiments" / "results" / "space32_runs"
POLICIES = ("enas", "random")
WPL = ("off", "reference", "clean")

_RUN_ROOT = flags.DEFINE_string("root", "runs/s32", "Folder of the workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_GROUPS = flags.DEFINE_list(
  "groups", None, "POLICY:WPL pairs (default: all 6)."
)
_DATA = flags.DEFINE_string("data_dir", "../shared/data/ptb", "PTB folder.")
_VARIANTS = flags.DEFINE_list(
  "variants", [], "More space32.py variants for every run (e.g. published)."
)
_IN_ONE = flags.DEFINE_bool(
  "in_one", False, "An arm's seeds side by side in one program each."
)
_IMPORT = flags.DEFINE_string(
  "import_root",
  None,
  "Store the seeds of finished POLICY_WPL_sA-B workdirs under this folder "
  "(e.g. a device run's searches.tgz, unpacked) instead of running.",
)
_IMPORT_COMMIT = flags.DEFINE_string(
  "import_commit", "", "With --import_root: the commit the runs used."
)
_EXTRA = flags.DEFINE_multi_string(
  "set", [], "More main.py flags for every run (e.g. --set=--config.x=1)."
)


def results_dir(variants: list[str]) -> pathlib.Path:
  """Where the runs of these extra variants are stored."""
  if not variants:
    return RESULTS
  return RESULTS.with_name(f"{RESULTS.name}_{'_'.join(variants)}")


def _commit() -> str:
  r = subprocess.run(
    ["git", "-C", str(_ROOT), "rev-parse", "HEAD"],
    capture_output=True,
    text=True,
    check=False,
  )
  return r.stdout.strip()


def main(argv):
  del argv
  groups = (
    [tuple(g.split(":")) for g in _GROUPS.value]
    if _GROUPS.value
    else [(p, w) for p in POLICIES for w in WPL]
  )
  for g in groups:
    if len(g) != 2 or g[0] not in POLICIES or g[1] not in WPL:
      sys.exit(f"error: bad group {':'.join(g)!r}; use POLICY:WPL")
  from experiments import space32  # noqa: PLC0415

  extra = list(_VARIANTS.value)
  for v in extra:
    if v not in space32._VARIANTS or v in POLICIES or v in WPL:
      sys.exit(f"error: bad variant {v!r}; use a non-policy, non-WPL variant")
  results = results_dir(extra)
  results.mkdir(parents=True, exist_ok=True)
  seeds = [int(s) for s in _SEEDS.value]
  if _IMPORT.value:
    _import(pathlib.Path(_IMPORT.value), results, extra)
    return
  if _IN_ONE.value:
    for policy, wpl in groups:
      for block in _blocks(
        [
          s
          for s in seeds
          if not (results / f"{policy}_{wpl}_s{s}.json").exists()
        ]
      ):
        _run_block(policy, wpl, block, extra, results)
    return
  todo = [(p, w, s) for s in seeds for p, w in groups]
  for i, (policy, wpl, seed) in enumerate(todo):
    name = f"{policy}_{wpl}_s{seed}"
    if (results / f"{name}.json").exists():
      print(f"[{i + 1}/{len(todo)}] {name}: stored, skipped", flush=True)
      continue
    _run_one(policy, wpl, seed, extra, results, f"[{i + 1}/{len(todo)}] ")


def _run_one(policy, wpl, seed, extra, results, prefix="") -> None:
  """One seed of one arm in its own program; stores its run."""
  name = f"{policy}_{wpl}_s{seed}"
  out = results / f"{name}.json"
  workdir = pathlib.Path(_RUN_ROOT.value) / name
  cmd = _command(policy, wpl, extra, workdir, seed)
  print(f"{prefix}{name}: {' '.join(cmd)}", flush=True)
  t0, commit = time.time(), _commit()  # the code the run starts with
  code, last_error = _run(cmd)
  diverged = code != 0 and "diverged at epoch" in last_error
  if code != 0 and not diverged:
    sys.exit(f"error: {name} exited with {code}")
  records = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
  result = {
    "name": name,
    "command": " ".join(cmd),
    "commit": commit,
    "seconds": time.time() - t0,
    "records": records,
  }
  if diverged:  # an outcome of the arm, stored and counted (WORKSPACE §7.10)
    result["diverged"] = last_error
  metrics_lib.write_json(out, result)
  status = f"DIVERGED ({last_error})" if diverged else "done"
  print(f"    {status} in {time.time() - t0:.0f} s -> {out}", flush=True)


def _command(policy, wpl, extra, workdir, seed) -> list[str]:
  return [
    "python",
    "main.py",
    f"--config=experiments/space32.py:{','.join([policy, wpl, *extra])}",
    f"--data_dir={_DATA.value}",
    f"--workdir={workdir}",
    f"--config.seed={seed}",
    *_EXTRA.value,
  ]


def _blocks(seeds: list[int]) -> list[list[int]]:
  """`seeds` (sorted) cut into runs of consecutive integers."""
  out = []
  for s in sorted(seeds):
    if out and s == out[-1][-1] + 1:
      out[-1].append(s)
    else:
      out.append([s])
  return out


def _run_block(policy, wpl, block, extra, results) -> None:
  """One program for `block`'s seeds of one arm; stores each seed's run."""
  if len(block) == 1:
    _run_one(policy, wpl, block[0], extra, results)
    return
  name = f"{policy}_{wpl}_s{block[0]}-{block[-1]}"
  workdir = pathlib.Path(_RUN_ROOT.value) / name
  cmd = _command(policy, wpl, extra, workdir, block[0])
  cmd.append(f"--config.search.num_seeds={len(block)}")
  print(f"{name}: {' '.join(cmd)}", flush=True)
  t0, commit = time.time(), _commit()
  code, last_error = _run(cmd)
  if code != 0:
    sys.exit(f"error: {name} exited with {code}: {last_error}")
  _store_block(workdir, policy, wpl, block, " ".join(cmd), commit, t0, results)


def _store_block(
  workdir, policy, wpl, block, command, commit, t0, results, only=None
):
  """Each seed of a finished seed-axis workdir (those in `only`, if given),
  stored as one run."""
  per_seed = {
    e["seed"]: e
    for e in json.loads((workdir / "results.json").read_text())["per_seed"]
  }
  for seed in block if only is None else only:
    out = results / f"{policy}_{wpl}_s{seed}.json"
    result = {
      "name": out.stem,
      "command": command,
      "commit": commit,
      "seconds": time.time() - t0 if t0 else None,  # the whole program's
      "in_one": block,
      "records": metrics_lib.read_jsonl(
        workdir / f"seed_{seed}" / "metrics.jsonl"
      ),
    }
    if "diverged" in per_seed[seed]:
      result["diverged"] = per_seed[seed]["diverged"]
    metrics_lib.write_json(out, result)
    status = "DIVERGED" if "diverged" in result else "done"
    print(f"    seed {seed}: {status} -> {out}", flush=True)


# Fields a device run may set beyond the variants' config.
_IMPORT_FREE = (
  "seed",
  "data_dir",
  "precision",
  "num_devices",
  "search.num_seeds",
  "search.log_seconds",
  "search.truth_path",
  "model.ce_chunk",
)


def _import(root: pathlib.Path, results: pathlib.Path, extra) -> None:
  """`_store_block` for every finished POLICY_WPL_sA-B workdir in root
  whose config is the variants' (fields in _IMPORT_FREE aside); a seed
  already stored is kept, not overwritten."""
  from experiments import space32  # noqa: PLC0415
  from wpl_jax.runtime import workdir as workdir_lib  # noqa: PLC0415

  found = sorted(root.glob("*_*_s*-*"))
  if not found:
    sys.exit(f"error: no POLICY_WPL_sA-B workdir in {root}")
  for workdir in found:
    policy, wpl, span = workdir.name.split("_")
    first, last = (int(x) for x in span[1:].split("-"))
    block = list(range(first, last + 1))
    if not (workdir / "results.json").exists():
      print(f"{workdir.name}: not finished, skipped", flush=True)
      continue
    run = json.loads((workdir / "run.json").read_text())
    given = space32.get_config(",".join([policy, wpl, *extra]))
    want = {
      **workdir_lib.ADDED_DEFAULTS,
      **workdir_lib.flatten(workdir_lib.config_dict(given)),
    }
    got = {**workdir_lib.ADDED_DEFAULTS, **workdir_lib.flatten(run["config"])}
    differ = sorted(
      k
      for k in set(want) | set(got)
      if k not in _IMPORT_FREE and want.get(k) != got.get(k)
    )
    if differ:
      sys.exit(
        f"error: {workdir.name} is not a run of the variants "
        f"{','.join([policy, wpl, *extra])} ({', '.join(differ[:4])} differ)"
      )
    done = json.loads((workdir / "results.json").read_text())
    if done.get("seeds") != block:
      sys.exit(f"error: {workdir.name} holds seeds {done.get('seeds')}")
    stored = [
      s for s in block if (results / f"{policy}_{wpl}_s{s}.json").exists()
    ]
    if stored:
      print(f"{workdir.name}: seeds {stored} already stored, kept", flush=True)
    command = (
      f"{workdir.name} on {run['platform'].get('device_kind', '?')} "
      f"(started {run['started']}), config in its run.json"
    )
    print(f"{workdir.name}: {command}", flush=True)
    _store_block(
      workdir,
      policy,
      wpl,
      block,
      command,
      _IMPORT_COMMIT.value,
      0,
      results,
      only=[s for s in block if s not in stored],
    )


def _run(cmd: list[str]) -> tuple[int, str]:
  """Runs main.py, its stderr passed through; (exit code, its last
  "error: ..." line or "")."""
  proc = subprocess.Popen(
    [sys.executable, *cmd[1:]],
    cwd=str(_ROOT),
    stderr=subprocess.PIPE,
    text=True,
  )
  last_error = ""
  for line in proc.stderr:
    sys.stderr.write(line)
    if line.startswith("error:"):
      last_error = line.strip()
  return proc.wait(), last_error


if __name__ == "__main__":
  app.run(main)
