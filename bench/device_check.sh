#!/bin/bash
# The engine's GPU checks in one short run (at most 9 min 10 s, the time limits below), for a machine with
# CUDA and PyTorch but without this project installed, e.g. the GPU machine a session is lent:
#
#   bash bench/device_check.sh --fetch-wheels   # here, once: wheels of what that machine lacks, into .whl/
#   bash bench/device_check.sh                  # there: tests/test_engine_cuda.py, then the GPU benchmarks
#
# What it runs: the CUDA tests (Caffe's goldens on the GPU in fp32, 20 SGD iterations, the GPU data transform
# against the CPU one bit for bit, frozen layers, deterministic mode and resume), the engine tests that need no
# GPU (a quick sanity check of that machine's library versions), then bench/bench_engine.py on CaffeNet
# (fp32, tf32 and bf16, batch 256 and 1024, NCHW and NHWC memory), `caffe_torch time`'s table per layer (CaffeNet,
# batch 256, fp32), bench/bench_data.py (the Data layer feeding
# the GPU, raw and JPEG-encoded Datums) and bench/bench_train.py (CaffeNet training from the LMDB, batch 256).
# Logs go to $OUT (the device tool's folder) when set, else to ./device_check/.
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    # lmdb is not in that machine's image; protobuf is, but older than the one caffe_pb2.py was generated for
    for pkg in "lmdb==3.0.0" "protobuf==7.36.2"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$pkg" || exit 1
    done
    ls .whl
    exit 0
fi

out="${OUT:-device_check}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, numpy, google.protobuf, lmdb; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), '| numpy', numpy.__version__, '| protobuf', google.protobuf.__version__,
'| lmdb', lmdb.__version__)" 2>&1 | tee -a "$out/gpu.txt"

status=0
timeout 140 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_engine_cuda.py \
    tests/test_engine_layers.py tests/test_engine_solver.py 2>&1 | tee "$out/tests.log" | tail -25 || status=1
timeout 180 python3 bench/bench_engine.py --gpu-only --batches 256,1024 --iterations 20 --rounds 1 \
    --precision tf32,bf16 --memory-format nchw,nhwc 2>&1 | tee "$out/bench_engine.txt" || status=1
# where the time goes on the GPU: `caffe time`'s table per layer, CaffeNet batch 256, fp32
python3 -c "import sys; sys.path.insert(0, 'bench'); from bench_engine import CAFFENET
open('$out/caffenet_256.prototxt', 'w').write(CAFFENET % {'batch': 256})"
timeout 40 python3 tools/caffe_torch time -model "$out/caffenet_256.prototxt" -iterations 10 -gpu 0 2>&1 \
    | grep -A70 "Average time per layer" | tee "$out/time_per_layer.txt" || status=1
timeout 75 python3 bench/bench_data.py --gpu --records 1024 --iterations 20 2>&1 | grep -v "^I[0-9]" \
    | tee "$out/bench_data.txt" || status=1
timeout 55 python3 bench/bench_data.py --gpu --encoded --records 1024 --iterations 20 2>&1 | grep -v "^I[0-9]" \
    | tee "$out/bench_data_encoded.txt" || status=1
timeout 60 python3 bench/bench_train.py --gpu-only --batch 256 --iterations 120 --records 1024 2>&1 \
    | grep -v "^I[0-9]" | tee "$out/bench_train.txt" || status=1
exit $status
