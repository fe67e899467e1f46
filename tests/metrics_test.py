"""Tests of the JSONL writer, result tables and plotting."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax.runtime import metrics


class MetricsTest(parameterized.TestCase):
  def test_jsonl_round_trip(self):
    path = pathlib.Path(self.create_tempdir().full_path) / "m.jsonl"
    with metrics.JsonlWriter(path) as log:
      log.write({"step": np.int32(3), "acc": jnp.float32(0.5), "v": [1, 2]})
      log.write({"step": 4, "acc": np.array([0.25, 0.75]), "nan": float("nan")})
    records = metrics.read_jsonl(path)
    self.assertEqual(records[0], {"step": 3, "acc": 0.5, "v": [1, 2]})
    self.assertEqual(records[1]["acc"], [0.25, 0.75])
    self.assertEqual(records[1]["nan"], "nan")  # Strict JSON: no bare NaN.
    for line in path.read_text().splitlines():
      json.loads(line)

  def test_mean_std(self):
    m, s = metrics.mean_std([0.5, 0.7])
    self.assertAlmostEqual(m, 0.6)
    self.assertAlmostEqual(s, 0.1)
    self.assertEqual(metrics.format_mean_std([0.5, 0.7]), "0.600 ± 0.100")

  def test_markdown_table(self):
    table = metrics.markdown_table(
      [{"a": 1, "b": "x"}, {"a": 2}], [("a", "A"), ("b", "B")]
    )
    self.assertEqual(
      table.splitlines(), ["| A | B |", "|---|---|", "| 1 | x |", "| 2 |  |"]
    )

  def test_markdown_table_escapes_pipes(self):
    table = metrics.markdown_table(
      [{"a": "tanh|0:relu|1:tanh"}], [("a", "cell")]
    )
    self.assertEqual(table.splitlines()[-1], "| tanh\\|0:relu\\|1:tanh |")

  def test_write_json(self):
    path = pathlib.Path(self.create_tempdir().full_path) / "r.json"
    metrics.write_json(path, {"x": np.float32(1.5), "y": (1, 2)})
    self.assertEqual(json.loads(path.read_text()), {"x": 1.5, "y": [1, 2]})

  @parameterized.parameters(1, 4)
  def test_plot_panels_png(self, num_panels):
    path = pathlib.Path(self.create_tempdir().full_path) / "f.png"
    x = np.arange(5) * 10
    panels = [
      {
        "title": f"panel {i}",
        "curves": [
          {
            "label": "A",
            "x": x,
            "mean": x / 50,
            "std": x / 500,
            "color": "tab:blue",
          },
          {"label": "B", "x": x, "mean": 1 - x / 50, "linestyle": "--"},
        ],
      }
      for i in range(num_panels)
    ]
    metrics.plot_panels(panels, path, xlabel="it", ylabel="acc", ncols=3)
    data = path.read_bytes()
    self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
    self.assertGreater(len(data), 10_000)


class TolerantJsonlTest(absltest.TestCase):
  """What a crash mid-append leaves must not block a resume or a plot."""

  def setUp(self):
    super().setUp()
    self.path = pathlib.Path(self.create_tempdir().full_path) / "m.jsonl"

  def test_torn_last_line_is_dropped_with_one_log_line(self):
    self.path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "lo')
    with self.assertLogs("absl", "WARNING") as logs:
      records = metrics.read_jsonl(self.path)
    self.assertEqual(records, [{"epoch": 0}, {"epoch": 1}])
    self.assertLen(logs.output, 1)
    self.assertIn("torn last line 3", logs.output[0])

  def test_writer_cuts_a_torn_tail_before_appending(self):
    self.path.write_text('{"epoch": 0}\n{"epo')
    with self.assertLogs("absl", "WARNING"):
      with metrics.JsonlWriter(self.path) as log:
        log.write({"epoch": 1})
    self.assertEqual(self.path.read_text(), '{"epoch": 0}\n{"epoch": 1}\n')
    self.assertEqual(
      metrics.read_jsonl(self.path), [{"epoch": 0}, {"epoch": 1}]
    )

  def test_bad_line_inside_names_file_and_line(self):
    self.path.write_text('{"epoch": 0}\ngarbage\n{"epoch": 2}\n')
    with self.assertRaisesRegex(
      ValueError, r"m\.jsonl line 2 is not a JSON record .*delete that line"
    ):
      metrics.read_jsonl(self.path)
    self.path.write_text('{"epoch": 0}\n[1, 2]\n{"epoch": 2}\n')
    with self.assertRaisesRegex(ValueError, "line 2 is not a JSON record"):
      metrics.read_jsonl(self.path)

  def test_whole_file_is_read_unchanged(self):
    self.path.write_text('{"a": 1}\n\n{"b": [1, 2]}\n')
    self.assertEqual(metrics.read_jsonl(self.path), [{"a": 1}, {"b": [1, 2]}])


if __name__ == "__main__":
  absltest.main()
