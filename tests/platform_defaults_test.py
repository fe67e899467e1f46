"""Platform defaults ("auto"), the precision setting, and resuming across them.

Oracles: the table in `wpl_jax.runtime.platform_defaults` written out by
hand, JAX's
own config after `resolve`, and workdir/checkpoint comparisons built from
records as an earlier platform (or an earlier version) would have written
them.
"""

import json

import jax
import ml_collections
from absl.testing import absltest, parameterized

from experiments import enas_ptb, space32
from wpl_jax import _versions
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import truth as enas_truth
from wpl_jax.runtime import platform_defaults as pd
from wpl_jax.runtime import workdir as workdir_lib

CPU = {
  "search.eval_vmap": 1,
  "wpl.chunk_size": 16,
  "truth.arch_batch": 1,
  "truth.checkpoint_every": 50,
  "search.grad_after_scan_from": 800,
}
ACCELERATOR = {
  "search.eval_vmap": 0,
  "wpl.chunk_size": 64,
  "truth.arch_batch": 32,
  "truth.checkpoint_every": 0,
  "search.grad_after_scan_from": 0,
}


class PrecisionRestored(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    before = jax.config.jax_default_matmul_precision
    self.addCleanup(
      lambda: jax.config.update("jax_default_matmul_precision", before)
    )


class ValuesTest(PrecisionRestored):
  def test_the_table(self):
    for field in CPU:
      self.assertEqual(pd.value_for(field, "cpu"), CPU[field], field)
      for platform in ("gpu", "tpu"):
        self.assertEqual(
          pd.value_for(field, platform), ACCELERATOR[field], field
        )
    self.assertEqual(set(pd.DEFAULTS), set(CPU))

  def test_unknown_field_has_no_default(self):
    with self.assertRaisesRegex(ValueError, "model.hidden has no platform"):
      pd.value_for("model.hidden", "gpu")

  def test_the_configs_default_to_auto(self):
    c = space32.get_config("truth")
    for field in CPU:
      self.assertEqual(pd.lookup(c, field)[0][field.split(".")[-1]], "auto")
    self.assertEqual(c.precision, "float32")

  def test_get_resolves_on_this_backend(self):
    c = space32.get_config("truth")
    want = CPU if jax.default_backend() == "cpu" else ACCELERATOR
    for field, value in want.items():
      self.assertEqual(pd.get(c, field), value, field)

  def test_get_takes_numbers_given_as_text_and_ints(self):
    c = enas_ptb.get_config("smoke")
    c.search.eval_vmap = "0"  # what --config.search.eval_vmap=0 gives
    self.assertEqual(pd.get(c, "search.eval_vmap"), 0)
    c.search.eval_vmap = 3
    self.assertEqual(pd.get(c, "search.eval_vmap"), 3)
    c.search.eval_vmap = "fast"
    with self.assertRaisesRegex(ValueError, "search.eval_vmap must be an"):
      pd.get(c, "search.eval_vmap")
    self.assertEqual(pd.get(c, "truth.arch_batch", "absent"), "absent")

  def test_resolve_copies_records_and_sets_the_precision(self):
    c = space32.get_config("truth")
    c.search.eval_vmap = "2"
    out, record = pd.resolve(c)
    self.assertEqual(c.truth.arch_batch, "auto")  # the given config is kept
    self.assertEqual(out.search.eval_vmap, 2)
    self.assertEqual(out.wpl.chunk_size, pd.get(c, "wpl.chunk_size"))
    self.assertEqual(record["backend"], jax.default_backend())
    self.assertEqual(record["resolved"]["search.eval_vmap"], 2)
    self.assertEqual(set(record["resolved"]), set(CPU))
    json.dumps(record)  # run.json stores it
    self.assertEqual(record["jax_default_matmul_precision"], "highest")

    seen = []

    @pd.with_precision
    def run(config):
      seen.append(jax.config.jax_default_matmul_precision)

    before = jax.config.jax_default_matmul_precision
    run(c)
    c.precision = "tf32"
    run(c)
    c.precision = "default"
    run(c)
    self.assertEqual(seen, ["highest", "tensorfloat32", before])
    # Restored after each run: nothing leaks into the next one.
    self.assertEqual(jax.config.jax_default_matmul_precision, before)
    _, record = pd.resolve(c)
    self.assertEqual(record["precision"], "default")
    c.precision = "fp8"
    with self.assertRaisesRegex(ValueError, "config.precision must be one"):
      pd.resolve(c)

  def test_validate_checks_auto_fields_and_the_precision(self):
    c = enas_ptb.get_config("smoke")
    enas_search.validate(c)  # "auto" passes as what it resolves to
    c.wpl.chunk_size = "0"
    with self.assertRaisesRegex(ValueError, "wpl.chunk_size"):
      enas_search.validate(c)
    c = enas_ptb.get_config("smoke")
    c.precision = "half"
    with self.assertRaisesRegex(ValueError, "precision"):
      enas_search.validate(c)
    t = space32.get_config("truth")
    enas_truth.validate(t)
    t.truth.arch_batch = "0"
    with self.assertRaisesRegex(ValueError, "truth.arch_batch"):
      enas_truth.validate(t)


class ResumeAcrossPlatformsTest(PrecisionRestored):
  def _record(self, workdir, config):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.json").write_text(
      json.dumps(
        {
          "experiment": config.experiment,
          "config": workdir_lib.config_dict(config),
          "status": "running",
        }
      )
    )

  def test_batching_and_cadence_may_change_on_resume(self):
    tmp = self.create_tempdir().full_path
    import pathlib  # noqa: PLC0415

    wd = pathlib.Path(tmp) / "truth"
    cpu = space32.get_config("truth")
    for field, value in CPU.items():  # as a CPU run resolved them
      node, leaf = pd.lookup(cpu, field)
      node[leaf] = value
    self._record(wd, cpu)
    now = space32.get_config("truth")  # "auto", as on a GPU
    now.truth.arch_batch, now.truth.checkpoint_every = 32, 0
    self.assertEqual(
      workdir_lib.inspect(wd, now, resumable=enas_truth.RESUMABLE), "resume"
    )
    now.model.hidden += 1  # not resumable
    with self.assertRaisesRegex(ValueError, "model.hidden"):
      workdir_lib.inspect(wd, now, resumable=enas_truth.RESUMABLE)

  def test_precision_is_not_resumable_but_old_records_mean_float32(self):
    import pathlib  # noqa: PLC0415

    wd = pathlib.Path(self.create_tempdir().full_path) / "run"
    old = enas_ptb.get_config("smoke")
    del old["precision"]  # a run recorded before the field existed
    self._record(wd, old)
    now = enas_ptb.get_config("smoke")
    self.assertEqual(
      workdir_lib.inspect(wd, now, resumable=enas_search.RESUMABLE), "resume"
    )
    now.precision = "tf32"
    with self.assertRaisesRegex(ValueError, "precision"):
      workdir_lib.inspect(wd, now, resumable=enas_search.RESUMABLE)

  def test_old_search_records_resume_and_finished_ones_stay_finished(self):
    import pathlib  # noqa: PLC0415

    for variant in ("enas,reference", "random,off"):
      wd = pathlib.Path(self.create_tempdir().full_path) / "s32"
      old = space32.get_config(variant)  # as recorded before "auto"
      for field, value in CPU.items():
        node, leaf = pd.lookup(old, field)
        node[leaf] = value
      del old["precision"]
      self._record(wd, old)
      now = space32.get_config(variant)
      self.assertEqual(
        workdir_lib.inspect(wd, now, resumable=enas_search.RESUMABLE),
        "resume",
      )
      record = json.loads((wd / "run.json").read_text())
      record["status"] = "finished"
      (wd / "run.json").write_text(json.dumps(record))
      self.assertEqual(
        workdir_lib.inspect(wd, now, resumable=enas_search.RESUMABLE),
        "finished",
      )

  def test_truth_checkpoints_compare_without_batching_fields(self):
    cpu, _ = pd.resolve(space32.get_config("truth"))
    saved = enas_search.comparable(cpu, enas_truth.CKPT_RESUMABLE)
    gpu = ml_collections.ConfigDict(cpu.to_dict())
    gpu.truth.arch_batch, gpu.truth.checkpoint_every = 32, 0
    enas_search.check_same_config(gpu, saved, enas_truth.CKPT_RESUMABLE)
    # A checkpoint from before the fields were resumable still holds them.
    older = enas_search.comparable(cpu, enas_search.RESUMABLE)
    enas_search.check_same_config(gpu, older, enas_truth.CKPT_RESUMABLE)
    gpu.model.hidden += 1
    with self.assertRaisesRegex(ValueError, "model.hidden"):
      enas_search.check_same_config(gpu, saved, enas_truth.CKPT_RESUMABLE)


class VersionsTest(absltest.TestCase):
  def test_the_broken_pair_is_refused_with_the_fix(self):
    cases = {  # (jax, flax) -> refused?
      ("0.10.2", "0.12.8"): False,
      ("0.11.2", "0.12.8"): True,
      ("0.11.0", "0.12.8"): True,
      ("0.11.2", "0.12.9"): False,
      ("0.11.2", "0.12.12"): False,
      ("0.11.2", None): False,
      ("0.12.0.1", "0.12.10rc1"): False,
    }
    for (j, f), refused in cases.items():
      problem = _versions.incompatibility(j, f)
      self.assertEqual(problem is not None, refused, (j, f))
      if refused:
        self.assertIn("flax>=0.12.9", problem)

  def test_this_stack_passes(self):
    _versions.check()


if __name__ == "__main__":
  absltest.main()
