#!/usr/bin/env bash
# The 32-cell ground truth's pilot ladder on an accelerator (issue 26, part
# 1): the published DARTS-style cell, 3 seeds side by side in one program
# (96 models), every cell's validation perplexity at every epoch end, at
# H = 32 (10 epochs), 256 (6 epochs) and 128 (10 epochs), TF32. One command
# (about 540 s at most; each rung under its own limit, so a slow rung
# shortens the run instead of killing it). From the project root:
#   bash benchmarks/device/truth_ladder.sh   (device: carry .device, timeout_s 570)
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
  rungs=("h32 90 --config.truth.epochs=10"
    "h256 270 --config.truth.epochs=6"
    "h128 150 --config.truth.epochs=10")
fi
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
