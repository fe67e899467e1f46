"""The reference-peer scripts in benchmarks/device: no torch, no network.

prepare_reference.py's patches are checked on fake source trees made from
the patches' own target texts; the export of the real commit runs only when
the mirror of kcyu2014/multi-model-forgetting is on this machine.
torch_pieces.py's argument parsing, PTB file discovery and projection are
pure Python.
"""

import ast
import importlib.util
import json
import os
import pathlib
import shutil
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DEVICE = _ROOT / "benchmarks" / "device"
# Where the search tool's fetch leaves the reference (beside the project);
# the test that needs it is skipped elsewhere.
_MIRROR = pathlib.Path(
  os.environ.get(
    "WPL_REFERENCE_GIT",
    _ROOT.parent
    / ".mirror"
    / "kcyu2014+multi-model-forgetting"
    / "repo"
    / ".git",
  )
)


def _load(name):
  spec = importlib.util.spec_from_file_location(
    f"_torch_ref_{name}", _DEVICE / f"{name}.py"
  )
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


prep = _load("prepare_reference")
pieces = _load("torch_pieces")


def _fake_texts(drop=None, double=None):
  """Every exported file: each patch's target, as often as expected."""
  texts = {f: f"# fake {f}\n" for f in prep.FILES}
  for p in prep.PATCHES:
    n = p.count - (p is drop) + (p is double)
    texts[p.path] += "x = 1\n" + p.old * n
  return texts


def test_patches_apply_to_their_targets():
  out = prep.apply_patches(_fake_texts())
  for p in prep.PATCHES:
    assert p.new in out[p.path], p.name
  assert all("import IPython\n" not in t for t in out.values())


def test_patch_names_are_unique_and_files_exported():
  names = [p.name for p in prep.PATCHES]
  assert len(names) == len(set(names))
  assert {p.path for p in prep.PATCHES} <= set(prep.FILES)


@pytest.mark.parametrize("patch", prep.PATCHES, ids=lambda p: p.name)
def test_missing_target_raises(patch):
  with pytest.raises(prep.PatchError, match=patch.name):
    prep.apply_patches(_fake_texts(drop=patch))


@pytest.mark.parametrize("patch", prep.PATCHES, ids=lambda p: p.name)
def test_repeated_target_raises(patch):
  with pytest.raises(prep.PatchError, match="expected 1"):
    prep.apply_patches(_fake_texts(double=patch))


def test_missing_file_raises():
  texts = _fake_texts()
  del texts["utils.py"]
  with pytest.raises(prep.PatchError, match="not exported"):
    prep.apply_patches(texts)


def _write_tree(root, texts):
  for f, text in texts.items():
    path = root / f
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_export_plain_folder_replaces_out(tmp_path):
  src, out = tmp_path / "src", tmp_path / "out"
  _write_tree(src, _fake_texts())
  files = prep.export(str(src), str(out))
  assert sorted(prep.FILES) == files
  report = (out / "PATCHES.txt").read_text()
  assert "commit not verified" in report
  for p in prep.PATCHES:
    assert f"- {p.name} [" in report
  (out / "stale.py").write_text("old")
  prep.export(str(src), str(out))  # idempotent: replaces out
  assert not (out / "stale.py").exists()


def test_export_refuses_foreign_out_and_bad_source(tmp_path):
  src, out = tmp_path / "src", tmp_path / "out"
  _write_tree(src, _fake_texts())
  out.mkdir()
  (out / "mine.txt").write_text("keep")
  with pytest.raises(FileExistsError):
    prep.export(str(src), str(out))
  assert (out / "mine.txt").exists()
  broken = tmp_path / "broken"
  _write_tree(broken, _fake_texts(drop=prep.PATCHES[0]))
  with pytest.raises(prep.PatchError):
    prep.export(str(broken), str(tmp_path / "out2"))
  assert not (tmp_path / "out2").exists()  # nothing written on failure


@pytest.mark.skipif(
  not _MIRROR.is_dir() or shutil.which("git") is None,
  reason="mirror of kcyu2014/multi-model-forgetting not present",
)
def test_export_reference_commit(tmp_path):
  out = tmp_path / "ref"
  prep.main([f"--src={_MIRROR}", f"--out={out}"])
  report = (out / "PATCHES.txt").read_text()
  assert "6f6457f66107ef1b679ff6ef289be116da3ea4b3" in report
  for f in prep.FILES:
    if f.endswith(".py"):
      ast.parse((out / f).read_text(), filename=f)
  assert not (out / "data" / "image.py").exists()
  rnn = (out / "models" / "shared_rnn.py").read_text()
  assert "dag_to_keys(dag))" not in rnn
  assert "self.init_wpl_weights()" in rnn


def test_parse_args_defaults_and_checks():
  a = pieces.parse_args(["--data=d"])
  assert (a.hidden, a.tf32, a.reps, a.warmup) == (1000, 0, 5, 2)
  assert a.pieces == pieces.PIECES and a.jsonl is None
  a = pieces.parse_args(
    "--data=d --hidden=16 --tf32=1 --reps=3 --time_limit=7.5 "
    "--jsonl=o.jsonl --pieces=reward_eval,shared_step".split()
  )
  assert (a.hidden, a.tf32, a.reps, a.time_limit) == (16, 1, 3, 7.5)
  assert a.pieces == ("reward_eval", "shared_step")
  for bad in ("--warmup=1", "--reps=0", "--tf32=2", "--pieces=nope"):
    with pytest.raises(SystemExit):
      pieces.parse_args(["--data=d", bad])


def test_projection_arithmetic():
  med = {"shared_step": 2.0, "fisher_update": 3.0, "controller_step": 5.0}
  row = pieces.projection(med)
  assert row["piece"] == "projected"
  assert row["median_ms"] == 61 * 7 * 2.0 + 61 * 3.0 + 2000 * 5.0 == 11037
  assert row["projected_s"] == pytest.approx(11.037)
  assert row["parts"]["controller_ms"] == 10000
  assert "with_evals_ms" not in row
  row = pieces.projection({**med, "reward_eval": 7.0})
  assert row["with_evals_ms"] == 11037 + 122 * 7.0
  row = pieces.projection({"shared_step": 2.0})
  assert "median_ms" not in row
  assert row["error"] == "missing medians: fisher_update, controller_step"


def test_summarize_drops_warmup():
  s = pieces.summarize([1.0, 2.0, 0.003, 0.001, 0.002], warmup=2)
  assert s == {"median_ms": 2.0, "min_ms": 1.0, "reps": 3}
  with pytest.raises(RuntimeError):
    pieces.summarize([1.0, 2.0], warmup=2)


def test_ptb_names_accepted(tmp_path):
  ptb, plain = tmp_path / "ptb", tmp_path / "plain"
  ptb.mkdir()
  plain.mkdir()
  for s in pieces.SPLITS:
    (ptb / f"ptb.{s}.txt").write_text(f"{s} words\n")
    (plain / f"{s}.txt").write_text(f"{s} words\n")
  assert pieces.corpus_dir(str(plain), str(tmp_path)) == str(plain)
  made = pieces.corpus_dir(str(ptb), str(tmp_path / "tmp"))
  for s in pieces.SPLITS:
    assert (pathlib.Path(made) / f"{s}.txt").read_text() == f"{s} words\n"
  os.remove(ptb / "ptb.valid.txt")
  with pytest.raises(FileNotFoundError, match="valid"):
    pieces.find_ptb(str(ptb))


def test_rows_append_json_lines(tmp_path):
  path = tmp_path / "sub" / "t.jsonl"
  rows = pieces.Rows(str(path), {"hidden": 16, "tf32": 0})
  rows.write({"piece": "shared_step", "median_ms": 1.5})
  rows.write({"piece": "eval_k16", "skipped": "time limit"})
  got = [json.loads(line) for line in path.read_text().splitlines()]
  assert got[0] == {
    "code": "reference-pytorch",
    "piece": "shared_step",
    "hidden": 16,
    "tf32": 0,
    "median_ms": 1.5,
  }
  assert got[1]["skipped"] == "time limit"
