#!/usr/bin/env python3
"""Our engine against real Caffe on CaffeNet (227x227): forward+backward images per second, side by side.

    python bench/bench_engine.py                       # batches 256 and 32, 2 rounds of 3 iterations, CPU
    python bench/bench_engine.py --batches 32 --iterations 5 --rounds 3
    python bench/bench_engine.py --gpu                 # also our engine on CUDA (fp32, and --precision tf32,bf16)
    python bench/bench_engine.py --gpu-only --batches 256,1024   # CUDA alone: ours, and real Caffe's CUDA build
    python bench/bench_engine.py --gpu-only --memory-format nchw,nhwc   # CUDA in both memory layouts

Each round runs `caffe time -model M -iterations K` (the real Caffe that convnet_transfer.training.realcaffe finds,
tools/install_caffe) and then `tools/caffe_torch time` with the same arguments, one after the other, so that each
has the machine to itself (two engines alive at once slow each other: idle BLAS/OpenMP threads spin). Both print
Caffe's "Average Forward-Backward" after one untimed warm-up pass; images/s = batch / that time. The table gives
the mean over rounds and, in brackets, the best round. On CUDA, real Caffe is timed too (`caffe time -gpu 0`, fp32:
Caffe's own kernels and cuBLAS, cuDNN when its build has it) when the Caffe found is a CUDA build that answers
`caffe device_query` (tools/install_caffe --cuda, or its bundle named by $CAFFE_ROOT); its fp32 rate is the
Caffe column of every fp32 row (one memory layout: Caffe's NCHW).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CAFFENET = """name: "CaffeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: %(batch)d dim: 3 dim: 227 dim: 227 } shape { dim: %(batch)d } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 1000 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""


AVERAGE = re.compile(r"Average Forward-Backward: ([\d.eE+-]+) ms")


def time_command(run, model: Path, iterations: int, extra: tuple[str, ...] = (), average=AVERAGE) -> float:
    """Seconds per pass that `time` prints for `model` (the `average` line: forward+backward by default);
    run(args) runs one engine's binary."""
    proc = run(["time", "-model", str(model), "-iterations", str(iterations), *extra])
    found = average.search(proc.stderr + proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"time -model {model} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(found.group(1)) / 1000


def run_ours(args: list[str], cwd: Path | None = None, memory_format: str = "") -> subprocess.CompletedProcess:
    """tools/caffe_torch with `args`; memory_format "nchw" or "nhwc" sets $CAFFE_TORCH_MEMORY_FORMAT for it."""
    env = dict(os.environ, CAFFE_TORCH_MEMORY_FORMAT=memory_format) if memory_format else None
    return subprocess.run([sys.executable, str(ROOT / "tools" / "caffe_torch"), *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def real_caffe():
    """The working real Caffe build (convnet_transfer.training.realcaffe) or None, saying why a found one is unusable."""
    from convnet_transfer.training.realcaffe import find_caffe
    caffe = find_caffe()
    if caffe is not None and not caffe.ok:
        print(f"real Caffe found but not usable: {caffe.problem}", file=sys.stderr)
        return None
    return caffe


GPU = ("-gpu", "0")      # the device both engines run on in the GPU rows


def gpu_caffe(caffe):
    """`caffe` when it runs on GPU 0 (a CUDA build that answers `caffe device_query`), else None, saying why."""
    if caffe is None:
        return None
    from convnet_transfer.training.realcaffe import device_query
    query = device_query(caffe, int(GPU[1]))
    print(f"real Caffe on the GPU: {query.message}")
    return caffe if query.ok else None


def rates(seconds: list[float], batch: int) -> tuple[float, float]:
    """Images/s from the mean time per round, and from the fastest round."""
    return batch / (sum(seconds) / len(seconds)), batch / min(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="256,32", help="comma-separated batch sizes (default 256,32)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per `time` run (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine (default 2)")
    parser.add_argument("--gpu", action="store_true", help="also time our engine on CUDA device 0 when present")
    parser.add_argument("--gpu-only", action="store_true", help="CUDA alone: no CPU rounds (implies --gpu)")
    parser.add_argument("--precision", default=None, help="extra GPU runs: tf32, bf16 or both (tf32,bf16)")
    parser.add_argument("--memory-format", default="", help="GPU runs in these memory layouts: nchw, nhwc or "
                        "both (nchw,nhwc); default: the engine's own choice (NCHW on CUDA)")
    args = parser.parse_args()

    caffe = real_caffe()
    engines = {"ours": run_ours}
    if caffe:
        engines["caffe"] = lambda args: caffe.run("caffe", *args, check=False)
    print(f"CaffeNet 227x227, forward+backward: `caffe time` and `caffe_torch time`, {args.iterations} iterations "
          f"each, {args.rounds} alternating rounds, one engine at a time; {os.cpu_count()} CPUs, threads: each "
          f"engine's default (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    print(f"real Caffe: {caffe.describe() if caffe else 'not found (tools/install_caffe)'}")
    caffe_on_gpu = None
    if args.gpu or args.gpu_only:
        import torch
        caffe_on_gpu = gpu_caffe(caffe) if torch.cuda.is_available() else None
    print("img/s from the mean time per round (in brackets: from the fastest round)")
    print(f"{'device':<16}{'batch':>6}{'Caffe img/s':>20}{'ours img/s':>20}{'ours/Caffe':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            model = Path(tmp) / f"caffenet_{batch}.prototxt"
            model.write_text(CAFFENET % {"batch": batch})
            if not args.gpu_only:
                times = {name: [] for name in engines}
                for _ in range(args.rounds):
                    for name, run in engines.items():
                        times[name].append(time_command(run, model, args.iterations))
                mine = rates(times["ours"], batch)
                theirs = rates(times["caffe"], batch) if caffe else None
                ratio = f"{mine[0] / theirs[0]:.2f}x" if theirs else "-"
                caffe_text = f"{theirs[0]:.1f} ({theirs[1]:.1f})" if theirs else "-"
                print(f"{'cpu':<16}{batch:>6}{caffe_text:>20}{f'{mine[0]:.1f} ({mine[1]:.1f})':>20}{ratio:>12}",
                      flush=True)
            if args.gpu or args.gpu_only:
                import torch
                if not torch.cuda.is_available():
                    print("(no CUDA device here: GPU timing skipped)")
                    continue
                iterations = max(args.iterations, 20)
                theirs = None
                if caffe_on_gpu is not None:
                    theirs = rates([time_command(engines["caffe"], model, iterations, GPU)
                                    for _ in range(args.rounds)], batch)
                for precision in ["fp32"] + (args.precision.split(",") if args.precision else []):
                    for layout in args.memory_format.split(","):
                        run = functools.partial(run_ours, memory_format=layout)
                        gpu = rates([time_command(run, model, iterations, (*GPU, "-precision", precision))
                                     for _ in range(args.rounds)], batch)
                        device = " ".join(filter(None, ("cuda", precision, layout)))
                        fp32 = theirs if precision == "fp32" else None
                        caffe_text = f"{fp32[0]:.1f} ({fp32[1]:.1f})" if fp32 else "-"
                        ratio = f"{gpu[0] / fp32[0]:.2f}x" if fp32 else "-"
                        print(f"{device:<16}{batch:>6}{caffe_text:>20}{f'{gpu[0]:.1f} ({gpu[1]:.1f})':>20}"
                              f"{ratio:>12}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
