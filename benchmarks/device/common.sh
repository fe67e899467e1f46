# Sourced by run1.sh and run2.sh (the prepared device run), from the project
# root. Installs the carried wheels into /tmp/site (never requirements.txt:
# its jax pin would detach the image's CUDA plugin), points PYTHONPATH at
# them and at the checkout, and defines `part NAME LIMIT CMD...`: CMD runs
# under its own time limit (SIGINT at LIMIT s, SIGKILL 10 s later), its
# output goes to the log, and a row {"part", "rc", "seconds"} is appended to
# $R (the results JSONL) whatever happens, so a slow part shortens the run
# instead of killing it. SMALL=1: CPU-sized dry run (no GPU needed).
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
R=$OUT/results.jsonl
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=2
PY=${PY:-python3}
if [ -d .device/whl ] && [ -z "${NO_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .device/whl/*.whl \
    || "$PY" -c "import glob, zipfile
for w in glob.glob('.device/whl/*.whl'): zipfile.ZipFile(w).extractall('/tmp/site')" \
    || echo '{"part": "wheels", "rc": 1}' >>"$R"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
SMALL=${SMALL:-0}

part() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s%N)
  echo "=== part $name (limit ${limit}s): $*"
  timeout -s INT -k 10 "$limit" "$@"
  rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))  # no bc on the device image
  printf '{"part": "%s", "rc": %d, "seconds": %d.%03d, "limit": %d}\n' \
    "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$limit" | tee -a "$R"
}
