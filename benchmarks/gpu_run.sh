#!/usr/bin/env bash
# The GPU engine benchmark in one command, on a GPU machine without faiss (about 8 minutes on an H100):
#
#   cp /work/shared/gpu/faissgpu.tar.xz .gpu/    # once, beside the checkout (.gpu/ is ignored by git)
#   OUT=/some/dir benchmarks/gpu_run.sh          # extra arguments go to benchmarks/gpu_engine.py
#
# Unpacks faiss-gpu (see ../shared/gpu/README.md), runs the engine / routing / GPU tests (real CUDA
# included), then benchmarks/gpu_engine.py: $OUT/gpu_engine.json, $OUT/gpu_engine.png and the logs.
# Each step has a time limit; the JSON is rewritten after every measurement, so a run that is cut
# short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
SITE="${SITE:-/tmp/hashindex-site}"
mkdir -p "$OUT"
if [ ! -f .gpu/faissgpu.tar.xz ]; then
    echo "gpu_run.sh: .gpu/faissgpu.tar.xz not found; copy it from ../shared/gpu/ first" >&2
    exit 2
fi
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2])" .gpu/faissgpu.tar.xz "$SITE" || exit 2
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
timeout "${TEST_LIMIT_S:-100}" python3 -m pytest -q -p no:cacheprovider tests/hashtorch tests/hashindex/test_engines.py \
    tests/hashindex/test_routing.py tests/hashindex/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1
echo "tests: exit $? (log in $OUT/gpu_tests.txt)"
timeout "${BENCH_LIMIT_S:-380}" python3 benchmarks/gpu_engine.py "$OUT/gpu_engine.json" --max-call-s 3 "$@" \
    2>&1 | tee "$OUT/gpu_engine.log"
echo "benchmark: exit ${PIPESTATUS[0]} (124: time limit reached; $OUT/gpu_engine.json keeps what was measured)"
[ -f "$OUT/gpu_engine.png" ] || python3 benchmarks/gpu_engine.py "$OUT/gpu_engine.json" --replot
