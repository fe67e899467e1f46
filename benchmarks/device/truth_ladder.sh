#!/usr/bin/env bash
# The 32-cell ground truth's pilot ladder on an accelerator (issue 26, part
# 1): the published DARTS-style cell, 3 seeds side by side in one program
# (96 models), every cell's validation perplexity at every epoch end, TF32.
# Each argument is a rung "NAME LIMIT_S FLAGS...", NAME in h32, h128, h256;
# the default is the three rungs that finished on the H200 of 2026-12-04
# (WORKSPACE §7.9; about 370 s, each rung under its own limit so that a slow
# one shortens the run instead of killing it). From the project root:
#   bash benchmarks/device/truth_ladder.sh   (device: carry .device, timeout_s 480)
#   bash benchmarks/device/truth_ladder.sh "h256 175 --config.truth.epochs=4"
#   SMALL=1 PY=.venv312/bin/python OUT=/tmp/dry \
#     bash benchmarks/device/truth_ladder.sh  (the CPU dry run)
# What comes back under $OUT: ladder.tgz (each rung's metrics.jsonl,
# truth.json, results.md and run.json), one log per rung, results.jsonl.
# `experiments/space32_ladder.py` turns them into the tables.
cd "$(dirname "$0")/../.."
. benchmarks/device/common.sh
wd=/tmp/ladder_wd
rm -rf "$wd"
"$PY" -c "import jax; print(jax.__version__, jax.devices())"
# 4 decoder chunks of 560 tokens: about 9 GB of logits and their gradient
# for 96 models (the whole [2240, 10000] logits would be about 35 GB).
common=(--data_dir=.device/data/ptb --config.precision=tf32
  --config.truth.log_seconds=10 --config.model.ce_chunk=560)
if [ "$SMALL" = 1 ]; then
  common=(--data_dir=.device/data/ptb --config.truth.log_seconds=5
    --config.truth.max_batches_per_epoch=3 --config.truth.eval_tokens=2000
    --config.data.batch_size=4 --config.data.bptt=6 --config.model.ce_chunk=8)
  rungs=("h32 40 --config.model.hidden=8 --config.truth.epochs=2"
    "h256 40 --config.model.hidden=16 --config.truth.epochs=2"
    "h128 40 --config.model.hidden=12 --config.truth.epochs=2")
else
  # Measured (96 models, TF32, evaluations and epoch-end saves included):
  # H = 32 7 epochs in 76 s, H = 128 5 in 84 s, H = 256 4 in 115 s; at
  # H = 256 lr 20 diverged.
  rungs=("h32 130 --config.truth.epochs=10"
    "h128 110 --config.truth.epochs=5"
    "h256 175 --config.truth.epochs=4 --config.truth.lr=10")
fi
[ $# -gt 0 ] && rungs=("$@")
for rung in "${rungs[@]}"; do
  read -r name limit extra <<<"$rung"
  variant=truth,published,ladder
  [ "$name" != h32 ] && variant=$variant,$name
  # shellcheck disable=SC2086
  part "truth_$name" "$limit" "$PY" main.py \
    --config=experiments/space32.py:$variant --workdir="$wd/$name" \
    --config.truth.arch_batch=96 --config.truth.eval_arch_batch=96 \
    "${common[@]}" $extra >"$OUT/truth_$name.log" 2>&1
  grep -E "steps/s|valid ppl|rror" "$OUT/truth_$name.log" | cut -c1-220 | tail -4
  # After each rung, so that a cut-off command still returns the rungs done.
  (cd "$wd" && tar czf "$OUT/ladder.tgz" \
    --exclude=checkpoints --exclude=tb --exclude='*.lock' -- *)
done
ls -la "$OUT"
