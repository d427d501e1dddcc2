#!/usr/bin/env bash
# Run on a lent GPU machine (see benchmarks/RESULTS.md): installs the carried
# wheels (.whl/: nvidia-pytriton, tritonclient[http] and its needs), then the
# GPU benchmark. Usage: bash benchmarks/gpu/run.sh [gpu_bench.py flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi -L
which mpirun ip unshare nsenter nsys || true
exec python3 -m benchmarks.gpu.gpu_bench "$@"
