"""The package-to-package import picture of wpl_jax, its file sizes, and
the private names that cross modules.

  python tools/import_picture.py [--root=.] [--sizes]

Reads every module under wpl_jax/ (and main.py, experiments/, benchmarks/,
tests/ as importers) with `ast`, without importing anything, and prints:

* each package's imports of other wpl_jax packages, with the number of
  import statements (a package is a folder: `wpl_jax` is the top level,
  `wpl_jax.enas.train` the folder enas/train/; imports inside functions
  count too);
* with --sizes, the lines of every module under wpl_jax/;
* every use of a private name (`_x`) of one wpl_jax module from another
  file: `from m import _x`, or `m._x` where `m` names a wpl_jax module.
"""

import ast
import collections
import pathlib
import sys

from absl import app, flags

_ROOT = flags.DEFINE_string("root", ".", "The checkout.")
_SIZES = flags.DEFINE_bool("sizes", False, "Also print module sizes.")


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  rel = path.relative_to(root).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def package_of(module: str, packages: set[str]) -> str:
  """The longest package (folder) that holds `module`."""
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    cand = ".".join(parts[:n])
    if cand in packages and cand != module:
      return cand
  return parts[0]


def _resolve(node: ast.ImportFrom, modules: set[str]) -> list[str]:
  """The wpl_jax modules an ImportFrom loads (the module, or its names)."""
  if not node.module or not node.module.startswith("wpl_jax"):
    return []
  out = []
  for alias in node.names:
    sub = f"{node.module}.{alias.name}"
    out.append(sub if sub in modules else node.module)
  return out


def scan(root: pathlib.Path) -> dict:
  """Imports, sizes and private-name crossings of the checkout at `root`."""
  lib = sorted((root / "wpl_jax").rglob("*.py"))
  modules = {module_name(root, p) for p in lib}
  packages = {module_name(root, p) for p in lib if p.name == "__init__.py"} | {
    "wpl_jax"
  }
  files = (
    lib
    + [root / "main.py"]
    + sorted(
      p
      for d in ("experiments", "benchmarks", "tests")
      for p in (root / d).rglob("*.py")
    )
  )
  edges = collections.Counter()
  private = []
  for path in files:
    if not path.exists():
      continue
    me = module_name(root, path)
    mine = None
    if me.startswith("wpl_jax"):  # a package's __init__ belongs to it
      mine = me if me in packages else package_of(me, packages)
    tree = ast.parse(path.read_text(), str(path))
    aliases = {}  # local name -> wpl_jax module
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith("wpl_jax"):
            targets.append(a.name)
            aliases[a.asname or a.name] = a.name
      elif isinstance(node, ast.ImportFrom):
        targets = _resolve(node, modules)
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          if sub in modules:
            aliases[a.asname or a.name] = sub
          elif a.name.startswith("_") and node.module.startswith("wpl_jax"):
            private.append((str(path.relative_to(root)), node.module, a.name))
      if mine is not None:  # one count per statement and package
        for theirs in {
          t if t in packages else package_of(t, packages) for t in targets
        }:
          if theirs != mine:
            edges[(mine, theirs)] += 1
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and aliases[node.value.id] != me
      ):
        private.append(
          (str(path.relative_to(root)), aliases[node.value.id], node.attr)
        )
  sizes = {module_name(root, p): len(p.read_text().splitlines()) for p in lib}
  return {"edges": edges, "private": private, "sizes": sizes}


def report(result: dict, sizes: bool) -> str:
  lines = ["package imports (importer -> imported: statements)"]
  for (a, b), n in sorted(result["edges"].items()):
    lines.append(f"  {a} -> {b}: {n}")
  if sizes:
    lines.append("module sizes (lines)")
    for m, n in sorted(result["sizes"].items(), key=lambda x: -x[1]):
      lines.append(f"  {n:5d}  {m}")
  priv = sorted(set(result["private"]))
  lines.append(f"private names used across modules: {len(priv)}")
  for f, m, name in priv:
    lines.append(f"  {f}: {m}.{name}")
  return "\n".join(lines)


def main(argv):
  del argv
  root = pathlib.Path(_ROOT.value).resolve()
  if not (root / "wpl_jax").is_dir():
    print(f"error: {root} has no wpl_jax/ folder", file=sys.stderr)
    sys.exit(1)
  print(report(scan(root), _SIZES.value))


if __name__ == "__main__":
  app.run(main)
