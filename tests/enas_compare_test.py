"""experiments/enas_compare.py: peaks counted from the WPL start epoch."""

import json
import pathlib
import subprocess
import sys

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write_run(path: pathlib.Path, best5: list[float], start: int) -> None:
  path.mkdir(parents=True)
  with open(path / "metrics.jsonl", "w") as f:
    for epoch, v in enumerate(best5):
      rec = {
        "epoch": epoch,
        "wpl_start_epoch": start,
        "diff_mean": v / 2,
        "diff_best5": v,
        "diff_max": 2 * v,
        "reward": 0.1,
        "epoch_seconds": 1.0,
      }
      f.write(json.dumps(rec) + "\n")


class EnasCompareTest(absltest.TestCase):
  def _run(self, tmp, *extra):
    return subprocess.run(
      [
        sys.executable,
        str(_ROOT / "experiments/enas_compare.py"),
        f"--out={tmp}/out",
        f"--run=A:{tmp}/a",
        f"--run=B:{tmp}/b",
        *extra,
      ],
      capture_output=True,
      text=True,
      cwd=str(_ROOT),
      check=False,
    )

  def test_peaks_from_wpl_start_epoch_by_default(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    # Epoch 1 (before WPL starts at 2) holds A's largest value.
    _write_run(tmp / "a", [0.0, 900.0, 30.0, 10.0], start=2)
    _write_run(tmp / "b", [0.0, 5.0, 20.0, 40.0], start=2)
    r = self._run(tmp)
    self.assertEqual(r.returncode, 0, r.stderr)
    self.assertIn("peaks from epoch 2", r.stdout)
    rows = json.loads((tmp / "out" / "compare.json").read_text())
    self.assertEqual(rows[0]["diff_best5_peak"], "30.00 ± 0.00")
    self.assertEqual(rows[1]["diff_best5_peak"], "40.00 ± 0.00")
    # An explicit --from_epoch still counts the earlier epochs.
    r = self._run(tmp, "--from_epoch=1")
    self.assertEqual(r.returncode, 0, r.stderr)
    rows = json.loads((tmp / "out" / "compare.json").read_text())
    self.assertEqual(rows[0]["diff_best5_peak"], "900.00 ± 0.00")


if __name__ == "__main__":
  absltest.main()
