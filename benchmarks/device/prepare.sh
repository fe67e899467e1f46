#!/usr/bin/env bash
# The prepared device run, part 0: run HERE (the CPU machine, with network to
# PyPI), from the project root, before the device commands. Builds the
# git-ignored folder .device/ that the device commands carry:
#   .device/whl/   pure-Python wheels for Python 3.12 that pin the stack the
#                  project tests on Python 3.12 + JAX 0.11 (requirements-
#                  jax011.txt) on top of the image's own jax/jaxlib/CUDA
#                  plugin, numpy, scipy, torch (never requirements.txt there:
#                  its jax pin would detach the preinstalled CUDA plugin);
#   .device/data/ptb/  the PTB files (../shared does not travel);
#   .device/ref/   the paper's PyTorch code (kcyu2014/multi-model-forgetting
#                  at 6f6457f), patched for torch 2.x (prepare_reference.py).
# Usage: bash benchmarks/device/prepare.sh [REF_SRC]
#   REF_SRC: a checkout or bare git dir of that repository (default: the
#   mirror the search tool's fetch leaves in ../.mirror).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
data=${WPL_DATA_DIR:-$root/../shared/data}
ref_src=${1:-$root/../.mirror/kcyu2014+multi-model-forgetting/repo/.git}
py=${PYTHON:-python3}

mkdir -p .device/whl .device/data
rm -f .device/whl/*.whl
# The pure-Python packages the image lacks or may carry at another version:
# the versions requirements-jax011.txt tests (read from it, not repeated).
pkgs=$(grep -E '^(flax|optax|orbax-checkpoint|chex|ml_collections|tensorboardX)==' \
  requirements-jax011.txt)
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d .device/whl $pkgs
rm -rf .device/data/ptb
cp -r "$data/ptb" .device/data/ptb
"$py" benchmarks/device/prepare_reference.py --src="$ref_src" --out=.device/ref
du -sh .device .device/*
echo "prepared .device (carry it: carry=[\".device\"])"
