"""The layering of wpl_jax: every arrow runs down.

Each module is imported in a fresh interpreter, alone, and the wpl_jax
modules that import loads are read from `sys.modules`:
* every module imports on its own;
* the library (the top level of wpl_jax and wpl_jax.data) loads no runtime
  and no study;
* the runtime (wpl_jax.runtime) loads no study (it names them by string);
* the ENAS model level (wpl_jax.enas outside enas.train) never loads
  enas.train, and the two studies never load each other.
"""

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDIES = ("wpl_jax.enas", "wpl_jax.two_models")
RUNTIME = "wpl_jax.runtime"


def _within(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def layer(module: str) -> str:
  """ "library", "runtime", "enas", "enas.train" or "two_models"."""
  if _within(module, "wpl_jax.enas.train"):
    return "enas.train"
  if _within(module, "wpl_jax.enas"):
    return "enas"
  if _within(module, "wpl_jax.two_models"):
    return "two_models"
  if _within(module, RUNTIME):
    return "runtime"
  return "library"


# What each layer may not load.
FORBIDDEN = {
  "library": (RUNTIME, *STUDIES),
  "runtime": STUDIES,
  "enas": ("wpl_jax.enas.train", "wpl_jax.two_models"),
  "enas.train": ("wpl_jax.two_models",),
  "two_models": ("wpl_jax.enas",),
}


def violations(module: str, loaded: list[str]) -> list[str]:
  """The modules `module` loaded although its layer may not load them."""
  bad = FORBIDDEN[layer(module)]
  return sorted(m for m in loaded if any(_within(m, b) for b in bad))


def all_modules() -> list[str]:
  out = []
  for p in sorted((_ROOT / "wpl_jax").rglob("*.py")):
    parts = list(p.relative_to(_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out.append(".".join(parts))
  return out


_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("wpl_jax"))))
"""


def _load(module: str) -> tuple[int, list[str], str]:
  r = subprocess.run(
    [sys.executable, "-c", _PROBE, module],
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
    check=False,
  )
  loaded = json.loads(r.stdout.splitlines()[-1]) if r.returncode == 0 else []
  return r.returncode, loaded, r.stderr[-1500:]


class RulesTest(absltest.TestCase):
  """The rules themselves flag what they should (no subprocess)."""

  def test_layers(self):
    self.assertEqual(layer("wpl_jax.fisher"), "library")
    self.assertEqual(layer("wpl_jax.data.ptb"), "library")
    self.assertEqual(layer("wpl_jax.runtime.checkpoint"), "runtime")
    self.assertEqual(layer("wpl_jax.enas.supernet"), "enas")
    self.assertEqual(layer("wpl_jax.enas.train.search"), "enas.train")
    self.assertEqual(layer("wpl_jax.two_models.model"), "two_models")

  def test_violations_are_found(self):
    self.assertEqual(
      violations("wpl_jax.loss", ["wpl_jax", "wpl_jax.runtime.metrics"]),
      ["wpl_jax.runtime.metrics"],
    )
    self.assertEqual(
      violations("wpl_jax.runtime.plots", ["wpl_jax.enas.train.search"]),
      ["wpl_jax.enas.train.search"],
    )
    self.assertEqual(
      violations("wpl_jax.enas.sampler", ["wpl_jax.enas.train.steps"]),
      ["wpl_jax.enas.train.steps"],
    )
    self.assertEqual(
      violations("wpl_jax.enas.train.truth", ["wpl_jax.runtime.metrics"]), []
    )


class LayeringTest(absltest.TestCase):
  def test_every_module_alone_and_every_arrow_down(self):
    modules = all_modules()
    self.assertGreater(len(modules), 40)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      results = dict(zip(modules, pool.map(_load, modules), strict=True))
    failed = {m: err for m, (rc, _, err) in results.items() if rc != 0}
    self.assertEqual(failed, {}, "modules that do not import on their own")
    bad = {
      m: violations(m, loaded)
      for m, (_, loaded, _) in results.items()
      if violations(m, loaded)
    }
    self.assertEqual(bad, {}, "arrows that run up or across")


if __name__ == "__main__":
  absltest.main()
