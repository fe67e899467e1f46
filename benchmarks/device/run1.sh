#!/usr/bin/env bash
# The prepared device run, command 1 of 2 (at most about 330 s): probe, the
# correctness tests on the device at exact float32 (JUnit XML), and the
# paper-size ENAS pieces at exact float32 against the same-run ceilings
# (command 2 measures them at TF32). On the H200 of 2026-12-04 the tests
# ran about 1 s each (compile-bound: 163 of 169 in 3 x 2 min), hence the
# GPU autotuner off for them (a test compiles each program once). From the project root, on the device machine:
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
  lim_t=200 lim_p=110
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv 2>/dev/null || true
part probe 45 "$PY" -m benchmarks.device.probe --jsonl="$R"
part gpu_tests "$lim_t" env JAX_DEFAULT_MATMUL_PRECISION=highest \
  XLA_FLAGS="--xla_backend_optimization_level=0 --xla_gpu_autotune_level=0" \
  WPL_DATA_DIR=.device/data "$PY" -m pytest -q -p no:cacheprovider \
  -o addopts="" --junitxml="$OUT/junit.xml" "${tests[@]}" 2>&1 | tail -25
p=highest
part "jax_pieces_$p" "$lim_p" "$PY" -m benchmarks.device.jax_pieces \
  --precision=$p --time_limit=$((lim_p - 15)) --jsonl="$R" "${sizes[@]}" \
  >"$OUT/jax_$p.log" 2>&1
tail -3 "$OUT/jax_$p.log"
"$PY" -m benchmarks.device.summary "$R"
