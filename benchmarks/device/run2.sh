#!/usr/bin/env bash
# The prepared device run, command 2 of 2 (at most about 330 s; 175 s on
# the H200 of 2026-12-04 without the first part): the ENAS pieces at TF32,
# the paper's own PyTorch code's pieces on the same device (float32, then
# TF32), a short
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
  th=(--hidden=16 --reps=2) lim_t=90 lim_p=150
  sizes=(--hidden=16 --nodes=3 --gemm=512 --chain=12 --reps=2 --archs=1 --ctrl=2)
  search=(--config=experiments/enas_ptb.py:smoke,wpl)
  truth=(--config.model.hidden=8 --config.truth.max_batches_per_epoch=4
    --config.truth.arch_batch=4 --config.truth.eval_arch_batch=4
    --config.truth.eval_tokens=2000)
  lim_s=150 lim_g=120
else
  th=(--hidden=1000 --reps=5) lim_t=60 lim_p=95
  sizes=(--hidden=1000 --nodes=12 --gemm=8192 --chain=1260 --reps=5 --archs=3 --ctrl=10)
  search=(--config=experiments/enas_ptb.py:paper,wpl
    --config.search.archs_per_epoch=8 --config.controller.steps_per_epoch=50
    --config.search.derive_samples=16 --config.search.eval_vmap=0
    --config.wpl.start_epoch=0)
  truth=(--config.model.hidden=256 --config.truth.max_batches_per_epoch=300
    --config.truth.arch_batch=32 --config.truth.eval_arch_batch=32
    --config.truth.eval_tokens=20000)
  lim_s=110 lim_g=60
fi
p=tensorfloat32
part "jax_pieces_$p" "$lim_p" "$PY" -m benchmarks.device.jax_pieces \
  --precision=$p --time_limit=$((lim_p - 15)) --jsonl="$R" "${sizes[@]}" \
  >"$OUT/jax_$p.log" 2>&1
tail -3 "$OUT/jax_$p.log"
for tf in 0 1; do
  part "torch_pieces_tf32_$tf" "$lim_t" "${PY_TORCH:-$PY}" benchmarks/device/torch_pieces.py \
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
  --config.truth.log_seconds=5 "${truth[@]}" >"$OUT/truth.log" 2>&1
grep -E "steps/s|valid ppl|rror" "$OUT/truth.log" | cut -c1-200 | tail -8
cp "$wd/truth/metrics.jsonl" "$OUT/truth_metrics.jsonl" 2>/dev/null
"$PY" -m benchmarks.device.summary "$R"
