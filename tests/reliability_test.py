"""Issue 13: nothing lost, nothing overwritten, no silent nonsense.

Each test here failed on the code before the fix and names the fault it
covers (WORKSPACE.md, "Faults and bad input"). The kill -9 / SIGTERM +
resume runs are marked slow; the rest run in the default suite.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl.testing import absltest
from conftest import DATA_DIR

from experiments import enas_ptb
from experiments import two_models as two_models_config
from wpl_jax.enas.train import epoch as enas_epoch
from wpl_jax.enas.train import search as enas_search
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import workdir as workdir_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TWO = "--config=" + str(_ROOT / "experiments/two_models.py") + ":smoke"
_ENAS = "--config=" + str(_ROOT / "experiments/enas_ptb.py") + ":smoke,wpl"
# Fields that measure time, not the computation.
_TIMING = ("epoch_seconds", "train_tokens_per_s", "search_seconds")


def _cmd(*flags: str) -> list[str]:
  return [sys.executable, str(_ROOT / "main.py"), *flags]


def _main(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    _cmd(*flags),
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    env=env,
    timeout=timeout,
    check=False,
  )


def _files(path: pathlib.Path) -> dict[str, tuple[int, bytes]]:
  """Every file under `path`: (mtime in ns, bytes)."""
  return {
    str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
    for p in sorted(path.rglob("*"))
    if p.is_file()
  }


def _one_line_error(test, out, fragment: str) -> None:
  test.assertNotEqual(out.returncode, 0, msg=out.stdout[-500:])
  test.assertNotIn("Traceback", out.stderr)
  lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
  test.assertLen(lines, 1, msg=out.stderr[-3000:])
  test.assertIn(fragment, lines[0])


class WorkdirTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path) / "run"
    self.config = two_models_config.get_config("smoke")

  def test_new_absent_and_empty(self):
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "new")
    self.dir.mkdir()
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "new")

  def test_claim_then_resume_then_finished(self):
    self.assertEqual(workdir_lib.claim(self.dir, self.config), "new")
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "resume")
    workdir_lib.finish(self.dir)
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "finished")
    record = json.loads((self.dir / "run.json").read_text())
    self.assertEqual(record["status"], "finished")
    self.assertEqual(record["experiment"], "two_models")

  def test_refuses_another_experiment(self):
    workdir_lib.claim(self.dir, enas_ptb.get_config("smoke"))
    with self.assertRaisesRegex(
      ValueError, "holds a enas_ptb run, not two_models"
    ):
      workdir_lib.inspect(self.dir, self.config)

  def test_refuses_another_config_naming_the_fields(self):
    workdir_lib.claim(self.dir, self.config)
    other = two_models_config.get_config("smoke")
    other.wpl.alpha = 3.0
    other.opt_b.lr = 0.5
    with self.assertRaisesRegex(ValueError, r"\(opt_b\.lr, wpl\.alpha\)"):
      workdir_lib.inspect(self.dir, other)

  def test_a_field_added_later_reads_as_what_the_run_did(self):
    # A run recorded before model.cell_output, search.log_seconds and
    # truth.num_seeds existed resumes under today's config, and so does
    # one recorded with model.tapped_grad False (the field was removed
    # since; True was another run); one recorded before
    # controller.reward_form ran "sequence", so today's "per_decision" is
    # another config.
    config = enas_ptb.get_config("smoke")
    workdir_lib.claim(self.dir, config)
    path = self.dir / "run.json"
    record = json.loads(path.read_text())
    for section, field in (
      ("model", "cell_output"),
      ("search", "log_seconds"),
    ):
      del record["config"][section][field]
    self.assertNotIn("tapped_grad", config.model)
    record["config"]["model"]["tapped_grad"] = True
    path.write_text(json.dumps(record))
    with self.assertRaisesRegex(ValueError, r"model\.tapped_grad"):
      workdir_lib.inspect(self.dir, config)
    record["config"]["model"]["tapped_grad"] = False
    path.write_text(json.dumps(record))
    self.assertEqual(workdir_lib.inspect(self.dir, config), "resume")
    del record["config"]["controller"]["reward_form"]
    path.write_text(json.dumps(record))
    self.assertEqual(config.controller.reward_form, "per_decision")
    with self.assertRaisesRegex(ValueError, r"controller\.reward_form"):
      workdir_lib.inspect(self.dir, config)
    config.controller.reward_form = "sequence"
    self.assertEqual(workdir_lib.inspect(self.dir, config), "resume")

  def test_resumable_fields_may_change(self):
    config = enas_ptb.get_config("smoke")
    workdir_lib.claim(self.dir, config)
    workdir_lib.finish(self.dir)
    longer = enas_ptb.get_config("smoke")
    longer.search.epochs += 1
    longer.data_dir = "/elsewhere"
    got = workdir_lib.inspect(self.dir, longer, resumable=("search.epochs",))
    self.assertEqual(got, "resume")  # finished, but asked for more epochs
    with self.assertRaisesRegex(ValueError, "search.epochs"):
      workdir_lib.inspect(self.dir, longer)

  def test_refuses_files_without_a_record(self):
    self.dir.mkdir()
    (self.dir / "results.md").write_text("keep")
    with self.assertRaisesRegex(ValueError, "holds no run of wpl_jax"):
      workdir_lib.inspect(self.dir, self.config)

  def test_unreadable_record_is_one_line(self):
    self.dir.mkdir()
    (self.dir / "run.json").write_text("{not json")
    with self.assertRaisesRegex(ValueError, "run.json is unreadable"):
      workdir_lib.inspect(self.dir, self.config)


class MainWorkdirTest(absltest.TestCase):
  """main.py refuses, or only reports, before it writes anything."""

  def test_two_models_into_enas_workdir_is_refused_untouched(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    workdir_lib.claim(workdir, enas_ptb.get_config("smoke"))
    (workdir / "results.md").write_text("enas results")
    (workdir / "metrics.jsonl").write_text('{"epoch": 0}\n')
    before = _files(workdir)
    out = _main(_TWO, f"--workdir={workdir}")
    _one_line_error(self, out, "holds a enas_ptb run, not two_models")
    self.assertEqual(_files(workdir), before)

  def test_finished_run_is_reported_not_rewritten(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    config = two_models_config.get_config("smoke")
    workdir_lib.claim(workdir, config)
    (workdir / "results.md").write_text("| the finished table |\n")
    workdir_lib.finish(workdir)
    before = _files(workdir)
    out = _main(_TWO, f"--workdir={workdir}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    self.assertIn("| the finished table |", out.stdout)
    self.assertIn("has finished; nothing was rewritten", out.stderr)
    self.assertEqual(_files(workdir), before)

  def test_fisher_examples_beyond_the_data_write_nothing(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      _TWO,
      f"--workdir={workdir}",
      "--config.fisher.num_examples=4096",
      "--config.fisher.batch_size=32",
    )
    _one_line_error(self, out, "fisher.num_examples=4096 exceeds the 1438")
    self.assertFalse(workdir.exists())

  def test_empty_ptb_test_file_is_found_before_any_write(self):
    data = pathlib.Path(self.create_tempdir().full_path)
    for split in ("train", "valid"):
      shutil.copy(DATA_DIR / "ptb" / f"ptb.{split}.txt", data)
    (data / "ptb.test.txt").write_text("")
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(_ENAS, f"--data_dir={data}", f"--workdir={workdir}")
    _one_line_error(self, out, "ptb.test.txt has 0 tokens")
    self.assertFalse(workdir.exists())


class MemoryBeforeClaimTest(absltest.TestCase):
  """Sizes that decide memory are checked before the workdir is claimed."""

  def test_eval_chunk_beyond_any_evaluation_is_refused(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      _ENAS,
      f"--data_dir={DATA_DIR / 'ptb'}",
      f"--workdir={workdir}",
      "--config.search.eval_chunk=1000000000",
    )
    _one_line_error(self, out, "search.eval_chunk=1000000000 exceeds the most")
    self.assertFalse(workdir.exists())

  def test_a_model_beyond_the_machine_is_refused_and_the_fix_runs(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    ptb = f"--data_dir={DATA_DIR / 'ptb'}"
    out = _main(
      _ENAS, ptb, f"--workdir={workdir}", "--config.model.hidden=100000"
    )
    _one_line_error(self, out, "needs at least")
    self.assertIn("more than the machine's memory", out.stderr)
    self.assertFalse(workdir.exists())
    out = _main(_ENAS, ptb, f"--workdir={workdir}")  # the corrected command
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])

  def test_edges_split_over_devices_count_per_device(self):
    from wpl_jax.runtime import platform_defaults  # noqa: PLC0415

    c = platform_defaults.resolved_config(enas_ptb.get_config("paper,wpl"))
    need = {}
    for k in (0, 2):
      c.model.shard_edges = k
      need[k] = enas_search.memory_need(*enas_search.state_shapes(c, 10000))
    # The 66 edge stacks (params, Fisher, anchor) are most of the state.
    self.assertLess(need[2]["state"], 0.6 * need[0]["state"])
    self.assertEqual(need[2]["activations"], need[0]["activations"])

  def test_a_ground_truth_beyond_the_machine_is_refused(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      "--config=experiments/space32.py:truth,smoke",
      f"--data_dir={DATA_DIR / 'ptb'}",
      f"--workdir={workdir}",
      "--config.model.hidden=200000",
    )
    _one_line_error(self, out, "needs at least")
    self.assertFalse(workdir.exists())


class DivergenceTest(absltest.TestCase):
  """NaN stops the run: one line naming experiment and step, exit 1."""

  def test_two_models_diverging_b(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      _TWO,
      f"--workdir={workdir}",
      "--config.opt_b.name=sgd",
      "--config.opt_b.lr=1e30",
    )
    _one_line_error(self, out, "two_models diverged: B run plain (seed 0")
    self.assertIn("steps 1-20", out.stderr)
    self.assertFalse((workdir / "results.md").exists())

  def test_enas_finiteness_check_names_epoch_and_step(self):
    # The check the search runs once per epoch, on its device-side losses.
    config = enas_ptb.get_config("smoke")
    config.search.batches_per_arch = 3
    losses = [jnp.float32(2.0)] * 4 + [jnp.float32(jnp.nan)]
    with self.assertRaisesRegex(
      checkpoint_lib.NonFiniteError,
      r"enas_ptb diverged at epoch 2: non-finite training loss at shared "
      r"step 4 of the epoch \(arch 2, batch 2\); stopped, checkpoint: epoch "
      r"1's is kept",
    ):
      enas_epoch.check_finite(config, 2, losses, [1.0, 2.0], [])
    with self.assertRaisesRegex(checkpoint_lib.NonFiniteError, "reward"):
      enas_epoch.check_finite(
        config, 0, losses[:2], [1.0], [jnp.float32(jnp.inf)]
      )
    enas_epoch.check_finite(config, 0, losses[:2], [1.0], [0.5])

  @pytest.mark.skipif(not (DATA_DIR / "ptb").exists(), reason="no PTB data")
  def test_enas_divergence_closes_its_writers(self):
    # A search that raised left its TensorBoard writer open: its thread
    # then failed at interpreter shutdown, a traceback after the one-line
    # error (seen once on jax 0.11).
    config = enas_ptb.get_config("smoke,wpl")
    config.data_dir = str(DATA_DIR / "ptb")
    config.shared.lr = 1e30
    writer = mock.MagicMock()
    workdir = self.create_tempdir().full_path
    with (
      mock.patch.object(enas_search, "tensorboard", return_value=writer),
      self.assertRaisesRegex(checkpoint_lib.NonFiniteError, "diverged"),
    ):
      enas_search.train_and_evaluate(config, workdir)
    writer.close.assert_called_once()

  @pytest.mark.slow
  def test_enas_diverging_shared_weights(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      _ENAS,
      f"--data_dir={DATA_DIR / 'ptb'}",
      f"--workdir={workdir}",
      "--config.shared.lr=1e30",
    )
    _one_line_error(self, out, "enas_ptb diverged at epoch 0: non-finite")
    self.assertIn("shared step", out.stderr)
    self.assertFalse((workdir / "results.md").exists())
    self.assertEqual(list((workdir / "checkpoints").iterdir()), [])


def _state(value: float):
  # Random values: incompressible, so the array has its own data file.
  noise = np.random.default_rng(int(value)).normal(size=4096)
  w = jnp.asarray(noise.astype(np.float32)) + value
  return {"w": w, "step": jnp.int32(int(value))}


class CheckpointTest(absltest.TestCase):
  """Checksums, fallback to the newest intact step, no non-finite saves."""

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path) / "ckpt"
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)
    for s in range(3):
      ckpt.save(s, _state(float(s)), {"epoch": s})
    ckpt.close()

  def _data_file(self, step: int) -> pathlib.Path:
    files = [
      p
      for p in (self.dir / str(step) / "state").rglob("*")
      if p.is_file() and "/d/" in p.as_posix()
    ]
    return max(files, key=lambda p: p.stat().st_size)

  def _restore(self):
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)
    with self.assertLogs("absl", "WARNING") as logs:
      state, meta = ckpt.restore(_state(0.0))
    ckpt.close()
    return state, meta, logs.output

  def test_flipped_bytes_fall_back_to_the_previous_step(self):
    path = self._data_file(2)
    data = bytearray(path.read_bytes())
    for i in range(min(64, len(data))):
      data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    state, meta, logs = self._restore()
    self.assertEqual(meta["epoch"], 1)
    np.testing.assert_array_equal(state["w"], _state(1.0)["w"])
    self.assertLen(logs, 1)
    self.assertIn("checkpoint step 2", logs[0])
    self.assertIn("does not match its checksum", logs[0])
    self.assertTrue((self.dir.with_name("ckpt.skipped") / "2").is_dir())

  def test_truncated_data_without_checksum_falls_back(self):
    (self.dir / "2" / "checksums.json").unlink()  # as saved before checksums
    path = self._data_file(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, meta, logs = self._restore()
    self.assertEqual(meta["epoch"], 1)
    self.assertIn("checkpoint step 2", logs[0])

  def test_truncated_metadata_falls_back(self):
    (self.dir / "2" / "checksums.json").unlink()
    meta_file = self.dir / "2" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text()[:5])
    _, meta, logs = self._restore()
    self.assertEqual(meta["epoch"], 1)
    self.assertIn("checkpoint step 2", logs[0])

  def test_step_without_checksums_is_incomplete(self):
    # A kill between orbax's commit and the checksum write: the files are
    # whole, but nothing vouches for them; the previous step is used.
    (self.dir / "2" / "checksums.json").unlink()
    state, meta, logs = self._restore()
    self.assertEqual(meta["epoch"], 1)
    np.testing.assert_array_equal(state["w"], _state(1.0)["w"])
    self.assertIn("incomplete: no checksums.json", logs[0])
    self.assertTrue((self.dir.with_name("ckpt.skipped") / "2").is_dir())

  def test_mismatched_state_moves_nothing_and_names_the_leaf(self):
    # An intact checkpoint restored into another shape (another vocabulary,
    # another config) is not damage: nothing is set aside, one line says
    # what differs, and the right state still restores afterwards.
    other = {"w": jnp.zeros(4097, jnp.float32), "step": jnp.int32(0)}
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)
    with self.assertRaises(checkpoint_lib.CheckpointMismatch) as cm:
      ckpt.restore(other)
    message = str(cm.exception)
    self.assertIn("step 2", message)
    self.assertIn(
      "w: (4096,) float32 in the checkpoint, (4097,) float32 now", message
    )
    self.assertIn("Nothing was moved", message)
    self.assertNotIn("\n", message)
    self.assertEqual(cm.exception.differences[0][0], "w")
    self.assertFalse(self.dir.with_name("ckpt.skipped").exists())
    self.assertEqual(
      sorted(p.name for p in self.dir.iterdir()), ["0", "1", "2"]
    )
    _, meta = ckpt.restore(_state(0.0))
    self.assertEqual(meta["epoch"], 2)
    # A dtype or a missing leaf is a mismatch too.
    with self.assertRaisesRegex(checkpoint_lib.CheckpointMismatch, "step:"):
      ckpt.restore({"w": _state(0.0)["w"], "step": jnp.float32(0)})
    with self.assertRaisesRegex(checkpoint_lib.CheckpointMismatch, "absent"):
      ckpt.restore({"w": _state(0.0)["w"]})
    ckpt.close()
    self.assertFalse(self.dir.with_name("ckpt.skipped").exists())

  def test_a_folder_saved_before_checksums_restores_unverified(self):
    for s in range(3):  # none has checksums: the format before them
      (self.dir / str(s) / "checksums.json").unlink()
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)
    _, meta = ckpt.restore(_state(0.0))
    self.assertEqual(meta["epoch"], 2)
    self.assertFalse(self.dir.with_name("ckpt.skipped").exists())
    path = self._data_file(2)  # and a damaged one still falls back
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with self.assertLogs("absl", "WARNING"):
      _, meta = ckpt.restore(_state(0.0))
    self.assertEqual(meta["epoch"], 1)
    ckpt.close()

  def test_other_restore_failures_keep_their_cause(self):
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)

    def denied(*args, **kwargs):
      raise PermissionError("Permission denied: 'ocdbt.process_0'")

    ckpt._manager.restore = denied
    with self.assertRaisesRegex(PermissionError, "Permission denied"):
      ckpt.restore(_state(0.0))
    self.assertFalse(self.dir.with_name("ckpt.skipped").exists())
    ckpt.close()

  def test_python_scalar_leaves_are_not_a_mismatch(self):
    ckpt = checkpoint_lib.Checkpointer(self.dir.with_name("scalars"))
    state = {"w": _state(0.0)["w"], "n": 3, "f": 0.5}
    ckpt.save(0, state, {})
    restored, _ = ckpt.restore(state)
    self.assertEqual((restored["n"], restored["f"]), (3, 0.5))
    ckpt.close()

  def test_no_intact_step_is_one_clear_error(self):
    for s in range(3):
      path = self._data_file(s)
      path.write_bytes(b"garbage")
    ckpt = checkpoint_lib.Checkpointer(self.dir)
    with self.assertRaisesRegex(
      ValueError, r"no intact checkpoint in .*step 2: .*step 1: .*step 0: "
    ):
      ckpt.restore(_state(0.0))
    self.assertLen(list(self.dir.with_name("ckpt.skipped").iterdir()), 3)

  def test_resave_after_fallback(self):
    path = self._data_file(2)
    path.write_bytes(b"garbage")
    _, meta, _ = self._restore()
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=3)
    ckpt.save(2, _state(7.0), {"epoch": 2})  # the redone step saves again
    state, meta = ckpt.restore(_state(0.0))
    self.assertEqual(meta["epoch"], 2)
    np.testing.assert_array_equal(state["w"], _state(7.0)["w"])

  def test_non_finite_state_never_replaces_a_good_one(self):
    ckpt = checkpoint_lib.Checkpointer(self.dir, max_to_keep=2)
    bad = _state(3.0)
    bad["w"] = bad["w"].at[5].set(jnp.nan)
    with self.assertRaises(checkpoint_lib.NonFiniteError):
      ckpt.save(3, bad, {"epoch": 3})
    self.assertEqual(ckpt.latest_step(), 2)
    self.assertEqual(
      sorted(p.name for p in self.dir.iterdir()), ["0", "1", "2"]
    )
    _, meta = ckpt.restore(_state(0.0))
    self.assertEqual(meta["epoch"], 2)

  def test_failed_save_ends_the_process_at_once(self):
    # A zero-size array fails orbax's save (as --config.model.hidden=0 did,
    # now refused by validation); the process used to hang 300 s at exit.
    code = (
      "import sys, jax.numpy as jnp\n"
      "from wpl_jax.runtime import checkpoint as c\n"
      f"ck = c.Checkpointer({str(self.dir.with_name('zero'))!r})\n"
      "try:\n"
      "  ck.save(0, {'w': jnp.zeros((0, 4))}, {})\n"
      "except OSError as e:\n"
      "  print(e)\n"
      "  sys.exit(3)\n"
    )
    out = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      cwd=str(_ROOT),
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      timeout=120,
      check=False,
    )
    self.assertEqual(out.returncode, 3, msg=out.stderr[-2000:])
    self.assertIn("saving checkpoint step 0 in", out.stdout)
    self.assertIn("['w'] has zero size (0, 4)", out.stdout)

  def test_first_nonfinite(self):
    self.assertIsNone(checkpoint_lib.first_nonfinite([1.0, 2.0]))
    self.assertEqual(
      checkpoint_lib.first_nonfinite([jnp.float32(1), jnp.float32(np.inf)]), 1
    )


def _raw_state(step_dir: pathlib.Path):
  """The arrays of a saved step, read by orbax without a target."""
  return ocp.StandardCheckpointer().restore(step_dir / "state")


def _assert_trees_equal(test, a, b):
  flat_a = {str(k): v for k, v in _flatten(a)}
  flat_b = {str(k): v for k, v in _flatten(b)}
  test.assertEqual(sorted(flat_a), sorted(flat_b))
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, (*prefix, k))
  elif isinstance(tree, list | tuple):
    for i, v in enumerate(tree):
      yield from _flatten(v, (*prefix, i))
  else:
    yield prefix, np.asarray(tree)


def _run_until(flags, path: pathlib.Path, lines: int, sig):
  """Starts main.py, sends `sig` once `path` has `lines` lines.

  Returns:
    (exit code, stderr).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
    _cmd(*flags),
    cwd=str(_ROOT),
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if path.exists() and len(path.read_text().splitlines()) >= lines:
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _records(path: pathlib.Path) -> list[dict]:
  out = []
  for line in path.read_text().splitlines():
    rec = json.loads(line)
    for k in _TIMING:
      rec.pop(k, None)
    out.append(rec)
  return out


class KillResumeTest(absltest.TestCase):
  """A killed run, rerun with the same command, ends bit-identical."""

  def _two_models(self, sig, lines: int):
    base = pathlib.Path(self.create_tempdir().full_path)
    ref, cut = base / "ref", base / "cut"
    out = _main(_TWO, f"--workdir={ref}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    code, err = _run_until(
      (_TWO, f"--workdir={cut}"), cut / "metrics.jsonl", lines, sig
    )
    out = _main(_TWO, f"--workdir={cut}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    self.assertEqual(
      (ref / "metrics.jsonl").read_bytes(), (cut / "metrics.jsonl").read_bytes()
    )
    rows = [
      json.loads((d / "results.json").read_text())["rows"] for d in (ref, cut)
    ]
    self.assertEqual(rows[0], rows[1])
    for name in ("a", "b_k2_converged", "b_k2_weak"):
      steps = [
        sorted(p for p in (d / "checkpoints" / name).iterdir())[-1]
        for d in (ref, cut)
      ]
      self.assertEqual(steps[0].name, steps[1].name)
      _assert_trees_equal(self, _raw_state(steps[0]), _raw_state(steps[1]))
    return code, err

  @pytest.mark.slow
  def test_two_models_kill9(self):
    code, _ = self._two_models(signal.SIGKILL, lines=14)
    self.assertEqual(code, -signal.SIGKILL)

  @pytest.mark.slow
  def test_two_models_sigterm_saves_and_says_so(self):
    code, err = self._two_models(signal.SIGTERM, lines=13)
    self.assertEqual(code, 128 + signal.SIGTERM, msg=err[-2000:])
    self.assertIn("stopped by SIGTERM at B step 20", err)
    self.assertIn("rerun the same command to resume", err)

  @pytest.mark.slow
  def test_enas_kill9(self):
    base = pathlib.Path(self.create_tempdir().full_path)
    ref, cut = base / "ref", base / "cut"
    flags = (
      _ENAS,
      f"--data_dir={DATA_DIR / 'ptb'}",
      "--config.search.epochs=4",
      "--config.retrain.epochs=0",
    )
    out = _main(*flags, f"--workdir={ref}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    code, _ = _run_until(
      (*flags, f"--workdir={cut}"), cut / "metrics.jsonl", 1, signal.SIGKILL
    )
    self.assertEqual(code, -signal.SIGKILL)
    out = _main(*flags, f"--workdir={cut}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    a, b = _records(ref / "metrics.jsonl"), _records(cut / "metrics.jsonl")
    self.assertEqual([r["epoch"] for r in b], [0, 1, 2, 3])  # no duplicate
    for ra, rb in zip(a, b, strict=True):
      ra.pop("compiles"), rb.pop("compiles")  # the resumed run recompiles
      self.assertEqual(ra, rb)
    _assert_trees_equal(
      self,
      _raw_state(ref / "checkpoints" / "3"),
      _raw_state(cut / "checkpoints" / "3"),
    )

  @pytest.mark.slow
  def test_enas_sigterm_finishes_the_epoch_saves_and_says_so(self):
    base = pathlib.Path(self.create_tempdir().full_path)
    ref, cut = base / "ref", base / "cut"
    flags = (
      _ENAS,
      f"--data_dir={DATA_DIR / 'ptb'}",
      "--config.search.epochs=6",
      "--config.retrain.epochs=0",
    )
    out = _main(*flags, f"--workdir={ref}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    code, err = _run_until(
      (*flags, f"--workdir={cut}"), cut / "metrics.jsonl", 1, signal.SIGTERM
    )
    self.assertEqual(code, 128 + signal.SIGTERM, msg=err[-2000:])
    self.assertRegex(err, r"stopped by SIGTERM at enas_ptb epoch \d")
    self.assertIn("rerun the same command to resume", err)
    out = _main(*flags, f"--workdir={cut}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    a, b = _records(ref / "metrics.jsonl"), _records(cut / "metrics.jsonl")
    self.assertEqual([r["epoch"] for r in b], list(range(6)))
    for ra, rb in zip(a, b, strict=True):
      ra.pop("compiles"), rb.pop("compiles")
      self.assertEqual(ra, rb)

  @pytest.mark.slow
  def test_enas_kill_before_first_checkpoint_leaves_no_duplicate(self):
    # A run killed between epoch 0's metrics line and its first save: the
    # rerun redoes epoch 0 and writes its line once.
    workdir = pathlib.Path(self.create_tempdir().full_path)
    flags = (
      _ENAS,
      f"--data_dir={DATA_DIR / 'ptb'}",
      "--config.search.epochs=1",
      "--config.retrain.epochs=0",
    )
    config = enas_ptb.get_config("smoke,wpl")
    config.data_dir = str(DATA_DIR / "ptb")
    config.search.epochs, config.retrain.epochs = 1, 0
    workdir_lib.claim(workdir, config)
    (workdir / "metrics.jsonl").write_text('{"epoch": 0, "stale": true}\n')
    out = _main(*flags, f"--workdir={workdir}")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    records = _records(workdir / "metrics.jsonl")
    self.assertLen(records, 1)
    self.assertNotIn("stale", records[0])


class RestoreMismatchTest(absltest.TestCase):
  """An intact checkpoint of other data is refused, never set aside."""

  def test_other_vocabulary_names_both_and_moves_nothing(self):
    base = pathlib.Path(self.create_tempdir().full_path)
    workdir, data = base / "run", base / "ptb"
    shutil.copytree(DATA_DIR / "ptb", data)
    flags = (_ENAS, f"--data_dir={data}", "--config.retrain.epochs=0")
    out = _main(*flags, f"--workdir={workdir}", "--config.search.epochs=1")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    with open(data / "ptb.train.txt", "a", encoding="utf-8") as f:
      f.write(" zzznewword\n")  # vocabulary 10001
    before = _files(workdir)
    more = (*flags, f"--workdir={workdir}", "--config.search.epochs=2")
    # Found before anything is written, with or without the data override
    # (which must not record the new data for a run that cannot resume).
    for extra in ((), ("--allow_data_change",)):
      out = _main(*more, *extra)
      _one_line_error(self, out, "vocabulary of 10000 words, the data 10001")
      self.assertEqual(_files(workdir), before)
    self.assertFalse((workdir / "checkpoints.skipped").exists())


class TruthResumeTest(absltest.TestCase):
  """A ground truth stopped by SIGTERM saves, says so, and resumes exactly."""

  def test_stop_mid_window_then_resume_equals_one_run(self):
    import signal as signal_lib  # noqa: PLC0415

    from experiments import space32  # noqa: PLC0415
    from wpl_jax.enas.train import truth as enas_truth  # noqa: PLC0415

    def config():
      c = space32.get_config("truth,smoke")
      c.data_dir = str(DATA_DIR / "ptb")
      c.truth.checkpoint_every = 0  # epoch ends only: step 4 is mid-window
      return c

    base = pathlib.Path(self.create_tempdir().full_path)
    enas_truth.train_and_evaluate(config(), base / "ref")
    real = enas_truth.TruthTrainer

    class SignalAtStep4(real):
      def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        step, calls = self.train_step, [0]

        def counted(*args):
          calls[0] += 1
          if calls[0] == 4:  # the first step of epoch 1 (3 steps an epoch)
            os.kill(os.getpid(), signal_lib.SIGTERM)
          return step(*args)

        self.train_step = counted

    enas_truth.TruthTrainer = SignalAtStep4
    try:
      with self.assertRaisesRegex(
        checkpoint_lib.Interrupted, "stopped by SIGTERM at enas_truth step 4"
      ):
        enas_truth.train_and_evaluate(config(), base / "cut")
    finally:
      enas_truth.TruthTrainer = real
    self.assertTrue((base / "cut" / "checkpoints" / "4").is_dir())
    enas_truth.train_and_evaluate(config(), base / "cut")  # resumes at 4
    a, b = (_records(base / d / "metrics.jsonl") for d in ("ref", "cut"))
    for r in a + b:
      r.pop("seconds")
    self.assertLen(b, 2)
    self.assertEqual(a, b)  # epoch 1's train_loss averages steps 4, 5, 6


class SmallerFaultsTest(absltest.TestCase):
  """Issue 23's smaller items: a negative seed, a bad stored run, retrains."""

  def test_negative_seed_is_refused_by_every_experiment(self):
    from experiments import space32  # noqa: PLC0415
    from wpl_jax.enas.train import truth as enas_truth  # noqa: PLC0415
    from wpl_jax.two_models import config as two_models_checks  # noqa: PLC0415

    c = enas_ptb.get_config("smoke")
    c.seed = -1
    with self.assertRaisesRegex(ValueError, "seed"):
      enas_search.validate(c)
    t = space32.get_config("truth")
    t.seed = -1
    with self.assertRaisesRegex(ValueError, "seed"):
      enas_truth.validate(t)
    m = two_models_config.get_config("smoke")
    m.seed = -1
    with self.assertRaisesRegex(ValueError, "seed=-1 must be an integer"):
      two_models_checks.validate(m)

  def test_report_on_a_json_list_is_one_line(self):
    # A subprocess: space32_report and space32_truth both define --runs.
    tmp = pathlib.Path(self.create_tempdir().full_path)
    (tmp / "runs.json").write_text("[1, 2]")
    out = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "experiments/space32_report.py"),
        f"--runs={tmp / 'runs.json'}",
        f"--out={tmp / 'out'}",
      ],
      capture_output=True,
      text=True,
      cwd=str(_ROOT),
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      timeout=300,
      check=False,
    )
    _one_line_error(self, out, "is not a stored run")

  def test_a_restarted_retrain_drops_its_earlier_records(self):
    from wpl_jax.enas.train import retrain  # noqa: PLC0415

    path = pathlib.Path(self.create_tempdir().full_path) / "retrain.jsonl"
    lines = [
      {"name": "derived", "epoch": 0},
      {"name": "derived", "epoch": 1},
      {"name": "random_0", "epoch": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    retrain.drop_records(path, "random_0")  # random_0 was interrupted
    self.assertEqual(
      [json.loads(x) for x in path.read_text().splitlines()], lines[:2]
    )
    path.with_name("retrain.jsonl.tmp").write_text('{"name": "stale"}\n')
    retrain.drop_records(path, "derived")  # a kill left the temp file
    self.assertEqual(path.read_text(), "")
    path.write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    retrain.drop_records(path, "other")  # nothing of it: unchanged
    self.assertLen(path.read_text().splitlines(), 2)


def test_failed_save_keeps_orbax_noise_out_of_the_terminal(tmp_path, capfd):
  """A full disk made orbax print ~600 lines; now one line names a log."""
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt")

  def noisy_save(*args, **kwargs):
    os.write(2, b"Traceback (most recent call last):\nRuntimeError: loop\n")
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

  ckpt._manager.save = noisy_save
  with pytest.raises(checkpoint_lib.SaveError) as e:
    ckpt.save(0, _state(0.0), {"epoch": 0})
  message = str(e.value)
  assert "No space left on device" in message
  kept = pathlib.Path(message.split("orbax's output: ")[1])
  assert "RuntimeError: loop" in kept.read_text()
  assert "Traceback" not in capfd.readouterr().err
  kept.unlink()


def test_a_good_save_replays_what_it_printed(tmp_path, capfd):
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt")
  real = ckpt._manager.save

  def chatty_save(*args, **kwargs):
    os.write(2, b"a warning worth seeing\n")
    return real(*args, **kwargs)

  ckpt._manager.save = chatty_save
  ckpt.save(0, _state(0.0), {"epoch": 0})
  ckpt.close()
  assert "a warning worth seeing" in capfd.readouterr().err


if __name__ == "__main__":
  absltest.main()
