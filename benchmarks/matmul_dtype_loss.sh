#!/usr/bin/env bash
# The loss effect of model.matmul_dtype = bfloat16 (WORKSPACE §6.7): one
# fixed 12-node cell retrained from scratch on PTB, float32 and bfloat16
# products from the same seed (the same init, batches and dropout), two
# seeds, so the bf16 - f32 difference can be set against the seed-to-seed
# one. Each run prints its train loss and valid/test perplexity.
#
#   bash benchmarks/matmul_dtype_loss.sh [OUT] [HIDDEN] [BATCHES] [SEEDS]
#
# defaults: OUT=benchmarks/out/matmul_dtype_loss, HIDDEN=200, BATCHES=0
# (one full pass over train, 415 batches of 64 x 35), SEEDS="0 1".
# Finished runs (OUT/hH_DTYPE_sN/done.txt present) are skipped. DTYPES
# (default "float32 bfloat16") picks the dtypes to run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/matmul_dtype_loss}
hidden=${2:-200}
batches=${3:-0}
seeds=${4:-0 1}
py=${PYTHON:-.venv/bin/python}
data=${WPL_DATA_DIR:-../shared/data}/ptb
arch='tanh|0:relu|1:sigmoid|1:identity|2:tanh|2:relu|3:sigmoid|4:identity|5:tanh|5:relu|6:sigmoid|7:tanh'
mkdir -p "$out"
for seed in $seeds; do
  for dtype in ${DTYPES:-float32 bfloat16}; do
    wd=$out/h${hidden}_${dtype}_s${seed}
    if [ -s "$wd/done.txt" ]; then
      echo "skip $wd (done)"
      continue
    fi
    rm -rf "$wd"
    echo "== $wd ($(date -u +%H:%M:%S))"
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$py" main.py \
      --config=experiments/enas_ptb.py:paper --data_dir="$data" \
      --workdir="$wd" --config.seed="$seed" --config.search.epochs=0 \
      "--config.retrain.arch=$arch" --config.retrain.random_archs=0 \
      --config.model.hidden="$hidden" --config.retrain.epochs=1 \
      --config.retrain.max_batches_per_epoch="$batches" \
      --config.retrain.eval_batch_size=64 \
      --config.model.matmul_dtype="$dtype" 2>&1 |
      grep -E "retrain given epoch|^\| given" | tee "$wd.txt"
    cp "$wd.txt" "$wd/done.txt"
  done
done
echo "== summary"
for f in "$out"/h${hidden}_*_s*.txt; do
  echo "$(basename "$f" .txt): $(grep -E '^\| given' "$f" | awk -F'|' '{print "valid", $(NF-2), "test", $(NF-1)}')"
done
# Paired bf16 - f32 valid perplexity over the seeds that have both.
"$py" - "$out" "$hidden" <<'PY'
import math, pathlib, re, statistics, sys
out, hidden = pathlib.Path(sys.argv[1]), sys.argv[2]
ppl = {}
for f in out.glob(f"h{hidden}_*_s*.txt"):
  m = re.fullmatch(rf"h{hidden}_(\w+)_s(\d+)", f.stem)
  rows = [r for r in f.read_text().splitlines() if r.startswith("| given")]
  if m and rows:
    ppl[m.group(1), int(m.group(2))] = float(rows[-1].split("|")[-3])
seeds = sorted(s for d, s in ppl if d == "float32" and ("bfloat16", s) in ppl)
d = [ppl["bfloat16", s] - ppl["float32", s] for s in seeds]
if len(d) >= 2:
  mean, sd = statistics.mean(d), statistics.stdev(d)
  t = mean / (sd / math.sqrt(len(d)))
  print(f"paired bf16 - f32 valid ppl over seeds {seeds}: "
        + ", ".join(f"{x:+.1f}" for x in d)
        + f"; mean {mean:+.1f}, sd {sd:.1f}, t = {t:.2f} on {len(d) - 1} df")
PY
