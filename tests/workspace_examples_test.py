"""Runs the Python examples of WORKSPACE.md §1.1, so that they cannot rot."""

import pathlib
import re

from absl.testing import absltest

_WORKSPACE = pathlib.Path(__file__).resolve().parents[1] / "WORKSPACE.md"


def _section_examples(heading: str) -> list[str]:
  text = _WORKSPACE.read_text(encoding="utf-8")
  start = text.index(heading)
  end = text.find("\n## ", start)
  section = text[start : end if end > 0 else None]
  return re.findall(r"```python\n(.*?)```", section, flags=re.S)


class WorkspaceExamplesTest(absltest.TestCase):
  def test_section_1_1_examples_run(self):
    blocks = _section_examples("### 1.1 The per-example contract")
    self.assertNotEmpty(blocks)
    for code in blocks:
      namespace = {}
      exec(compile(code, "WORKSPACE.md §1.1", "exec"), namespace)  # noqa: S102
      self.assertIn("penalty", namespace)
      self.assertGreater(float(namespace["penalty"]), 0.0)


if __name__ == "__main__":
  absltest.main()
