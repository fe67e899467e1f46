#!/usr/bin/env bash
# The prepared device run, command 2 of 2 (about 330 s): the paper's own
# PyTorch code's pieces on the same device (float32, then TF32), a short
# paper-size main.py search end to end (2 epochs, checkpoints included), and
# the 32-cell ground truth at H = 256 with all 32 cells vmapped (the pilot:
# steps per second, memory). From the project root, on the device machine:
#   bash benchmarks/device/run2.sh          (carry .device; timeout_s >= 400)
# SMALL=1 bash benchmarks/device/run2.sh    (the CPU dry run, minutes)
cd "$(dirname "$0")/../.."
. benchmarks/device/common.sh
wd=/tmp/device_wd
rm -rf "$wd"
if [ "$SMALL" = 1 ]; then
  th=(--hidden=16 --reps=2) lim_t=90
  search=(--config=experiments/enas_ptb.py:smoke,wpl)
  truth=(--config.model.hidden=8 --config.truth.max_batches_per_epoch=4
    --config.truth.arch_batch=4 --config.truth.eval_arch_batch=4
    --config.truth.eval_tokens=2000)
  lim_s=150 lim_g=120
else
  th=(--hidden=1000 --reps=5) lim_t=75
  search=(--config=experiments/enas_ptb.py:paper,wpl
    --config.search.archs_per_epoch=8 --config.controller.steps_per_epoch=50
    --config.search.derive_samples=16 --config.search.eval_vmap=0
    --config.wpl.start_epoch=0)
  truth=(--config.model.hidden=256 --config.truth.max_batches_per_epoch=300
    --config.truth.arch_batch=32 --config.truth.eval_arch_batch=32
    --config.truth.eval_tokens=20000)
  lim_s=130 lim_g=75
fi
for tf in 0 1; do
  part "torch_pieces_tf32_$tf" "$lim_t" "$PY" benchmarks/device/torch_pieces.py \
    --ref=.device/ref --data=.device/data/ptb --tf32=$tf \
    --time_limit=$((lim_t - 12)) --jsonl="$R" "${th[@]}" 2>&1 | tail -12
done
part main_search "$lim_s" "$PY" main.py "${search[@]}" \
  --data_dir=.device/data/ptb --workdir="$wd/search" \
  --config.search.epochs=2 --config.search.derive_every=2 \
  --config.retrain.epochs=0 2>&1 | grep -v "^I.*orbax" | tail -25
cp "$wd/search/metrics.jsonl" "$OUT/search_metrics.jsonl" 2>/dev/null
cp "$wd/search/results.md" "$OUT/search_results.md" 2>/dev/null
part truth_pilot "$lim_g" "$PY" main.py --config=experiments/space32.py:truth \
  --data_dir=.device/data/ptb --workdir="$wd/truth" \
  --config.truth.epochs=1 --config.truth.checkpoint_every=100000 \
  --config.truth.eval_every=0 --config.truth.eval_batch_size=16 \
  --config.truth.log_seconds=5 "${truth[@]}" 2>&1 \
  | grep -v "^I.*orbax" | tail -20
cp "$wd/truth/metrics.jsonl" "$OUT/truth_metrics.jsonl" 2>/dev/null
"$PY" -m benchmarks.device.summary "$R"
