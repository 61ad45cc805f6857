#!/usr/bin/env bash
# The GPU session's one command: install the carried wheels, then run bench/gpu.py under a time guard.
#
# The GPU machine has torch, torchvision, peft, numpy, PyYAML, Pillow, tqdm and regex, and no network.
# The tokenizer needs open_clip's BPE vocabulary file (found with importlib, open_clip is never
# imported) and uses ftfy when present: bring those three as wheels. Once, on a machine with the
# package index, from the repository root (bench/wheels/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d bench/wheels \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
#
# Then on the GPU machine, from the repository root (with the device tool: carry bench/wheels):
#
#   bash bench/gpu_run.sh OUT.json [more bench/gpu.py options, e.g. --sections step,packing]
#
# The JSON goes to OUT.json after every section (and to stdout at the end); progress to stderr.
# Limits: bench/gpu.py skips sections that would not fit in ICLF_GPU_BENCH_BUDGET_S (default 420 s),
# and the whole run is killed after ICLF_GPU_BENCH_TIMEOUT_S (default 480 s: 8 minutes).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${1:-gpu-bench.json}
shift || true
budget=${ICLF_GPU_BENCH_BUDGET_S:-420}
limit=${ICLF_GPU_BENCH_TIMEOUT_S:-480}

shopt -s nullglob
wheels=(bench/wheels/*.whl)
if ((${#wheels[@]})); then
    site=$(mktemp -d /tmp/iclf-site.XXXXXX)
    trap 'rm -rf "$site"' EXIT
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("open_clip") is None)'; then
    echo "error: open_clip's BPE vocabulary is not available: put the open_clip_torch wheel in" \
         "bench/wheels/ (see the header of $0)" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout --kill-after=15 "$limit" "$PYTHON" bench/gpu.py --out "$out" --budget-s "$budget" "$@"
