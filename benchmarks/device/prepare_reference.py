"""Export the paper's PyTorch code (ENAS RNN path) and patch it for torch 2.x.

Usage (from the project root):

  python benchmarks/device/prepare_reference.py \\
      --src=../.mirror/kcyu2014+multi-model-forgetting/repo/.git \\
      --out=.device/ref

--src is a git directory (bare or a checkout) holding commit 6f6457f of
kcyu2014/multi-model-forgetting, or a plain folder with its files (then the
commit cannot be checked and PATCHES.txt says so). Only the Python files the
ENAS RNN search on PTB imports are exported (no CIFAR/wikitext/PTB data, no
assets, no CNN search code). --out is replaced on every run; it must be
git-ignored (the project ignores `.device/`): the reference code is never
committed here.

Each patch is an explicit text replacement with the number of times its
target must occur; a target found a different number of times raises
`PatchError` naming the patch, so a different source commit fails loudly
instead of being patched half-way. `PATCHES.txt` in --out lists the source
commit and every patch applied. Nothing here needs torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys

COMMIT = "6f6457f"
REPO = "kcyu2014/multi-model-forgetting"

# What the ENAS RNN path imports (config.py needs models/cnn_layers.py).
FILES = (
  "LICENSE",
  "main.py",
  "config.py",
  "trainer.py",
  "utils.py",
  "data/__init__.py",
  "data/text.py",
  "models/__init__.py",
  "models/shared_base.py",
  "models/shared_rnn.py",
  "models/controller.py",
  "models/wpl_module.py",
  "models/cnn_layers.py",
)


class PatchError(RuntimeError):
  """A patch's target text was not found the expected number of times."""


@dataclasses.dataclass(frozen=True)
class Patch:
  name: str
  path: str
  old: str
  new: str
  why: str
  count: int = 1


_IPYTHON = "import IPython\n"
_IPYTHON_NEW = "# [patched] import IPython (unused)\n"

PATCHES = (
  # Unused IPython imports (IPython is not installed on the device image).
  *(
    Patch(
      f"no-ipython:{p}",
      p,
      _IPYTHON,
      _IPYTHON_NEW,
      "unused `import IPython` removed",
    )
    for p in (
      "trainer.py",
      "utils.py",
      "models/shared_rnn.py",
      "models/wpl_module.py",
    )
  ),
  Patch(
    "utils-pil",
    "utils.py",
    "from PIL import Image\nfrom PIL import ImageFont\n"
    "from PIL import ImageDraw \n",
    "try:  # [patched] PIL is only used by make_gif\n"
    "    from PIL import Image, ImageFont, ImageDraw\n"
    "except ImportError:\n"
    "    Image = ImageFont = ImageDraw = None\n",
    "PIL import made optional (only make_gif uses it; no PIL on the image)",
  ),
  Patch(
    "utils-image-io",
    "utils.py",
    "try:\n"
    "    import scipy.misc\n"
    "    imread = scipy.misc.imread\n"
    "    imresize = scipy.misc.imresize\n"
    "    imsave = imwrite = scipy.misc.imsave\n"
    "except:\n"
    "    import cv2\n"
    "    imread = cv2.imread\n"
    "    imresize = cv2.imresize\n"
    "    imsave = imwrite = cv2.imwrite\n",
    "# [patched] scipy.misc image I/O is gone from SciPy and cv2 is absent;\n"
    "# nothing on the RNN path uses these names.\n"
    "imread = imresize = imsave = imwrite = None\n",
    "scipy.misc/cv2 image-I/O block replaced by None placeholders",
  ),
  Patch(
    "utils-detach",
    "utils.py",
    "    if type(h) == Variable:\n        return Variable(h.data)\n",
    "    if isinstance(h, torch.Tensor):  # [patched] Variable is Tensor now\n"
    "        return h.detach()\n",
    "utils.detach: `type(h) == Variable` is never true on torch>=0.4, so "
    "it recursed into the tensor's rows; now detaches any Tensor",
  ),
  Patch(
    "trainer-tensorboard",
    "trainer.py",
    "from tensorboard import TensorBoard\n",
    "try:  # [patched] tensorboardX is absent; run with use_tensorboard=False\n"
    "    from tensorboard import TensorBoard\n"
    "except ImportError:\n"
    "    TensorBoard = None\n",
    "top-level `from tensorboard import TensorBoard` made optional",
  ),
  Patch(
    "trainer-image-dataset",
    "trainer.py",
    "from data.image import Image\n",
    "class Image:  # [patched] stub: data.image needs torchvision (CNN only)\n"
    "    pass\n",
    "`from data.image import Image` (torchvision) replaced by a stub class; "
    "only used in isinstance(dataset, Image), False for PTB",
  ),
  Patch(
    "data-no-image",
    "data/__init__.py",
    "import data.image\n",
    "# [patched] import data.image (torchvision; CNN search only)\n",
    "data/__init__.py no longer imports data.image",
  ),
  Patch(
    "models-no-cnn",
    "models/__init__.py",
    "from models.shared_cnn import CNN\n",
    "# [patched] from models.shared_cnn import CNN (CNN search only)\n",
    "models/__init__.py no longer imports the CNN search model",
  ),
  Patch(
    "models-no-cnn-controller",
    "models/__init__.py",
    "from models.cnn_controller import CNNMicroController\n",
    "# [patched] from models.cnn_controller import CNNMicroController\n",
    "models/__init__.py no longer imports the CNN controller",
  ),
  Patch(
    "trainer-device",
    "trainer.py",
    'self.device = gpu = torch.device("cuda:0")\n',
    "self.device = gpu = torch.device(  # [patched] follow args.cuda\n"
    '            "cuda:0" if args.cuda and torch.cuda.is_available() '
    'else "cpu")\n',
    'Trainer.device was torch.device("cuda:0") unconditionally; now cuda:0 '
    "only when args.cuda (num_gpu > 0) and CUDA is available, else cpu",
  ),
  Patch(
    "rnn-init-wpl",
    "models/shared_rnn.py",
    "        self.wpl_monitored_modules = self.connections\n",
    "        self.wpl_monitored_modules = self.connections\n"
    "        self.init_wpl_weights()  # [patched] never called upstream\n",
    "RNN.__init__ now calls init_wpl_weights() once the monitored modules "
    "(the 2*66 edge Linears) are set; upstream never called it, so "
    "`.to(device)` raised KeyError '0-1-h' and the WPL had no Fisher/anchor",
  ),
  Patch(
    "rnn-update-fisher-keys",
    "models/shared_rnn.py",
    "update_fisher(dag_to_keys(dag), epoch=epoch)",
    "update_fisher(dag_to_keys(dag, self.args), epoch=epoch)",
    "RNN.update_fisher: dag_to_keys(dag) was missing its `args` argument",
  ),
  Patch(
    "rnn-wpl-keys",
    "models/shared_rnn.py",
    "compute_weight_plastic_loss_with_update_fisher(dag_to_keys(dag))",
    "compute_weight_plastic_loss_with_update_fisher("
    "dag_to_keys(dag, self.args))",
    "RNN.compute_weight_plastic_loss_with_update_fisher: dag_to_keys(dag) "
    "was missing its `args` argument",
  ),
  Patch(
    "rnn-clip-mask-device",
    "models/shared_rnn.py",
    "torch.FloatTensor(mask).cuda(), requires_grad=False)",
    "torch.FloatTensor(mask).to(hidden.device), requires_grad=False)",
    "hidden-norm clipping mask was moved with .cuda() unconditionally; now "
    "to the hidden state's device (needed on cpu)",
  ),
  Patch(
    "wpl-register-detached",
    "models/wpl_module.py",
    "            elif mode == 'register':\n"
    "                container.register_buffer(name, applyfn(p))\n",
    "            elif mode == 'register':  # [patched] not Parameters\n"
    "                container.register_buffer(name, applyfn(p.detach()))\n",
    "init_wpl_weights registered deepcopies of the Parameters "
    "(requires_grad=True) as the anchor buffers, so the WPL backward also "
    "accumulated into them until the first update_optimal_weights; now "
    "detached copies",
  ),
  Patch(
    "wpl-apply-own-buffers",
    "models/wpl_module.py",
    "                    self._modules_opt[k] = apply_fn_to_container("
    "m, self._modules_opt[k], mode='apply', fn=fn)\n"
    "                    self._fisher[k] = apply_fn_to_container("
    "m, self._fisher[k], mode='apply', fn=fn)\n",
    "                    # [patched] move their own tensors; upstream set\n"
    "                    # both to fn(weights): after .to(cuda) anchor and\n"
    "                    # Fisher aliased the live weights, and the first\n"
    "                    # in-place `fisher *= 0.1` rescaled the weights.\n"
    "                    self._modules_opt[k]._apply(fn)\n"
    "                    self._fisher[k]._apply(fn)\n",
    "WPLModule._apply (run by .to()/.cuda()) overwrote the anchor and the "
    "Fisher of every edge with fn(current weights); it now moves their own "
    "tensors",
  ),
)


def apply_patches(texts: dict[str, str], patches=PATCHES) -> dict[str, str]:
  """Returns `texts` (path -> source) with every patch applied.

  Raises PatchError when a patch's file is missing or its target does not
  occur exactly `count` times (checked before replacing, on the text as the
  earlier patches left it).
  """
  out = dict(texts)
  for p in patches:
    if p.path not in out:
      raise PatchError(f"{p.name}: file {p.path} not exported")
    found = out[p.path].count(p.old)
    if found != p.count:
      raise PatchError(
        f"{p.name}: target text found {found} times in {p.path}, "
        f"expected {p.count}: {p.old[:60]!r}"
      )
    out[p.path] = out[p.path].replace(p.old, p.new)
  return out


def _git_dir(src: str) -> str | None:
  """The git directory for `src`, or None when it is a plain folder."""
  for cand in (src, os.path.join(src, ".git")):
    r = subprocess.run(
      ["git", "--git-dir", cand, "rev-parse", "--git-dir"],
      capture_output=True,
      text=True,
    )
    if r.returncode == 0:
      return cand
  return None


def read_source(src: str, commit: str = COMMIT) -> tuple[dict[str, str], str]:
  """Reads FILES from `src`; returns (path -> text, source description)."""
  git_dir = _git_dir(src)
  texts = {}
  if git_dir is None:
    if not os.path.isdir(src):
      raise FileNotFoundError(f"--src {src} is neither a git dir nor a folder")
    for f in FILES:
      with open(os.path.join(src, f), encoding="utf-8") as fh:
        texts[f] = fh.read()
    return texts, f"plain folder {src} (commit not verified)"
  full = subprocess.run(
    ["git", "--git-dir", git_dir, "rev-parse", f"{commit}^{{commit}}"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  for f in FILES:
    texts[f] = subprocess.run(
      ["git", "--git-dir", git_dir, "show", f"{full}:{f}"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout
  return texts, f"{REPO} commit {full} (git dir {git_dir})"


def patches_report(source: str, patches=PATCHES) -> str:
  lines = [
    f"Reference code exported from {source}.",
    "Exported files: " + ", ".join(FILES),
    "Not exported: data sets, assets, tensorboard.py, data/image.py, "
    "models/shared_cnn.py, models/cnn_controller.py, generate_gif.py.",
    "Patches (exact text replacements, each checked to match):",
  ]
  for p in patches:
    lines.append(f"- {p.name} [{p.path}]: {p.why}")
  return "\n".join(lines) + "\n"


def export(src: str, out: str, commit: str = COMMIT) -> list[str]:
  """Writes the patched files and PATCHES.txt into `out` (replaced)."""
  texts, source = read_source(src, commit)
  patched = apply_patches(texts)  # raises before anything is written
  if os.path.exists(out):
    if not os.path.isdir(out) or (
      os.listdir(out) and not os.path.exists(os.path.join(out, "PATCHES.txt"))
    ):
      raise FileExistsError(
        f"{out} exists and is not an earlier export (no PATCHES.txt)"
      )
    shutil.rmtree(out)
  for f, text in patched.items():
    path = os.path.join(out, f)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
      fh.write(text)
  with open(os.path.join(out, "PATCHES.txt"), "w", encoding="utf-8") as fh:
    fh.write(patches_report(source))
  return sorted(patched)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", required=True, help="git dir or folder")
  ap.add_argument("--out", default=".device/ref")
  ap.add_argument("--commit", default=COMMIT)
  a = ap.parse_args(argv)
  files = export(a.src, a.out, a.commit)
  print(f"exported {len(files)} files, {len(PATCHES)} patches -> {a.out}")


if __name__ == "__main__":
  sys.exit(main())
