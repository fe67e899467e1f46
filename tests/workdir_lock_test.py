"""One process per workdir, the data's fingerprint, leftovers of a full disk.

Issue "Reliability, second round", items 2, 4 and 7: two main.py on one
workdir both ran; a resume on changed data went unnoticed; a 0-byte
run.json.tmp blocked the rerun. Each test failed on the code before.
"""

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

from absl.testing import absltest
from conftest import DATA_DIR

from experiments import enas_ptb
from experiments import two_models as two_models_config
from wpl_jax.data import fingerprint
from wpl_jax.runtime import workdir as workdir_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_HOST = socket.gethostname()
# A second process that takes the lock, says so and waits to be killed.
_HOLDER = (
  "import sys, time\n"
  "from wpl_jax.runtime import workdir\n"
  "workdir.lock(sys.argv[1])\n"
  "print('locked', flush=True)\n"
  "time.sleep(600)\n"
)


def _main(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(_ROOT / "main.py"), *flags],
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=600,
    check=False,
  )


def _files(path: pathlib.Path) -> dict[str, tuple[int, bytes]]:
  return {
    str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
    for p in sorted(path.rglob("*"))
    if p.is_file() and p.name != workdir_lib.LOCK
  }


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(path: pathlib.Path, pid: int, host: str = _HOST) -> None:
  holder = {"pid": pid, "host": host, "started": "2020-01-02 03:04:05"}
  (path / workdir_lib.LOCK).write_text(json.dumps(holder))


class LockTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path) / "run"
    self.addCleanup(workdir_lib.release, self.dir)

  def _holder(self) -> subprocess.Popen:
    """A second process holding the lock of self.dir."""
    proc = subprocess.Popen(
      [sys.executable, "-c", _HOLDER, str(self.dir)],
      stdout=subprocess.PIPE,
      text=True,
      cwd=str(_ROOT),
    )
    self.addCleanup(proc.wait)
    self.addCleanup(proc.kill)
    self.assertEqual(proc.stdout.readline().strip(), "locked")
    return proc

  def test_lock_is_held_and_released(self):
    workdir_lib.lock(self.dir)
    workdir_lib.lock(self.dir)  # again in the same process: a no-op
    path = self.dir / workdir_lib.LOCK
    holder = json.loads(path.read_text())
    self.assertEqual((holder["pid"], holder["host"]), (os.getpid(), _HOST))
    with open(path) as f:  # another open file: the flock is really held
      with self.assertRaises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    workdir_lib.release(self.dir)
    self.assertFalse(path.exists())
    self.assertFalse(self.dir.exists())  # created by lock, left empty
    workdir_lib.lock(self.dir)  # free again
    self.assertTrue(path.exists())

  def test_flock_held_in_process_refuses_lock_and_claim(self):
    self.dir.mkdir()
    _write_lock(self.dir, 4242, "otherbox")
    with open(self.dir / workdir_lib.LOCK) as f:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      message = (
        f"workdir {self.dir} is in use by pid 4242 on otherbox since "
        "2020-01-02 03:04:05"
      )
      with self.assertRaisesRegex(workdir_lib.WorkdirLocked, message):
        workdir_lib.lock(self.dir)
      config = two_models_config.get_config("smoke")
      with self.assertRaisesRegex(workdir_lib.WorkdirLocked, message):
        workdir_lib.claim(self.dir, config)
    self.assertFalse((self.dir / workdir_lib.RECORD).exists())

  def test_second_process_refused_then_kill9_frees_it(self):
    proc = self._holder()
    with self.assertRaisesRegex(
      workdir_lib.WorkdirLocked,
      f"workdir {self.dir} is in use by pid {proc.pid} on {_HOST} since ",
    ):
      workdir_lib.lock(self.dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = json.loads((self.dir / workdir_lib.LOCK).read_text())
    self.assertEqual(left["pid"], proc.pid)  # kill -9 left the file behind
    workdir_lib.lock(self.dir)  # ... and it is taken over
    holder = json.loads((self.dir / workdir_lib.LOCK).read_text())
    self.assertEqual(holder["pid"], os.getpid())

  def test_stale_lock_of_dead_pid_is_taken_over(self):
    self.dir.mkdir()
    _write_lock(self.dir, _dead_pid())
    workdir_lib.lock(self.dir)
    holder = json.loads((self.dir / workdir_lib.LOCK).read_text())
    self.assertEqual(holder["pid"], os.getpid())

  def test_without_flock_the_pid_decides(self):
    # A filesystem where flock fails (ENOLCK): a live pid on this host
    # holds the workdir, a dead one does not.
    self.dir.mkdir()
    live = subprocess.Popen(
      [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    self.addCleanup(live.wait)
    self.addCleanup(live.kill)
    _write_lock(self.dir, live.pid)
    with mock.patch.object(workdir_lib, "_flock", return_value=None):
      with self.assertRaisesRegex(
        workdir_lib.WorkdirLocked, f"in use by pid {live.pid} on {_HOST}"
      ):
        workdir_lib.lock(self.dir)
      _write_lock(self.dir, _dead_pid())
      workdir_lib.lock(self.dir)

  def test_lock_of_another_host_is_taken_over_once_stale(self):
    self.dir.mkdir()
    _write_lock(self.dir, 4242, "otherbox")
    with self.assertRaisesRegex(
      workdir_lib.WorkdirLocked,
      r"in use by pid 4242 on otherbox since 2020-01-02 03:04:05 \(last seen",
    ):
      workdir_lib.lock(self.dir)
    old = time.time() - workdir_lib.STALE_S - 60
    os.utime(self.dir / workdir_lib.LOCK, (old, old))
    workdir_lib.lock(self.dir)

  def test_main_refuses_a_locked_workdir_and_writes_nothing(self):
    config = two_models_config.get_config("smoke")
    workdir_lib.claim(self.dir, config)
    proc = self._holder()
    lock_before = (self.dir / workdir_lib.LOCK).read_bytes()
    before = _files(self.dir)
    out = _main(
      "--config=experiments/two_models.py:smoke", f"--workdir={self.dir}"
    )
    self.assertEqual(out.returncode, 1, msg=out.stderr[-2000:])
    self.assertEqual(
      out.stderr.strip().splitlines()[-1].split(" since ")[0],
      f"error: workdir {self.dir} is in use by pid {proc.pid} on {_HOST}",
    )
    self.assertNotIn("Traceback", out.stderr)
    self.assertEqual(_files(self.dir), before)
    self.assertEqual((self.dir / workdir_lib.LOCK).read_bytes(), lock_before)

  def test_main_checks_the_lock_before_anything_else(self):
    # A second run of a new workdir is refused for the lock, not for what
    # it would find later (here a config the data cannot serve).
    proc = self._holder()
    out = _main(
      "--config=experiments/two_models.py:smoke",
      f"--workdir={self.dir}",
      "--config.fisher.num_examples=4096",
    )
    self.assertEqual(out.returncode, 1, msg=out.stderr[-2000:])
    self.assertIn(
      f"error: workdir {self.dir} is in use by pid {proc.pid}", out.stderr
    )
    self.assertEqual(os.listdir(self.dir), [workdir_lib.LOCK])


class LeftoverTest(absltest.TestCase):
  """A run.json.tmp or a lock file alone does not make a workdir used."""

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path)
    self.config = two_models_config.get_config("smoke")

  def test_empty_tmp_record_alone_is_a_new_workdir(self):
    (self.dir / "run.json.tmp").write_text("")  # a full disk at the start
    _write_lock(self.dir, _dead_pid())  # and a kill -9
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "new")
    self.assertEqual(workdir_lib.claim(self.dir, self.config), "new")
    self.assertFalse((self.dir / "run.json.tmp").exists())
    self.assertEqual(workdir_lib.inspect(self.dir, self.config), "resume")

  def test_other_files_are_named(self):
    (self.dir / "run.json.tmp").write_text("")
    (self.dir / "results.md").write_text("keep")
    with self.assertRaisesRegex(
      ValueError, r"is not empty \(results.md\) and holds no run of wpl_jax"
    ):
      workdir_lib.inspect(self.dir, self.config)

  def test_failed_record_write_leaves_no_tmp(self):
    def full_disk(path, *args, **kwargs):
      path.open("w").close()  # the 0-byte file a full disk leaves
      raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch.object(pathlib.Path, "write_text", full_disk):
      with self.assertRaisesRegex(
        OSError, r"cannot write .*run.json.tmp: No space left on device"
      ):
        workdir_lib.claim(self.dir, self.config)
    self.assertEqual(list(self.dir.iterdir()), [])


class DataFingerprintTest(absltest.TestCase):
  """run.json records size and SHA-256 of each data file; resume checks."""

  def setUp(self):
    super().setUp()
    tmp = pathlib.Path(self.create_tempdir().full_path)
    self.data = tmp / "ptb"
    shutil.copytree(DATA_DIR / "ptb", self.data)
    self.dir = tmp / "run"
    self.config = enas_ptb.get_config("smoke")
    self.config.data_dir = str(self.data)

  def _claim(self):
    data = fingerprint.ptb(self.data)
    return workdir_lib.claim(self.dir, self.config, extra={"data": data})

  def _shorten_valid(self):
    valid = self.data / "ptb.valid.txt"
    valid.write_text("".join(valid.read_text().splitlines(True)[:-50]))

  def _record(self):
    return json.loads((self.dir / "run.json").read_text())

  def test_fingerprint_is_recorded(self):
    self._claim()
    data = self._record()["data"]
    self.assertEqual(
      sorted(data), ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    )
    for name, fp in data.items():
      content = (self.data / name).read_bytes()
      self.assertEqual(fp["bytes"], len(content))
      self.assertEqual(fp["sha256"], hashlib.sha256(content).hexdigest())

  def test_changed_file_is_refused_unless_allowed(self):
    self._claim()
    before = (self.dir / "run.json").read_bytes()
    self._shorten_valid()
    with mock.patch.dict(os.environ, {workdir_lib.ALLOW_DATA_CHANGE_ENV: ""}):
      with self.assertRaisesRegex(
        ValueError,
        f"workdir {self.dir}: data file ptb.valid.txt changed since the run "
        r"started \(was 399782 bytes, .*--allow_data_change",
      ):
        self._claim()
    self.assertEqual((self.dir / "run.json").read_bytes(), before)
    with mock.patch.dict(os.environ, {workdir_lib.ALLOW_DATA_CHANGE_ENV: "1"}):
      self.assertEqual(self._claim(), "resume")
    record = self._record()
    self.assertEqual(record["data"], fingerprint.ptb(self.data))
    self.assertEqual(record["data_changes"][0]["files"], ["ptb.valid.txt"])

  def test_moved_data_is_not_a_change(self):
    self._claim()
    moved = self.data.with_name("moved")
    self.data.rename(moved)
    self.data = moved
    self.assertEqual(self._claim(), "resume")

  def test_old_record_without_data_resumes_and_records_it(self):
    workdir_lib.claim(self.dir, self.config)  # as runs before the fix
    self.assertNotIn("data", self._record())
    self.assertEqual(self._claim(), "resume")
    self.assertEqual(self._record()["data"], fingerprint.ptb(self.data))

  def test_main_refuses_changed_data_and_flag_allows_it(self):
    self._claim()
    # Makes the allowed resume fail right after its claim, not train.
    (self.dir / "metrics.jsonl").mkdir()
    self._shorten_valid()
    before = _files(self.dir)
    flags = (
      "--config=experiments/enas_ptb.py:smoke",
      f"--data_dir={self.data}",
      f"--workdir={self.dir}",
    )
    out = _main(*flags)
    self.assertEqual(out.returncode, 1, msg=out.stderr[-2000:])
    self.assertIn(
      "error: workdir " + str(self.dir) + ": data file ptb.valid.txt changed",
      out.stderr.strip().splitlines()[-1],
    )
    self.assertEqual(_files(self.dir), before)
    out = _main(*flags, "--allow_data_change")
    self.assertIn("metrics.jsonl", out.stderr)  # got past the claim
    self.assertEqual(self._record()["data"], fingerprint.ptb(self.data))


class DigitsFingerprintTest(absltest.TestCase):
  def test_bundled_digits(self):
    fp = fingerprint.digits()
    self.assertEqual(fp[fingerprint.DIGITS]["bytes"], 1797 * 64 + 1797)
    self.assertEqual(fp, fingerprint.digits())


if __name__ == "__main__":
  absltest.main()
