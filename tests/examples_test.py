"""Runs the README's "WPL in your own model" snippet and its example scripts."""

import contextlib
import importlib.util
import io
import math
import pathlib
import re

from absl.testing import absltest, parameterized

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_EXAMPLES = _ROOT / "experiments" / "examples"
_LINE = {
  "before": r"A before B:\s+([0-9.]+)",
  "after_plain": r"A after B without WPL:\s+([0-9.]+)",
  "after_wpl": r"A after B with WPL:\s+([0-9.]+)",
}


def _readme_snippet() -> str:
  text = (_ROOT / "README.md").read_text(encoding="utf-8")
  found = re.search(
    r"<!-- readme-example -->\s*```python\n(.*?)```\s*<!-- /readme-example -->",
    text,
    flags=re.S,
  )
  if found is None:
    raise AssertionError("README.md has no <!-- readme-example --> block")
  return found.group(1)


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, _EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ReadmeExampleTest(absltest.TestCase):
  def test_snippet_runs_and_wpl_keeps_a(self):
    code = _readme_snippet()
    # Under 30 lines of code (ruff format's blank lines not counted).
    self.assertLessEqual(len([x for x in code.splitlines() if x.strip()]), 30)
    namespace = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    self.assertIn("with WPL", out.getvalue())
    acc = namespace["acc"]
    before, plain, wpl = (
      float(acc(namespace[k])) for k in ("params_a", "plain", "with_wpl")
    )
    for a in (before, plain, wpl):
      self.assertBetween(a, 0.0, 1.0)
    self.assertGreater(before, 0.9)
    # Robust: over seeds 0-4 WPL kept A 0.017-0.133 above plain training.
    self.assertGreater(wpl, plain)
    # The penalty is live: finite, positive, and smaller where WPL trained.
    penalty = namespace["wpl"]
    p_wpl = float(penalty(namespace["with_wpl"]))
    p_plain = float(penalty(namespace["plain"]))
    self.assertTrue(math.isfinite(p_plain))
    self.assertGreater(p_wpl, 0.0)
    self.assertLess(p_wpl, p_plain)


class ExampleScriptsTest(parameterized.TestCase):
  @parameterized.parameters(
    "nnx_digits", "pytree_digits", "linen_batchnorm_digits"
  )
  def test_prints_three_accuracies_and_wpl_helps(self, name):
    module = _load(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      acc = module.main()  # default settings: compile time dominates
    text = out.getvalue()
    for key, pattern in _LINE.items():
      found = re.search(pattern, text)
      self.assertIsNotNone(found, f"{key!r} line missing from:\n{text}")
      printed = float(found.group(1))
      self.assertBetween(printed, 0.0, 1.0)
      self.assertAlmostEqual(printed, acc[key], delta=5e-4)
    self.assertGreater(acc["before"], 0.9)
    # Robust: over seeds 0-4 WPL beat plain by 0.039-0.44 in every script.
    self.assertGreater(acc["after_wpl"], acc["after_plain"])

  def test_steps_flag_is_honoured(self):
    module = _load("pytree_digits")
    with contextlib.redirect_stdout(io.StringIO()):
      acc = module.main(steps=1)
    # One Adam step from random weights cannot fit five classes.
    self.assertLess(acc["before"], 0.9)


if __name__ == "__main__":
  absltest.main()
