"""Runs main.py on bad input and faults; prints WORKSPACE.md's fault table.

  python experiments/fault_table.py [--data_dir=../shared/data]

Every case runs `main.py` in a fresh interpreter inside a temporary folder
and records the exact command, the `error:` line (or the last line of
stderr), the exit status and what became of the workdir: "not created",
"unchanged" (every file's bytes and mtime as before) or the files it holds.
Each case is also a test (tests/reliability_test.py, tests/main_test.py,
tests/validation_test.py); this script only makes the table. About 4 min
on 2 cores (two smoke runs and the compiles of the divergence cases).
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

_DATA = flags.DEFINE_string("data_dir", "../shared/data", "Shared data dir.")

TWO = "--config=experiments/two_models.py:smoke"
ENAS = "--config=experiments/enas_ptb.py:smoke,wpl"


def _snapshot(path: pathlib.Path):
  if not path.exists():
    return None
  return {
    str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
    for p in sorted(path.rglob("*"))
    if p.is_file()
  }


def _run(
  args: list[str], *, kill_after_lines=None, watch=None, sig=signal.SIGKILL
):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "main.py", *args]
  proc = subprocess.Popen(
    cmd,
    cwd=str(_ROOT),
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  if kill_after_lines:
    while proc.poll() is None:
      if watch.exists() and len(watch.read_text().splitlines()) >= (
        kill_after_lines
      ):
        proc.send_signal(sig)
        break
      time.sleep(0.05)
  out, err = proc.communicate(timeout=900)
  return proc.returncode, out, err


def _message(err: str) -> str:
  lines = [x for x in err.splitlines() if x.startswith("error:")]
  if lines:
    return lines[-1]
  lines = [
    x
    for x in err.splitlines()
    if x.strip() and not x.startswith(("I", "W")) or "skipped" in x
  ]
  return lines[-1] if lines else ""


def _after(before, now) -> str:
  if now is None:
    return "not created"
  if before is not None and now == before:
    return "unchanged"
  top = sorted({k.split("/")[0] for k in now})
  return "holds " + ", ".join(top)


def _shown(args: list[str], tmp: pathlib.Path) -> str:
  text = " ".join(["python main.py", *args])
  return text.replace(str(tmp), "$TMP").replace(str(_ROOT) + "/", "")


def main(argv):
  del argv
  data = pathlib.Path(_DATA.value).absolute()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="faults_"))
  rows = []

  def case(name, args, workdir, *, test, setup=None, **kw):
    if setup:
      setup()
    before = _snapshot(workdir)
    code, _, err = _run(args, **kw)
    rows.append(
      (
        name,
        _shown(args, tmp),
        _message(err).replace(str(tmp), "$TMP"),
        code,
        _after(before, _snapshot(workdir)),
        test,
      )
    )
    print(f"{name}: exit {code}: {rows[-1][2]}", flush=True)

  done = tmp / "two_done"
  code, _, err = _run([TWO, f"--workdir={done}"])
  assert code == 0, err[-2000:]
  case(
    "rerun of a finished two-model run",
    [TWO, f"--workdir={done}"],
    done,
    test="MainWorkdirTest.test_finished_run_is_reported_not_rewritten",
  )
  case(
    "ENAS into a two-model workdir",
    [ENAS, f"--data_dir={data / 'ptb'}", f"--workdir={done}"],
    done,
    test="MainWorkdirTest.test_two_models_into_enas_workdir_is_refused_untouched",
  )
  case(
    "same experiment, another config",
    [TWO, f"--workdir={done}", "--config.wpl.alpha=3"],
    done,
    test="WorkdirTest.test_refuses_another_config_naming_the_fields",
  )
  cut = tmp / "two_cut"
  case(
    "kill -9 of the two-model study mid-B",
    [TWO, f"--workdir={cut}"],
    cut,
    test="KillResumeTest.test_two_models_kill9 (slow)",
    kill_after_lines=14,
    watch=cut / "metrics.jsonl",
  )
  case(
    "... rerun of the same command",
    [TWO, f"--workdir={cut}"],
    cut,
    test="KillResumeTest.test_two_models_kill9 (slow): bit-identical",
  )
  same = (done / "metrics.jsonl").read_bytes() == (
    cut / "metrics.jsonl"
  ).read_bytes()
  name, cmd, msg, code, after, test = rows[-1]
  after += f"; metrics.jsonl equal to the uninterrupted run's: {same}"
  rows[-1] = (name, cmd, msg, code, after, test)
  case(
    "Fisher examples beyond the data",
    [
      TWO,
      f"--workdir={tmp / 'w1'}",
      "--config.fisher.num_examples=4096",
      "--config.fisher.batch_size=32",
    ],
    tmp / "w1",
    test="MainWorkdirTest.test_fisher_examples_beyond_the_data_write_nothing",
  )
  short = tmp / "ptb_empty_test"

  def make_short():
    short.mkdir()
    for split in ("train", "valid"):
      shutil.copy(data / "ptb" / f"ptb.{split}.txt", short)
    (short / "ptb.test.txt").write_text("")

  case(
    "empty ptb.test.txt",
    [ENAS, f"--data_dir={short}", f"--workdir={tmp / 'w2'}"],
    tmp / "w2",
    test="MainWorkdirTest.test_empty_ptb_test_file_is_found_before_any_write",
    setup=make_short,
  )
  case(
    "hidden size 0",
    [
      ENAS,
      f"--data_dir={data / 'ptb'}",
      f"--workdir={tmp / 'w3'}",
      "--config.model.hidden=0",
    ],
    tmp / "w3",
    test="validation_test (model.hidden, 0)",
  )
  case(
    "ENAS shared lr 1e30",
    [
      ENAS,
      f"--data_dir={data / 'ptb'}",
      f"--workdir={tmp / 'w4'}",
      "--config.shared.lr=1e30",
    ],
    tmp / "w4",
    test="DivergenceTest.test_enas_diverging_shared_weights",
  )
  case(
    "two-model B diverging (sgd 1e30)",
    [
      TWO,
      f"--workdir={tmp / 'w5'}",
      "--config.opt_b.name=sgd",
      "--config.opt_b.lr=1e30",
    ],
    tmp / "w5",
    test="DivergenceTest.test_two_models_diverging_b",
  )
  case(
    "ENAS alpha -1",
    [
      ENAS,
      f"--data_dir={data / 'ptb'}",
      f"--workdir={tmp / 'w6'}",
      "--config.wpl.alpha=-1",
    ],
    tmp / "w6",
    test="validation_test (wpl.alpha, -1)",
  )
  _second_round(case, data, tmp)
  print()
  print("| case | command | message | exit | workdir after | test |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    cells = [str(c).replace("|", "\\|") for c in r]
    cells[1] = f"`{cells[1]}`"
    print("| " + " | ".join(cells) + " |")
  shutil.rmtree(tmp, ignore_errors=True)


def _second_round(case, data: pathlib.Path, tmp: pathlib.Path) -> None:
  """Issue 23's cases: sizes, locks, changed data, mismatches, torn logs."""
  ptb = f"--data_dir={data / 'ptb'}"
  case(
    "evaluation chunk of 1e9 archs",
    [
      ENAS,
      ptb,
      f"--workdir={tmp / 'm1'}",
      "--config.search.eval_chunk=1000000000",
    ],
    tmp / "m1",
    test="MemoryBeforeClaimTest.test_eval_chunk_beyond_any_evaluation_is_refused",
  )
  case(
    "hidden size 100000 (TB of state)",
    [ENAS, ptb, f"--workdir={tmp / 'm2'}", "--config.model.hidden=100000"],
    tmp / "m2",
    test="MemoryBeforeClaimTest.test_a_model_beyond_the_machine_is_refused_and_the_fix_runs",
  )
  case(
    "seed -1",
    [ENAS, ptb, f"--workdir={tmp / 'm3'}", "--config.seed=-1"],
    tmp / "m3",
    test="SmallerFaultsTest.test_negative_seed_is_refused_by_every_experiment",
  )
  held = tmp / "held"
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from wpl_jax.runtime import workdir; "
      "workdir.lock(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
      str(held),
    ],
    cwd=str(_ROOT),
    stdout=subprocess.PIPE,
    text=True,
  )
  holder.stdout.readline()
  case(
    "a second process on a workdir in use",
    [ENAS, ptb, f"--workdir={held}"],
    held,
    test="workdir_lock_test (main.py refused on a locked workdir)",
  )
  holder.kill()
  holder.wait()
  copy = tmp / "ptb_copy"
  shutil.copytree(data / "ptb", copy)
  run = tmp / "e1"
  first = [ENAS, f"--data_dir={copy}", "--config.retrain.epochs=0"]
  code, _, err = _run([*first, f"--workdir={run}", "--config.search.epochs=1"])
  assert code == 0, err[-2000:]
  more = [*first, f"--workdir={run}", "--config.search.epochs=2"]
  valid = (copy / "ptb.valid.txt").read_bytes()

  def shorten_valid():
    (copy / "ptb.valid.txt").write_bytes(valid[: len(valid) // 2])

  case(
    "resume after ptb.valid.txt was shortened",
    more,
    run,
    test="workdir_lock_test (a resume on changed data refused)",
    setup=shorten_valid,
  )

  def new_word():
    (copy / "ptb.valid.txt").write_bytes(valid)
    with open(copy / "ptb.train.txt", "a", encoding="utf-8") as f:
      f.write(" zzznewword\n")

  case(
    "resume on data of another vocabulary, --allow_data_change",
    [*more, "--allow_data_change"],
    run,
    test="RestoreMismatchTest.test_other_vocabulary_names_both_and_moves_nothing",
    setup=new_word,
  )
  torn = tmp / "e2"
  base = [ENAS, ptb, "--config.retrain.epochs=0", f"--workdir={torn}"]
  code, _, err = _run([*base, "--config.search.epochs=1"])
  assert code == 0, err[-2000:]

  def tear():
    with open(torn / "metrics.jsonl", "a", encoding="utf-8") as f:
      f.write('{"epoch": 1, "train_lo')

  case(
    "resume after a torn last line in metrics.jsonl",
    [*base, "--config.search.epochs=2"],
    torn,
    test="TolerantJsonlTest (metrics_test)",
    setup=tear,
  )
  term = tmp / "e3"
  flags = [ENAS, ptb, "--config.retrain.epochs=0", "--config.search.epochs=6"]
  case(
    "SIGTERM to an ENAS search",
    [*flags, f"--workdir={term}"],
    term,
    test="KillResumeTest.test_enas_sigterm_finishes_the_epoch_saves_and_"
    "says_so (slow)",
    kill_after_lines=1,
    watch=term / "metrics.jsonl",
    sig=signal.SIGTERM,
  )


if __name__ == "__main__":
  app.run(main)
