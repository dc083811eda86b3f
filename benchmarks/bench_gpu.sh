#!/usr/bin/env bash
# `make bench-gpu`: the CUDA rows of every benchmark, written to benchmarks/results/*_cuda.json (and the
# CRF's table to crf_cuda.md).  CPU rows are left to `make bench`; the CRF's CUDA rows are compared with
# pydensecrf (same image, same labels) where it is installed.  Each script is bounded by a timeout so one
# that hangs cannot eat a short GPU lease; a failing script is reported and the others still run.
#   PYTHON=python3 bash benchmarks/bench_gpu.sh          # the interpreter that has torch with CUDA
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-8}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench-gpu: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
failed=()
run() {  # run NAME SECONDS ARGS...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    if ! timeout "$limit" "$PY" "$@"; then failed+=("$name"); fi
}
run models 300 benchmarks/bench_models.py --device cuda --threads "$THREADS"
run click 300 benchmarks/bench_click.py --device cuda --threads "$THREADS"
run crf 300 benchmarks/bench_crf.py --device cuda --threads "$THREADS" --sizes "${CRF_SIZES:-500x375,1024x768,2048x1536}"
run train 300 benchmarks/bench_train.py --device cuda --threads "$THREADS"
run prelabel 300 benchmarks/bench_prelabel.py --device cuda
if ((${#failed[@]})); then
    echo "bench-gpu: failed or timed out: ${failed[*]}" >&2
    exit 1
fi
echo "bench-gpu: wrote benchmarks/results/{models,click,crf,train,prelabel}_cuda.json"
