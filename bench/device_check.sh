#!/bin/bash
# The GPU checks, for a machine with CUDA and PyTorch but without this project installed (e.g. the GPU machine a
# session is lent), each run at most 9 minutes (the time limits below):
#
#   bash bench/device_check.sh --fetch-wheels   # here, once: into .whl/ the wheels that machine lacks and the
#                                               # relocatable CUDA Caffe bundles (tools/install_caffe --cuda
#                                               # --bundle, and with --cudnn when that build is here)
#   bash bench/device_check.sh                  # there (carry .whl): real Caffe on the GPU beside our engine
#   bash bench/device_check.sh --engine         # there: our engine's GPU benchmarks
#
# Default: for each Caffe bundle in .whl/ (Caffe's own CUDA kernels, then cuDNN's: caffe-*cudnn*.tar.xz),
# `caffe device_query`, tests/test_caffe_gpu.py (20 iterations of every solver type from the same weights on the
# same LMDB: Caffe on the GPU against its CPU golden, ours against it, within 1e-4, fp32, TF32 off),
# bench/bench_engine.py (`caffe time -gpu 0` beside `caffe_torch time`, CaffeNet batch 256) and bench/bench_train.py
# (training CaffeNet from an LMDB at batch 256, both engines on the GPU); then our engine's CUDA tests: every layer
# type's goldens, the float64 deep net and the data layers (issue 20), and tests/test_engine_cuda.py (Caffe's goldens
# on the GPU in fp32, 20 SGD iterations, the GPU data transform against the CPU one bit for bit, frozen layers,
# deterministic mode and resume).
# --engine: the engine tests that need no GPU (a sanity check of that machine's library versions), bench_engine.py
# (fp32, tf32 and bf16, batch 256 and 1024, NCHW and NHWC), `caffe_torch time`'s table per layer, bench_data.py (the
# Data layer feeding the GPU, raw and JPEG-encoded Datums) and bench_train.py for our engine alone.
# Logs go to $OUT (the device tool's folder) when set, else to ./device_check/.
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    # lmdb and h5py are not in that machine's image; protobuf is, but older than the one caffe_pb2.py was made for;
    # click, which the tools' commands need, pinned to ours
    for pkg in "lmdb==3.0.0" "protobuf==7.36.2" "h5py==3.15.1" "click==8.5.1"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$pkg" || failed=1
    done
    if [ ! -e .whl/caffe-cuda.tar.xz ]; then    # ~17 min the first time (the lean CUDA build)
        .venv/bin/python tools/install_caffe --cuda --bundle .whl/caffe-cuda.tar.xz || failed=1
    fi
    if [ ! -e .whl/caffe-cudnn.tar.xz ] && ls -d ~/.cache/convnet_transfer/caffe-*-cudnn9 >/dev/null 2>&1; then
        .venv/bin/python tools/install_caffe --cuda --cudnn --bundle .whl/caffe-cudnn.tar.xz || failed=1
    fi
    ls -l .whl
    exit 0
fi

out="${OUT:-device_check}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || failed=1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, numpy, google.protobuf, lmdb; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), '| numpy', numpy.__version__, '| protobuf', google.protobuf.__version__,
'| lmdb', lmdb.__version__)" 2>&1 | tee -a "$out/gpu.txt"
tests() {   # tests SECONDS LOG PYTEST-ARGUMENTS...
    local seconds=$1 log=$2; shift 2
    timeout "$seconds" python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs "$@" 2>&1 | tee "$out/$log" \
        | tail -25
}
status=0

if [ "${1:-}" = "--engine" ]; then
    tests 100 tests.log tests/test_engine_layers.py tests/test_engine_solver.py || status=1
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
    timeout 60 python3 bench/bench_train.py --gpu-only --batch 256 --iterations 120 \
        --records 1024 2>&1 | grep -v "^I[0-9]" | tee "$out/bench_train.txt" || status=1
    exit $status
fi

# real Caffe on the GPU: each bundle unpacked into /tmp, run with the CUDA libraries of this machine's PyTorch
bundles=$(ls .whl/caffe-*.tar.xz 2>/dev/null | sort)      # caffe-cuda before caffe-cudnn
[ -n "$bundles" ] || echo "no .whl/caffe-*.tar.xz: real Caffe's GPU half skipped (bash bench/device_check.sh" \
    "--fetch-wheels)" | tee -a "$out/gpu.txt"
for bundle in $bundles; do
    name=$(basename "$bundle" .tar.xz)
    top=$(tar tJf "$bundle" | head -1 | cut -d/ -f1)
    mkdir -p "/tmp/$name" && tar xJf "$bundle" -C "/tmp/$name" || { status=1; continue; }
    (   # a failed step is counted and the next one runs
        export CAFFE_ROOT="/tmp/$name/$top" CONVNET_TRANSFER_REQUIRE_CAFFE_GPU=1
        failed=0
        "$CAFFE_ROOT/bin/caffe-cuda-libs" 2>&1 | tee -a "$out/gpu.txt"
        timeout 15 python3 tools/caffe_check --no-python --gpu 0 2>&1 | tee "$out/$name.caffe_check.txt" || failed=1
        GLOG_logtostderr=1 timeout 15 "$CAFFE_ROOT/bin/caffe" device_query -gpu 0 2>&1 \
            | tee "$out/$name.device_query.txt" | tail -4 || failed=1
        case "$name" in
            *cudnn*)   # cuDNN's kernels: SGD and Adam, Caffe's time and training beside ours, fp32
                tests 45 "$name.tests.log" -k "not cpu and (sgd or Adam)" tests/test_caffe_gpu.py || failed=1
                timeout 45 python3 bench/bench_engine.py --gpu-only --batches 256 --iterations 20 --rounds 1 2>&1 \
                    | tee "$out/$name.bench_engine.txt" || failed=1
                timeout 50 python3 bench/bench_train.py --gpu-only --batch 256 --iterations 60 --records 1024 2>&1 \
                    | grep -v "^I[0-9]" | tee "$out/$name.bench_train.txt" || failed=1 ;;
            *)         # Caffe's own CUDA kernels: every solver type; ours also in bf16 and NHWC
                tests 70 "$name.tests.log" -k "not cpu" tests/test_caffe_gpu.py || failed=1
                timeout 70 python3 bench/bench_engine.py --gpu-only --batches 256 --iterations 20 --rounds 1 \
                    --precision bf16 --memory-format nchw,nhwc 2>&1 | tee "$out/$name.bench_engine.txt" || failed=1
                timeout 75 python3 bench/bench_train.py --gpu-only --batch 256 --iterations 60 --records 1024 2>&1 \
                    | grep -v "^I[0-9]" | tee "$out/$name.bench_train.txt" || failed=1 ;;
        esac
        exit $failed
    ) || status=1
done
# our engine: every layer type's CUDA variant (issue 20), then the GPU checks of the paper's nets
tests 60 layer_tests.log -k cuda tests/test_engine_layer_goldens.py tests/test_engine_float64.py \
    tests/test_engine_vision.py tests/test_engine_datalayers.py || status=1
tests 60 tests.log tests/test_engine_cuda.py || status=1
exit $status
