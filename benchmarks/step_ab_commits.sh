#!/bin/bash
# Issue 27: the ENAS shared step and Fisher update of two commits, alternated
# (BEFORE, AFTER, AFTER, BEFORE per width), one process per checkout, as
# WORKSPACE §6.6 measured them. Run on an otherwise idle machine.
#
#   bash benchmarks/step_ab_commits.sh BEFORE AFTER [WIDTHS] [REPS] [ARGS...]
#   e.g. bash benchmarks/step_ab_commits.sh e2d5c10 1b04e05 "1000 400 200 16" 5
#        bash benchmarks/step_ab_commits.sh 7123968 798c96a "1000 200" 5 \
#          --matmul_dtype=bfloat16
#
# ARGS go to step_ab.py as they are, for both commits.
#
# Each commit is checked out as a worktree under ${TMPDIR:-/tmp}; the
# checkout's .venv runs benchmarks/step_ab.py --root=WORKTREE.
set -euo pipefail
[ $# -ge 2 ] || { echo "error: usage: $0 BEFORE AFTER [WIDTHS] [REPS] [ARGS...]" >&2; exit 2; }
before=$1 after=$2 widths=${3:-"1000 400 200"} reps=${4:-5}
extra=("${@:5}")
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1 XLA_FLAGS=--xla_cpu_multi_thread_eigen=true
tmp=$(mktemp -d "${TMPDIR:-/tmp}/step_ab_commits.XXXX")
cleanup() { git -C "$root" worktree remove --force "$tmp/before" 2>/dev/null || true
            git -C "$root" worktree remove --force "$tmp/after" 2>/dev/null || true; }
trap cleanup EXIT
git -C "$root" worktree add -q --detach "$tmp/before" "$before"
git -C "$root" worktree add -q --detach "$tmp/after" "$after"
ab() {
  echo "== H=$1 $2 ($(git -C "$tmp/$2" rev-parse --short HEAD)) $(date -u +%H:%M:%S)"
  "$py" "$root/benchmarks/step_ab.py" --root="$tmp/$2" --hidden="$1" \
    --reps="$reps" --what=fisher --estimator=batch_grad_squared \
    ${extra[@]+"${extra[@]}"} 2>&1 \
    | grep -v '^[WI][0-9]'
}
for h in $widths; do
  ab "$h" before; ab "$h" after; ab "$h" after; ab "$h" before
done
