"""`python -m wpl_jax.runtime.plots WORKDIR` redraws each run's figure."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from absl.testing import absltest

from experiments import enas_ptb, space32
from experiments import two_models as two_models_config
from wpl_jax.runtime import plots
from wpl_jax.runtime import workdir as workdir_lib
from wpl_jax.two_models import study as two_models

_PNG = b"\x89PNG\r\n\x1a\n"
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path: pathlib.Path, records: list[dict]) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _two_model_records(config, rng):
  """Records as train_b writes them, and the arrays they came from."""
  runs = two_models.make_runs(config)
  steps = list(
    range(0, config.protocol.b_steps + 1, config.protocol.eval_every)
  )
  want, records = {}, []
  for k in config.protocol.shared_layers:
    for setting in config.protocol.a_settings:
      acc_a = rng.random((len(steps), len(runs)))
      acc_b = rng.random((len(steps), len(runs)))
      want[(k, setting)] = (acc_a, acc_b)
      for t, step in enumerate(steps):
        for i, r in enumerate(runs):
          records.append(
            {
              "k": k,
              "a_setting": setting,
              "run": r.name,
              "variant": r.variant,
              "estimator": r.estimator,
              "alpha": r.alpha,
              "seed": r.seed,
              "step": step,
              "acc_a": float(acc_a[t, i]),
              "acc_b": float(acc_b[t, i]),
            }
          )
  return want, records, steps


class PlotsTest(absltest.TestCase):
  def test_two_models_results_round_trip_and_figure(self):
    config = two_models_config.get_config("smoke")
    want, records, steps = _two_model_records(config, np.random.default_rng(0))
    got = two_models.results_from_metrics(config, records)
    self.assertEqual(list(got), list(want))
    for key, (acc_a, acc_b) in want.items():
      np.testing.assert_array_equal(got[key]["steps"], steps)
      np.testing.assert_array_equal(got[key]["acc_a"], acc_a)
      np.testing.assert_array_equal(got[key]["acc_b"], acc_b)
    # A running job: the last evaluation of the last pair is incomplete.
    partial = two_models.results_from_metrics(config, records[:-1])
    last = list(want)[-1]
    self.assertLen(partial[last]["steps"], len(steps) - 1)
    workdir = pathlib.Path(self.create_tempdir().full_path)
    workdir_lib.claim(workdir, config)
    _write(workdir / "metrics.jsonl", records)
    out = plots.redraw(workdir)
    self.assertTrue(out.read_bytes().startswith(_PNG))

  def test_enas_and_truth_figures_from_the_command_line(self):
    base = pathlib.Path(self.create_tempdir().full_path)
    enas, truth = base / "enas", base / "truth"
    workdir_lib.claim(enas, enas_ptb.get_config("smoke"))
    _write(
      enas / "metrics.jsonl",
      [
        {
          "epoch": e,
          "diff_mean": 1.0 + e,
          "diff_best5": 2.0,
          "diff_max": 3.0,
          "reward": 0.1 * e,
        }
        for e in range(3)
      ],
    )
    workdir_lib.claim(truth, space32.get_config("truth"))
    _write(
      truth / "metrics.jsonl",
      [
        {
          "step": s,
          "valid_ppl": list(np.linspace(300, 400, 32) - s),
          "best_ppl": 300.0 - s,
          "median_ppl": 350.0 - s,
        }
        for s in (10, 20)
      ],
    )
    empty = base / "empty"
    empty.mkdir()
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        "wpl_jax.runtime.plots",
        str(enas),
        str(truth),
        str(empty),
      ],
      capture_output=True,
      text=True,
      cwd=str(_ROOT),
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      check=False,
    )
    self.assertEqual(out.returncode, 1, msg=out.stderr[-2000:])
    self.assertIn("holds no wpl_jax run", out.stderr)
    for d in (enas, truth):
      self.assertTrue((d / "figure.png").read_bytes().startswith(_PNG))


if __name__ == "__main__":
  absltest.main()
