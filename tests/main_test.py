"""End-to-end tests of main.py: smoke runs and clean errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PNG = b"\x89PNG\r\n\x1a\n"


def _main(*flags: str, cwd: str | None = None) -> subprocess.CompletedProcess:
  """Runs main.py with `flags` in a fresh interpreter."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, str(_ROOT / "main.py"), *flags],
    capture_output=True,
    text=True,
    cwd=cwd or str(_ROOT),
    env=env,
    timeout=600,
    check=False,
  )


class MainTest(parameterized.TestCase):
  def _check_outputs(self, workdir: pathlib.Path, data_name: str):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    self.assertNotEmpty(records)
    self.assertContainsSubset(
      {"k", "a_setting", "run", "seed", "step", "acc_a", "acc_b"},
      records[0].keys(),
    )
    results = json.loads((workdir / "results.json").read_text())
    self.assertEqual(results["config"]["data"]["name"], data_name)
    variants = {row["variant"] for row in results["rows"]}
    self.assertEqual(variants, {"plain", "l2", "wpl"})
    for row in results["rows"]:
      self.assertBetween(row["a_after"]["mean"], 0.0, 1.0)
    self.assertIn("| k | A | B variant |", (workdir / "results.md").read_text())
    png = (workdir / "figure.png").read_bytes()
    self.assertEqual(png[:8], _PNG)
    self.assertGreater(len(png), 20_000)

  def test_smoke_digits(self):
    # Run from another cwd: the default config path must not depend on it.
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      "--config=" + str(_ROOT / "experiments/two_models.py") + ":smoke",
      f"--workdir={workdir}",
      cwd=self.create_tempdir().full_path,
    )
    self.assertEqual(out.returncode, 0, msg=out.stderr[-3000:])
    self._check_outputs(workdir, "digits")
    self.assertIn("| k | A | B variant |", out.stdout)

  @pytest.mark.slow
  def test_smoke_mnist(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(
      "--config=experiments/two_models.py:smoke_mnist",
      f"--data_dir={DATA_DIR / 'mnist'}",
      f"--workdir={workdir}",
    )
    self.assertEqual(out.returncode, 0, msg=out.stderr[-3000:])
    self._check_outputs(workdir, "mnist")

  @parameterized.named_parameters(
    (
      "missing_data_dir",
      [
        "--config=experiments/two_models.py:smoke_mnist",
        "--data_dir=/nonexistent/mnist",
      ],
      "/nonexistent",
    ),
    (
      "unknown_config_arg",
      ["--config=experiments/two_models.py:bogus"],
      "bogus",
    ),
    (
      "unknown_variant",
      [
        "--config=experiments/two_models.py:smoke",
        "--config.variants=('plain','ewc')",
      ],
      "variants",
    ),
    (
      "bad_steps",
      [
        "--config=experiments/two_models.py:smoke",
        "--config.protocol.b_steps=-3",
      ],
      "b_steps",
    ),
    ("unknown_flag", ["--no_such_flag=1"], "no_such_flag"),
    # The reason, not only "Error whilst parsing config file:" (issue 13).
    (
      "unknown_enas_variant",
      ["--config=experiments/enas_ptb.py:nope"],
      "unknown variant 'nope'; choose from",
    ),
    (
      "mistyped_field",
      ["--config=experiments/two_models.py:smoke", "--config.wpl.alpah=1"],
      "unknown config field 'alpah' (Did you mean \"alpha\"",
    ),
    # No --config: the default config's overrides fail while main.py's
    # flags are defined (was a traceback).
    (
      "mistyped_field_default_config",
      ["--config.protocol.bogus=1"],
      "unknown config field 'bogus'",
    ),
    (
      "missing_config_file",
      ["--config=experiments/no_such_file.py"],
      "No such file or directory: 'experiments/no_such_file.py'",
    ),
    (
      "unknown_experiment",
      ["--config=experiments/two_models.py:smoke", "--config.experiment=nope"],
      "nope",
    ),
  )
  def test_clean_error(self, flags, fragment):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    out = _main(*flags, f"--workdir={workdir}")
    self.assertNotEqual(out.returncode, 0)
    self.assertNotIn("Traceback", out.stderr)
    self.assertLen(out.stderr.strip().splitlines(), 1, msg=out.stderr)
    self.assertIn(fragment, out.stderr)
    self.assertFalse(workdir.exists())

  def test_refuses_non_empty_workdir(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    (workdir / "results.md").write_text("keep me")
    out = _main(
      "--config=experiments/two_models.py:smoke", f"--workdir={workdir}"
    )
    self.assertNotEqual(out.returncode, 0)
    self.assertLen(out.stderr.strip().splitlines(), 1, msg=out.stderr)
    self.assertIn("not empty", out.stderr)
    self.assertEqual((workdir / "results.md").read_text(), "keep me")


if __name__ == "__main__":
  absltest.main()
