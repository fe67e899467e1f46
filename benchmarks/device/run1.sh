#!/usr/bin/env bash
# The prepared device run, command 1 of 2 (about 350 s): probe, the
# correctness tests on the device at exact float32 (JUnit XML), and the
# paper-size ENAS pieces at float32 and at TF32 against the same-run
# ceilings. From the project root, on the device machine:
#   bash benchmarks/device/run1.sh          (carry .device; timeout_s >= 400)
# SMALL=1 bash benchmarks/device/run1.sh    (the CPU dry run, minutes)
cd "$(dirname "$0")/../.."
. benchmarks/device/common.sh
if [ "$SMALL" = 1 ]; then
  sizes=(--hidden=16 --nodes=3 --gemm=512 --chain=12 --reps=2 --archs=1 --ctrl=2)
  tests=(tests/loss_test.py)
  lim_t=120 lim_p=150
else
  sizes=(--hidden=1000 --nodes=12 --gemm=8192 --chain=1260 --reps=5 --archs=3 --ctrl=10)
  # In-process numerical tests (oracles: NumPy, per-example loops, autodiff).
  # Most at stake first: a SIGINT at the limit still writes the JUnit XML.
  tests=(tests/enas_rnn_test.py tests/fisher_fast_test.py tests/fisher_test.py
    tests/loss_test.py tests/flax_taps_test.py tests/dtype_test.py
    tests/controller_test.py tests/partition_test.py)
  lim_t=120 lim_p=95
fi
part probe 45 "$PY" -m benchmarks.device.probe --jsonl="$R"
part gpu_tests "$lim_t" env JAX_DEFAULT_MATMUL_PRECISION=highest \
  WPL_DATA_DIR=.device/data "$PY" -m pytest -q -p no:cacheprovider \
  -o addopts="" --junitxml="$OUT/junit.xml" "${tests[@]}" 2>&1 | tail -25
for p in highest tensorfloat32; do
  part "jax_pieces_$p" "$lim_p" "$PY" -m benchmarks.device.jax_pieces \
    --precision=$p --time_limit=$((lim_p - 10)) --jsonl="$R" "${sizes[@]}" \
    >"$OUT/jax_$p.log" 2>&1
  tail -3 "$OUT/jax_$p.log"
done
"$PY" -m benchmarks.device.summary "$R"
