"""Tests of experiments/colab_tpu.ipynb: its structure, and a headless run."""

import hashlib
import importlib.util
import os
import pathlib
import re
from unittest import mock

import nbformat
import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NOTEBOOK = _ROOT / "experiments" / "colab_tpu.ipynb"
# Shell and magic lines (`!pip ...`, `%time`) are IPython, not Python.
_MAGIC = re.compile(r"^\s*[!%]")


def _read() -> nbformat.NotebookNode:
  return nbformat.read(_NOTEBOOK, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[str]:
  return [c.source for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
  """The cell's source with magic lines blanked (line numbers kept)."""
  return "\n".join(
    "" if _MAGIC.match(line) else line for line in source.splitlines()
  )


def _get_config(name: str, variant: str):
  """Calls experiments/`name`.py's get_config(variant)."""
  path = _ROOT / "experiments" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"_nb_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


class NotebookStructureTest(parameterized.TestCase):
  """Fast checks that keep the notebook honest without running it."""

  def test_valid_and_clean(self):
    nb = _read()
    nbformat.validate(nb)
    self.assertEqual(nb.metadata.kernelspec.name, "python3")
    for cell in nb.cells:
      if cell.cell_type == "code":
        # Stored without outputs: diffs stay readable, no stale results.
        self.assertEmpty(cell.outputs, msg=cell.source[:200])
        self.assertIsNone(cell.execution_count)

  def test_code_cells_compile(self):
    for i, source in enumerate(_code_cells(_read())):
      compile(_python(source), f"{_NOTEBOOK.name}[code cell {i}]", "exec")

  @parameterized.named_parameters(("smoke", "1", True), ("full", "0", False))
  def test_parameters_name_real_variants(self, env_value, smoke):
    (params,) = [s for s in _code_cells(_read()) if "SMOKE = True" in s]
    namespace = {}
    env = {"WPL_NOTEBOOK_SMOKE": env_value}
    with mock.patch.dict(os.environ, env), mock.patch("builtins.print"):
      exec(_python(params), namespace)  # the notebook's own cell
    self.assertEqual(namespace["SMOKE"], smoke)
    self.assertIn("REPO_URL", namespace)
    two = _get_config("two_models", namespace["TWO_MODELS_VARIANT"])
    enas = _get_config("enas_ptb", namespace["ENAS_VARIANT"])
    self.assertEqual(two.experiment, "two_models")
    self.assertEqual(enas.experiment, "enas_ptb")
    self.assertTrue(enas.wpl.enabled)

  def test_ptb_checksums_match_the_data(self):
    (cell,) = [s for s in _code_cells(_read()) if "PTB_SHA256 = {" in s]
    for name, digest in re.findall(r'"(ptb\.\w+\.txt)": \(\s*"(\w+)"', cell):
      path = DATA_DIR / "ptb" / name
      if not path.exists():
        self.skipTest(f"{path} missing")
      self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), digest)
    self.assertLen(re.findall(r"ptb\.\w+\.txt\": \(", cell), 3)


class NotebookRunTest(absltest.TestCase):
  @pytest.mark.slow
  def test_runs_headless_on_cpu(self):
    # Imported here: the fast tests need nbformat only.
    from nbclient import NotebookClient  # noqa: PLC0415

    cwd = pathlib.Path(self.create_tempdir().full_path)
    env = dict(
      os.environ,
      WPL_NOTEBOOK_SMOKE="1",
      WPL_DATA_DIR=str(DATA_DIR),
      WPL_REPO_ROOT=str(_ROOT),
      JAX_PLATFORMS="cpu",
    )
    env.pop("WPL_NOTEBOOK_WORKDIR", None)
    nb = _read()
    client = NotebookClient(
      nb,
      kernel_name="python3",
      timeout=900,
      resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)  # raises CellExecutionError on any cell error

    text = "\n".join(
      out.get("text", "")
      for cell in nb.cells
      if cell.cell_type == "code"
      for out in cell.outputs
      if out.output_type == "stream"
    )
    self.assertIn("backend: cpu", text)
    self.assertIn("wpl_jax is already importable", text)
    self.assertIn("| k | A | B variant |", text)
    self.assertIn("| run | architecture | valid ppl | test ppl |", text)
    images = [
      out
      for cell in nb.cells
      if cell.cell_type == "code"
      for out in cell.outputs
      if "image/png" in out.get("data", {})
    ]
    self.assertLen(images, 2)
    for workdir in ("two_models-smoke", "enas_ptb-smoke-wpl"):
      self.assertTrue((cwd / "wpl_runs" / workdir / "figure.png").exists())
    self.assertFalse((_ROOT / "wpl_runs").exists())


if __name__ == "__main__":
  absltest.main()
