#!/usr/bin/env bash
# The 32-cell searches over seeds in one program on an accelerator (issue 26,
# part 2): the published cell, the controller given 400 REINFORCE steps an
# epoch (`:concentrate`), S seeds (0 .. S-1) of one arm side by side in one
# program (`search.num_seeds`), TF32, one arm after another, each under its
# own limit (SIGINT: the epoch in progress is saved, the run stops), so a
# slow arm shortens the run instead of killing it. Each argument is an arm
# "POLICY:WPL LIMIT_S FLAGS..."; the default is the four arms of WORKSPACE
# §7.10 at H = 128 (the settled rung of the ground truth, §7.9), 20 seeds.
# Not yet run on a device: the limits are guesses (no measured throughput
# of a seed-axis search on a GPU yet); the first log lines give it.
# From the project root:
#   bash benchmarks/device/search_seeds.sh   (device: carry .device, timeout_s 560)
#   SEEDS=20 H=h128 bash benchmarks/device/search_seeds.sh "enas:off 200"
#   SMALL=1 PY=.venv312/bin/python OUT=/tmp/dry \
#     bash benchmarks/device/search_seeds.sh  (the CPU dry run)
# What comes back under $OUT: searches.tgz (per arm, each seed's
# seed_<seed>/metrics.jsonl, results.json and run.json), one log per arm,
# results.jsonl. Here, `python experiments/space32_runs.py --import_root=DIR
# --variants=published,concentrate,h128` stores each seed's records as the
# CPU runs are stored, and `space32_stats.py` reads them.
cd "$(dirname "$0")/../.."
. benchmarks/device/common.sh
wd=/tmp/search_seeds_wd
rm -rf "$wd"
SEEDS=${SEEDS:-20}
H=${H:-h128}
"$PY" -c "import jax; print(jax.__version__, jax.devices())"
common=(--data_dir=.device/data/ptb --config.precision=tf32
  --config.search.num_seeds="$SEEDS" --config.search.log_seconds=10
  --config.search.truth_path=experiments/results/space32_truth_published_h128.json)
variants=published,concentrate${H:+,$H}
if [ "$SMALL" = 1 ]; then
  variants=published,smoke
  common=(--data_dir=.device/data/ptb --config.search.num_seeds="$SEEDS"
    --config.search.truth_path=experiments/results/space32_truth_published_h128.json)
  arms=("enas:off 120" "random:reference 120")
else
  arms=("enas:off 150" "random:off 90" "enas:reference 150"
    "random:reference 90")
fi
[ $# -gt 0 ] && arms=("$@")
for arm in "${arms[@]}"; do
  read -r pw limit extra <<<"$arm"
  policy=${pw%%:*} wpl=${pw##*:}
  name=${policy}_${wpl}_s0-$((SEEDS - 1))
  # shellcheck disable=SC2086
  part "search_${policy}_${wpl}" "$limit" "$PY" main.py \
    --config=experiments/space32.py:$policy,$wpl,$variants \
    --workdir="$wd/$name" "${common[@]}" $extra >"$OUT/$name.log" 2>&1
  grep -E "seeds live|rror" "$OUT/$name.log" | cut -c1-220 | tail -3
  # After each arm, so that a cut-off command still returns the arms done.
  (cd "$wd" && tar czf "$OUT/searches.tgz" \
    --exclude=checkpoints --exclude=tb --exclude='*.lock' -- *)
done
ls -la "$OUT"
