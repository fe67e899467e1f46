"""Tests for wpl_jax.data.ptb: loading, vocabulary, errors and LM batches."""

import pathlib

import numpy as np
from _data_fixtures import make_tempdir
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

from wpl_jax.data import DataError, batchify, get_batch, load_ptb

PTB_DIR = DATA_DIR / "ptb"
TRAIN_LINES = 42_068


def _write_corpus(
  directory: pathlib.Path, prefix: str = "ptb.", **texts: str
) -> None:
  """Writes `{prefix}{split}.txt` for each split; defaults to a tiny corpus."""
  texts = {"train": " a b c\nb  c d\n", "valid": "d a\n", "test": "c\n"} | texts
  for split, text in texts.items():
    (directory / f"{prefix}{split}.txt").write_text(text)


class LoadPtbRealTest(parameterized.TestCase):
  """The real files in the shared data directory."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = load_ptb(PTB_DIR)

  def test_token_counts(self):
    self.assertLen(self.data.train, 929_589)
    self.assertLen(self.data.valid, 73_760)
    self.assertLen(self.data.test, 82_430)

  def test_vocabulary(self):
    vocab = self.data.vocab
    self.assertLen(vocab, 10_000)
    self.assertLen(set(vocab), 10_000)
    self.assertIn("<eos>", vocab)
    self.assertIn("<unk>", vocab)
    # The first training line sets the first ids.
    self.assertEqual(vocab[:3], ["aer", "banknote", "berlitz"])

  def test_ids(self):
    eos = self.data.vocab.index("<eos>")
    for ids in self.data[:3]:
      self.assertEqual(ids.dtype, np.int32)
      self.assertGreaterEqual(ids.min(), 0)
      self.assertLess(ids.max(), 10_000)
      self.assertEqual(ids[-1], eos)
    self.assertEqual(np.count_nonzero(self.data.train == eos), TRAIN_LINES)
    # Ids are given in order of first appearance in train.
    _, first = np.unique(self.data.train, return_index=True)
    self.assertTrue(np.all(np.diff(first) > 0))


class LoadPtbTinyTest(parameterized.TestCase):
  """A tiny temporary corpus."""

  def setUp(self):
    super().setUp()
    self.dir = make_tempdir(self)

  @parameterized.named_parameters(("ptb_names", "ptb."), ("short_names", ""))
  def test_loads(self, prefix):
    _write_corpus(self.dir, prefix)
    data = load_ptb(self.dir)
    self.assertEqual(data.vocab, ["a", "b", "c", "<eos>", "d"])
    np.testing.assert_array_equal(data.train, [0, 1, 2, 3, 1, 2, 4, 3])
    np.testing.assert_array_equal(data.valid, [4, 0, 3])
    np.testing.assert_array_equal(data.test, [2, 3])

  def test_ptb_names_preferred(self):
    _write_corpus(self.dir, "ptb.")
    _write_corpus(self.dir, "", train="z\n", valid="z\n", test="z\n")
    self.assertEqual(load_ptb(self.dir).vocab[0], "a")

  def test_empty_line_is_one_eos(self):
    _write_corpus(self.dir, test="\nc\n")
    np.testing.assert_array_equal(load_ptb(self.dir).test, [3, 2, 3])

  @parameterized.parameters("train", "valid", "test")
  def test_missing_file(self, split):
    _write_corpus(self.dir)
    (self.dir / f"ptb.{split}.txt").unlink()
    with self.assertRaisesRegex(DataError, f"not found: .*ptb.{split}.txt"):
      load_ptb(self.dir)

  @parameterized.parameters("valid", "test")
  def test_word_outside_vocabulary(self, split):
    _write_corpus(self.dir, **{split: "a b\nb zebra c\n"})
    with self.assertRaisesRegex(
      DataError, f"ptb.{split}.txt:2: word 'zebra' is not in"
    ):
      load_ptb(self.dir)

  def test_empty_train(self):
    _write_corpus(self.dir, train="")
    with self.assertRaisesRegex(DataError, "ptb.train.txt: empty"):
      load_ptb(self.dir)

  def test_byte_order_mark_is_not_a_word(self):
    _write_corpus(self.dir)
    for split in ("train", "valid"):
      path = self.dir / f"ptb.{split}.txt"
      path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_ptb(self.dir)
    self.assertEqual(data.vocab, ["a", "b", "c", "<eos>", "d"])
    np.testing.assert_array_equal(data.valid, [4, 0, 3])

  def test_not_utf8(self):
    _write_corpus(self.dir)
    (self.dir / "ptb.valid.txt").write_bytes(b"a \xff b\n")
    with self.assertRaisesRegex(DataError, "ptb.valid.txt: cannot read"):
      load_ptb(self.dir)


class BatchTest(parameterized.TestCase):
  def test_batchify_hand_worked(self):
    # 10 tokens in 3 columns of 3; token 9 is dropped.
    source = batchify(np.arange(10, dtype=np.int32), 3)
    np.testing.assert_array_equal(source, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    self.assertEqual(source.dtype, np.int32)
    self.assertTrue(source.flags.c_contiguous)

  def test_batchify_exact_fit_and_one_column(self):
    np.testing.assert_array_equal(batchify(np.arange(4), 2), [[0, 2], [1, 3]])
    np.testing.assert_array_equal(batchify(np.arange(3), 1), [[0], [1], [2]])

  @parameterized.named_parameters(
    ("too_few_tokens", np.arange(2), 3, "cannot fill"),
    ("zero_batch", np.arange(5), 0, "batch_size"),
    ("two_dims", np.zeros((2, 3)), 1, "1-D"),
  )
  def test_batchify_errors(self, ids, batch_size, message):
    with self.assertRaisesRegex(ValueError, message):
      batchify(ids, batch_size)

  def test_get_batch_hand_worked(self):
    source = np.array([[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    inputs, targets = get_batch(source, 0, 2)
    np.testing.assert_array_equal(inputs, [[0, 3, 6], [1, 4, 7]])
    np.testing.assert_array_equal(targets, [[1, 4, 7], [2, 5, 8]])
    # Near the end the window shrinks so every input has a target.
    inputs, targets = get_batch(source, 1, 5)
    np.testing.assert_array_equal(inputs, [[1, 4, 7]])
    np.testing.assert_array_equal(targets, [[2, 5, 8]])

  def test_windows_cover_every_target_once(self):
    source = batchify(np.arange(103), 4)  # 25 rows
    bptt = 7
    windows = [get_batch(source, i, bptt) for i in range(0, 24, bptt)]
    self.assertEqual([len(x) for x, _ in windows], [7, 7, 7, 3])
    for inputs, targets in windows:
      np.testing.assert_array_equal(targets, inputs + 1)
    targets = np.concatenate([y for _, y in windows])
    np.testing.assert_array_equal(targets, source[1:])

  @parameterized.named_parameters(
    ("last_row", 2, 1, "no targets"),
    ("negative_row", -1, 1, "no targets"),
    ("zero_bptt", 0, 0, "bptt"),
  )
  def test_get_batch_errors(self, i, bptt, message):
    source = np.zeros((3, 2), np.int32)
    with self.assertRaisesRegex(ValueError, message):
      get_batch(source, i, bptt)


if __name__ == "__main__":
  absltest.main()
