"""The layering of wpl_jax: every arrow runs down.

Each module is imported alone, in a process where no wpl_jax module was
loaded before (a fork of an interpreter that imported only the third-party
stack), and the wpl_jax modules that import loads are read from
`sys.modules`:
* every module imports on its own;
* the library (the top level of wpl_jax and wpl_jax.data) loads no runtime
  and no study;
* the runtime (wpl_jax.runtime) loads no study (it names them by string);
* the ENAS model level (wpl_jax.enas outside enas.train) never loads
  enas.train, and the two studies never load each other.
"""

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


# One interpreter that has imported the third-party stack (jax, flax, optax,
# orbax, ...) but no wpl_jax module forks a child per module: each child
# starts with no wpl_jax module loaded, imports one, and reports what that
# loaded (fresh as far as wpl_jax is concerned; about 0.2 s a module
# instead of a whole interpreter's start).
_PROBE = """
import importlib, json, os, sys
import absl.flags, chex, flax.linen, jax, ml_collections, numpy, optax, scipy
import orbax.checkpoint
assert not [m for m in sys.modules if m.startswith("wpl_jax")]
out = {}
for name in sys.argv[1:]:
  r, w = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(r)
    try:
      importlib.import_module(name)
      res = {"ok": True, "loaded": sorted(
        m for m in sys.modules if m.startswith("wpl_jax"))}
    except BaseException as e:
      res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    os.write(w, json.dumps(res).encode())
    os._exit(0)
  os.close(w)
  data = b""
  while chunk := os.read(r, 65536):
    data += chunk
  os.close(r)
  os.waitpid(pid, 0)
  out[name] = json.loads(data) if data else {"ok": False, "error": "died"}
print(json.dumps(out))
"""


def _load_all(modules: list[str]) -> dict:
  r = subprocess.run(
    [sys.executable, "-c", _PROBE, *modules],
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=600,
    check=False,
  )
  if r.returncode != 0:
    raise AssertionError(f"the probe failed: {r.stderr[-2000:]}")
  return json.loads(r.stdout.splitlines()[-1])


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
    results = _load_all(modules)
    failed = {m: r["error"] for m, r in results.items() if not r["ok"]}
    self.assertEqual(failed, {}, "modules that do not import on their own")
    bad = {
      m: violations(m, r["loaded"])
      for m, r in results.items()
      if violations(m, r["loaded"])
    }
    self.assertEqual(bad, {}, "arrows that run up or across")
    # The probe sees what it should: a study module loads its own package.
    self.assertIn(
      "wpl_jax.enas.supernet", results["wpl_jax.enas.train.steps"]["loaded"]
    )


if __name__ == "__main__":
  absltest.main()
