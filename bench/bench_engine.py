#!/usr/bin/env python3
"""Our engine against real Caffe on CaffeNet (227x227): forward+backward images per second, side by side.

    python bench/bench_engine.py                       # batches 256 and 32, 3 timed iterations each, CPU
    python bench/bench_engine.py --batches 32 --iterations 5
    python bench/bench_engine.py --gpu                 # also our engine on CUDA (fp32, and --precision tf32|bf16)

Both time forward+backward of the whole net (SoftmaxWithLoss included) as `caffe time` does, after one warm-up,
on the same machine in the same run, alternating iteration by iteration; real Caffe is the one
convnet_transfer.realcaffe finds (tools/install_caffe), run through pycaffe (else `caffe time`).
Images/s = batch / (forward+backward seconds).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
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


class CaffeRunner:
    """One forward+backward of real Caffe through pycaffe (else one `caffe time -iterations 1` run)."""

    def __init__(self, caffe, model: Path):
        self.caffe, self.model, self.net = caffe, model, None
        try:
            pycaffe = caffe.import_pycaffe()
            pycaffe.set_mode_cpu()
            self.net = pycaffe.Net(str(model), pycaffe.TRAIN)
        except Exception as err:  # pycaffe missing or broken: fall back to the binary
            print(f"(pycaffe unavailable: {err}; timing `caffe time` runs instead)", file=sys.stderr)

    def __call__(self) -> float:
        if self.net is not None:
            start = time.perf_counter()
            self.net.forward()
            self.net.backward()
            return time.perf_counter() - start
        proc = self.caffe.run("caffe", "time", "-model", str(self.model), "-iterations", "1")
        found = re.search(r"Iteration: 1 forward-backward time: ([\d.eE+-]+) ms", proc.stderr + proc.stdout)
        return float(found.group(1)) / 1000


def _serve(kind: str, model: str, batch: int, device: str, precision, conn) -> None:
    """A worker process holding one engine's net: each message asks for one timed forward+backward."""
    if kind == "caffe":
        from convnet_transfer.realcaffe import find_caffe
        runner = CaffeRunner(find_caffe(), Path(model))
    else:
        runner = OursRunner(Path(model), batch, device, precision)
    conn.send("ready")
    while conn.recv():
        conn.send(runner())


class Engine:
    """An engine in its own process (so that neither engine's spinning BLAS/OpenMP threads slow the other)."""

    def __init__(self, kind: str, model: Path, batch: int, device: str = "cpu", precision: str | None = None):
        import multiprocessing
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(kind, str(model), batch, device, precision, child),
                                       daemon=True)
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"{kind} engine did not start")

    def __call__(self) -> float:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.process.join(60)


class OursRunner:
    """One forward+backward of our engine (as `caffe_torch time` runs it), on `device`."""

    def __init__(self, model: Path, batch: int, device: str = "cpu", precision: str | None = None):
        import torch

        from convnet_transfer.engine import train
        with contextlib.redirect_stderr(io.StringIO()):
            self.device = train.select_device("0" if device.startswith("cuda") else "")
            self.precision = train.set_precision(precision, self.device)
            self.net, _ = train._build(str(model), "TRAIN", self.device)
        self.torch = torch
        self.inputs = {"data": torch.randn(batch, 3, 227, 227, device=self.device),
                       "label": torch.zeros(batch, device=self.device)}

    def __call__(self) -> float:
        torch = self.torch
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.net.loss(self.net.forward(self.inputs))
        loss.backward()
        for p in self.net.params:
            p.tensor.grad = None
        sync()
        return time.perf_counter() - start


def rates(seconds: list[float], batch: int) -> tuple[float, float]:
    """Images/s from the mean time per iteration, and from the fastest iteration."""
    return batch / (sum(seconds) / len(seconds)), batch / min(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="256,32", help="comma-separated batch sizes (default 256,32)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per engine (default 3)")
    parser.add_argument("--gpu", action="store_true", help="also time our engine on CUDA device 0 when present")
    parser.add_argument("--precision", default=None, help="extra GPU run in tf32 or bf16")
    args = parser.parse_args()

    import torch

    from convnet_transfer.realcaffe import find_caffe
    caffe = find_caffe()
    if caffe is not None and not caffe.ok:
        print(f"real Caffe found but not usable: {caffe.problem}", file=sys.stderr)
        caffe = None
    print(f"CaffeNet 227x227, forward+backward, one warm-up then {args.iterations} iterations per engine, "
          f"alternating, each engine in its own process; CPU threads: torch {torch.get_num_threads()}, Caffe's OpenBLAS "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')} ({os.cpu_count()} CPUs)")
    print(f"real Caffe: {caffe.describe() if caffe else 'not found (tools/install_caffe)'}")
    print("img/s from the mean time per iteration (in brackets: from the fastest iteration)")
    print(f"{'device':<10}{'batch':>6}{'Caffe img/s':>20}{'ours img/s':>20}{'ours/Caffe':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            model = Path(tmp) / f"caffenet_{batch}.prototxt"
            model.write_text(CAFFENET % {"batch": batch})
            runners = {"ours": Engine("ours", model, batch)}
            if caffe:
                runners["caffe"] = Engine("caffe", model, batch)
            times = {name: [] for name in runners}
            for round_ in range(args.iterations + 1):
                for name, run in runners.items():
                    seconds = run()
                    if round_:
                        times[name].append(seconds)
            ours = rates(times["ours"], batch)
            theirs = rates(times["caffe"], batch) if caffe else None
            ratio = f"{ours[0] / theirs[0]:.2f}x" if theirs else "-"
            caffe_text = f"{theirs[0]:.1f} ({theirs[1]:.1f})" if theirs else "-"
            print(f"{'cpu':<10}{batch:>6}{caffe_text:>20}{f'{ours[0]:.1f} ({ours[1]:.1f})':>20}{ratio:>12}",
                  flush=True)
            for run in runners.values():
                run.close()
            if args.gpu and torch.cuda.is_available():
                for precision in ["fp32"] + ([args.precision] if args.precision else []):
                    run = Engine("ours", model, batch, "cuda", precision)
                    run()
                    gpu = rates([run() for _ in range(max(args.iterations, 20))], batch)
                    run.close()
                    print(f"{'cuda ' + precision:<10}{batch:>6}{'-':>20}{f'{gpu[0]:.1f} ({gpu[1]:.1f})':>20}"
                          f"{'-':>12}", flush=True)
            elif args.gpu:
                print("(no CUDA device here: GPU timing skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
