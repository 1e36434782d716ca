#!/usr/bin/env bash
# The one device call for the Triton kernels: correctness on the card, then the
# benchmark table (docs/performance.md). On the device machine, from the repo root:
#
#   bash benchmarks/gpu_session.sh            # ~10 min on an H100; --no-compile: ~3 min
#
# Everything lands in $OUT (the device tool's folder) or benchmarks/results/; the
# JSON is rewritten after every case, so a run cut off at its time limit keeps
# what it measured. The device image has no pydantic (tests/conftest.py needs it):
# carry its wheels, and Liger's pure-Python one to compare, in .whl/ (carry=[".whl"]):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl liger-kernel pydantic pydantic-core \
#       annotated-types typing-inspection   # pydantic 2.14.4 + core 2.50.5 worked there
# On an H200 (2026-11-27) the two test files took over 200 s, the bf16 table about 4 min.
set -o pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
log="$out/gpu_session.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$log"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_ops.py 2>&1 | tail -25 | tee -a "$log"
python3 benchmarks/gpu_norms.py --out "$out/gpu_norms.json" "$@" 2>&1 | tee -a "$log"
