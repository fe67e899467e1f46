"""Tests of experiments/space32_ladder.py: the ground truth's ladder."""

import itertools
import json
import pathlib
import subprocess
import sys

import numpy as np
from absl.testing import absltest
from scipy import stats

from experiments import space32_ladder
from wpl_jax.enas import ranking

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PUBLISHED = _ROOT / "experiments" / "results" / "space32_published.json"
_STORED = _ROOT / "benchmarks/device/results/2026-12-04_h200_ladder/cmd3_h128"


def _tau(a, b):
  return stats.kendalltau(a, b).statistic


class PointStatsTest(absltest.TestCase):
  def test_against_scipy(self):
    pub = ranking.load_published(_PUBLISHED)
    names = sorted(pub.archs)  # another order than the published one
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 200, size=32)
    ppl = base + rng.normal(scale=10, size=(3, 32))
    truth = rng.uniform(100, 200, size=32)
    got = space32_ladder.point_stats(names, ppl, pub, truth)

    pairs = list(itertools.combinations(range(3), 2))
    self.assertAlmostEqual(
      got["seed_tau"], np.mean([_tau(ppl[i], ppl[j]) for i, j in pairs])
    )
    fan = np.asarray([n.split("|")[2][0] == "0" for n in names])
    self.assertEqual(fan.sum(), 16)
    self.assertAlmostEqual(
      got["seed_tau_fan"],
      np.mean([_tau(ppl[i][fan], ppl[j][fan]) for i, j in pairs]),
    )
    loo = [_tau(ppl[i], np.delete(ppl, i, 0).mean(0)) for i in range(3)]
    self.assertAlmostEqual(got["loo_tau"], np.mean(loo))
    position = [pub.archs.index(n) for n in names]
    mean = ppl.mean(0)
    self.assertAlmostEqual(got["published_tau"], _tau(mean, position))
    self.assertAlmostEqual(got["truth_tau"], _tau(mean, truth))
    ranks = stats.rankdata(mean)
    self.assertAlmostEqual(got["rank_fan"], ranks[fan].mean())
    self.assertAlmostEqual(
      got["published_idseq"], ranking.id_sequence_tau(mean, names, pub)
    )
    self.assertEqual(got["best"], names[int(np.argmin(mean))])

  def test_family(self):
    self.assertEqual(space32_ladder.family("tanh|0:relu|0:tanh"), "fan")
    self.assertEqual(space32_ladder.family("tanh|0:relu|1:tanh"), "chain")


class StoredLadderTest(absltest.TestCase):
  """The script on the stored H200 run (H = 128, 3 seeds, 5 epochs)."""

  def test_stored_run(self):
    out = pathlib.Path(self.create_tempdir().full_path)
    r = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "experiments/space32_ladder.py"),
        f"--runs={_STORED}",
        f"--out={out}",
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    (lad,) = json.loads((out / "ladder.json").read_text())
    self.assertEqual((lad["hidden"], lad["seeds"]), (128, 3))
    self.assertTrue(lad["finished"])
    self.assertLen(lad["points"], 5)
    # The last point from the raw per-seed perplexities, independently.
    last = [json.loads(x) for x in (_STORED / "metrics.jsonl").open()][-1]
    ppl = np.asarray(last["valid_ppl"])
    want = np.mean(
      [_tau(ppl[i], ppl[j]) for i, j in itertools.combinations(range(3), 2)]
    )
    self.assertAlmostEqual(lad["points"][-1]["seed_tau"], want)
    self.assertIn("| H=128 5 ep lr 20 | 5 |", r.stdout)
    self.assertTrue((out / "figure.png").exists())

  def test_bad_run(self):
    r = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "experiments/space32_ladder.py"),
        f"--runs={self.create_tempdir().full_path}",
        f"--out={self.create_tempdir().full_path}",
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(r.returncode, 1)
    self.assertIn("error:", r.stderr)
    self.assertLen(r.stderr.strip().splitlines(), 1)


if __name__ == "__main__":
  absltest.main()
