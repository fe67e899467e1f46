"""End-to-end tests of main.py: smoke runs and clean errors."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PNG = b"\x89PNG\r\n\x1a\n"


def _main(*flags: str, cwd: str | None = None) -> subprocess.CompletedProcess:
  """Runs main.py with `flags` in a fresh interpreter (no GLIBC_TUNABLES)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("GLIBC_TUNABLES", None)
  return subprocess.run(
    [sys.executable, str(_ROOT / "main.py"), *flags],
    capture_output=True,
    text=True,
    cwd=cwd or str(_ROOT),
    env=env,
    timeout=600,
    check=False,
  )


def _relaunch_env(calls: list) -> list:
  """main.relaunch_env(*args) for each args, in a fresh interpreter.

  (Importing main.py here would define its absl flags in pytest's process.)
  """
  code = (
    "import json, sys, main; "
    "print(json.dumps([main.relaunch_env(e, p, tuple(v)) "
    "for e, p, v in json.loads(sys.argv[1])]))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, json.dumps(calls)],
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    check=True,
  )
  return json.loads(out.stdout)


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
    # run.json records the platform and the precision the run used.
    platform_record = json.loads((workdir / "run.json").read_text())["platform"]
    self.assertEqual(platform_record["backend"], "cpu")
    self.assertEqual(platform_record["precision"], "float32")
    self.assertEqual(platform_record["jax_default_matmul_precision"], "highest")
    # main.py restarted itself with the allocator setting (glibc >= 2.35).
    if _relaunch_env([[{}, "linux", list(platform.libc_ver())]])[0] is not None:
      record = json.loads((workdir / "run.json").read_text())
      self.assertEqual(record["glibc_tunables"], "glibc.malloc.hugetlb=1")

  def test_relaunch_env(self):
    cases = {  # environ, sys.platform, libc_ver() -> restarts?
      "linux, glibc 2.36": ({}, "linux", ["glibc", "2.36"], True),
      "glibc 2.35": ({}, "linux", ["glibc", "2.35"], True),
      "glibc 2.31, no tunable": ({}, "linux", ["glibc", "2.31"], False),
      "musl": ({}, "linux", ["", ""], False),
      "macOS": ({}, "darwin", ["", ""], False),
      "the user's setting": ({"GLIBC_TUNABLES": "x=1"}, "linux", None, False),
      "opt out": ({"GLIBC_TUNABLES": ""}, "linux", None, False),
    }
    got = _relaunch_env(
      [
        [{"A": "1", **e}, p, v or ["glibc", "2.36"]]
        for e, p, v, _ in cases.values()
      ]
    )
    for (name, (*_, restarts)), env in zip(cases.items(), got, strict=True):
      want = {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
      self.assertEqual(env, want if restarts else None, msg=name)

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
