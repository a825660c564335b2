"""The `caffe` commands on the engine: train, test and time, with the semantics of Caffe's tools/caffe.cpp.

    train(solver, weights=..., snapshot=..., gpu=...) -> "done" | "stopped"    (raises on errors)
    test(model, weights, iterations, gpu=...) -> {output: mean score}
    time_net(model, iterations, gpu=...) -> {"forward_ms", "backward_ms", "forward_backward_ms", ...}

Device: `gpu` "" (none), "N", "N,M" or "all", as Caffe's -gpu; with no -gpu a solver that says
`solver_mode: GPU` uses `device_id` (default 0). Without CUDA both fall back to the CPU with a warning.
Precision: fp32 by default (TF32 switched off); `precision` or $CAFFE_TORCH_PRECISION = "tf32" or "bf16" (autocast)
only when asked. $CAFFE_TORCH_DETERMINISTIC=1 asks torch for deterministic kernels (the CPU is deterministic
already: the same seed gives the same weights).
"""
from __future__ import annotations

import contextlib
import os
import time as _time

import torch

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats.protoio import read_solver
from . import glog
from .solver import NetWithData, SGDSolver, SignalActions, SolverError, report_copied
from .upgrade import read_net_file

__all__ = ["train", "test", "time_net", "select_device", "set_precision", "keep_freed_memory", "PRECISIONS"]

PRECISIONS = ("fp32", "tf32", "bf16")
PRECISION_ENV = "CAFFE_TORCH_PRECISION"
DETERMINISTIC_ENV = "CAFFE_TORCH_DETERMINISTIC"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory torch frees for the next allocation (mallopt: no mmap per large block,
    freed memory not returned to the system). Training frees and allocates the same large tensors every iteration
    (activations, gradients: 151 MB for CaffeNet's fc6); by default each one over 32 MB is a fresh mmap whose pages
    fault in again (fc6's weight gradient: 83 ms into new memory, 24 ms into memory already touched). CaffeNet at
    batch 256 on the CPU: half the time per iteration, about 40% more peak memory (docs/engine.md). Process-wide, for
    the `caffe` command. Returns False where the C library has no mallopt (not glibc)."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_max, m_trim_threshold = -4, -1
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def select_device(gpu: str = "", solver_param: pb.SolverParameter | None = None) -> torch.device:
    """Caffe's device choice (-gpu, else solver_mode/device_id), falling back to the CPU without CUDA."""
    if not gpu and solver_param is not None and solver_param.HasField("solver_mode") \
            and solver_param.solver_mode == pb.SolverParameter.GPU:
        gpu = str(solver_param.device_id)
    if not gpu:
        glog.info("caffe.cpp:197", "Use CPU.")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        glog.warning("caffe.cpp:197", f"GPU {gpu} requested (-gpu or solver_mode: GPU) but CUDA is not available "
                     f"to PyTorch here: using the CPU.")
        return torch.device("cpu")
    ids = list(range(torch.cuda.device_count())) if gpu == "all" else [int(g) for g in gpu.split(",")]
    if len(ids) != 1:
        raise SolverError(f"-gpu {gpu}: training on several GPUs at once is not implemented by the engine; "
                          f"pass one device, e.g. -gpu {ids[0] if ids else 0}.")
    if ids[0] >= torch.cuda.device_count():
        raise SolverError(f"-gpu {ids[0]}: no such CUDA device ({torch.cuda.device_count()} found).")
    glog.info("caffe.cpp:206", f"Using GPUs {ids[0]}")
    glog.info("caffe.cpp:211", f"GPU {ids[0]}: {torch.cuda.get_device_name(ids[0])}")
    torch.cuda.set_device(ids[0])
    return torch.device("cuda", ids[0])


def set_precision(precision: str | None, device: torch.device) -> str:
    """Configure matmul/convolution precision; returns the precision used ("fp32" unless asked otherwise)."""
    precision = (precision or os.environ.get(PRECISION_ENV) or "fp32").lower()
    if precision not in PRECISIONS:
        raise SolverError(f"precision {precision!r} (flag -precision or ${PRECISION_ENV}): use one of "
                          f"{', '.join(PRECISIONS)}.")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if os.environ.get(DETERMINISTIC_ENV) == "1":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if precision != "fp32":
        glog.info("caffe.cpp:215", f"Precision: {precision} (asked for; Caffe computes in fp32)")
    return precision


def train(solver: str, *, weights: str = "", snapshot: str = "", gpu: str = "", sigint_effect: str = "stop",
          sighup_effect: str = "snapshot", level: int = 0, stage: str = "", precision: str | None = None,
          workers: int | None = None) -> str:
    """`caffe train`: returns "done", or "stopped" when a signal stopped it (after the snapshot)."""
    if not solver:
        raise SolverError("Need a solver definition to train (-solver FILE).")
    if snapshot and weights:
        raise SolverError("Give a snapshot to resume training or weights to finetune but not both.")
    actions = SignalActions(sigint_effect, sighup_effect)
    param = read_solver(solver)
    device = select_device(gpu, param)
    precision = set_precision(precision, device)
    if snapshot:
        del param.weights[:]
    elif weights:
        del param.weights[:]
        param.weights.append(weights)
    stages = tuple(s for s in stage.split(",") if s)
    sgd = SGDSolver(param, device=device, weights=list(param.weights), level=level, stages=stages,
                    actions=actions, precision=precision, workers=workers, solver_file=solver)
    actions.install()
    try:
        if snapshot:
            glog.info("caffe.cpp:232", f"Resuming from {snapshot}")
            sgd.restore(snapshot)
        glog.info("caffe.cpp:239", "Starting Optimization")
        outcome = sgd.solve()
    finally:
        actions.uninstall()
        sgd.close()
    if outcome == "stopped":
        saved = (f"after the snapshot {sgd.last_snapshot}; run again with -snapshot "
                 f"{sgd.last_snapshot[:-len('.caffemodel')]}.solverstate to continue" if sgd.last_snapshot
                 else "without a snapshot (snapshot_after_train: false)")
        glog.info("caffe.cpp:250", f"Optimization stopped by {actions.stopped_by} at iteration {sgd.iter} {saved}.")
    glog.info("caffe.cpp:250", "Optimization Done.")
    return outcome


def _net_with_data(model: str, phase: str, device: torch.device, level: int, stage: str) -> NetWithData:
    """The net of `caffe test` and `caffe time`: `model` filtered by phase, level and stages, with its data."""
    stages = tuple(s for s in stage.split(",") if s)
    return NetWithData(read_net_file(model), phase, device, level=level, stages=stages)


def test(model: str, weights: str, iterations: int = 50, *, gpu: str = "", level: int = 0, stage: str = "",
         precision: str | None = None) -> dict[str, list[float]]:
    """`caffe test`: the TEST-phase net's outputs averaged over `iterations` batches."""
    if not model:
        raise SolverError("Need a model definition to score (-model FILE).")
    if not weights:
        raise SolverError("Need model weights to score (-weights FILE).")
    device = select_device(gpu)
    set_precision(precision, device)
    fed = _net_with_data(model, "TEST", device, level, stage)
    net = fed.net
    try:
        for name in weights.split(","):
            report_copied(net, name.strip(), net.load_caffemodel(name.strip()))
        glog.info("caffe.cpp:290", f"Running for {iterations} iterations.")
        totals: dict[str, list[float]] = {}
        loss = 0.0
        with torch.no_grad():
            for i in range(iterations):
                blobs = net.forward(fed.next_batch())
                loss += float(net.loss(blobs))
                for name in net.outputs:
                    values = blobs[name].detach().float().reshape(-1).tolist()
                    for value in values:
                        glog.info("caffe.cpp:313", f"Batch {i}, {name} = {glog.fmt(value)}")
                    totals[name] = values if name not in totals else [a + b for a, b in zip(totals[name], values)]
        glog.info("caffe.cpp:318", f"Loss: {glog.fmt(loss / iterations)}")
        means = {}
        for name in net.outputs:
            means[name] = [t / iterations for t in totals[name]]
            for value in means[name]:
                glog.info("caffe.cpp:330", glog.output(name, value, net.loss_weights.get(name, 0.0)))
        return means
    finally:
        fed.close()


def time_net(model: str, iterations: int = 50, *, gpu: str = "", phase: str = "TRAIN", level: int = 0,
             stage: str = "", precision: str | None = None, inputs: dict | None = None) -> dict:
    """`caffe time`: as Caffe's, each iteration runs the layers one by one, forward then backward, timing each
    (after waiting for the device), and prints the average time per layer, the forward and backward passes
    (the sums of the layers' times) and the whole iteration. A data layer's forward is the wait for its batch.

    `inputs` optionally gives tensors for the net's Input-layer tops (Caffe leaves them zero)."""
    if not model:
        raise SolverError("Need a model definition to time (-model FILE).")
    if phase not in ("TRAIN", "TEST"):
        raise SolverError('phase must be "TRAIN" or "TEST"')
    device = select_device(gpu)
    precision = set_precision(precision, device)
    timer = _LayerTimer(_net_with_data(model, phase, device, level, stage), device, precision, inputs)
    try:
        timer.warm_up()
        return timer.benchmark(iterations)
    finally:
        timer.fed.close()


class _LayerTimer:
    """The steps of `caffe time` on one net and its data: an untimed pass, then the timed iterations."""

    def __init__(self, fed: NetWithData, device: torch.device, precision: str, inputs: dict | None):
        self.fed, self.net, self.device, self.inputs = fed, fed.net, device, inputs or {}
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())

    def clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return _time.perf_counter()

    def batch_by_layer(self) -> tuple[dict, dict[str, float]]:
        """The inputs of one pass, and the seconds each data layer waited for its batch."""
        batch, waited = {}, {}
        for source in self.fed.sources:
            start = self.clock()
            batch.update(source.next_batch())
            waited[source.name] = self.clock() - start
        batch.update({k: v.to(self.device) for k, v in self.inputs.items()})
        for name in self.net.input_blobs:          # Input-layer tops nobody fills: zeros, as Caffe allocates them
            if name not in batch:
                batch[name] = torch.zeros(self.net.blob_shapes[name], device=self.device)
        return batch, waited

    def warm_up(self) -> None:
        """A first pass, untimed, as Caffe's (allocations and kernel choices made before the benchmark)."""
        glog.info("caffe.cpp:352", "Performing Forward")
        with self.autocast:
            _, tape = self.net.forward_by_layer(self.batch_by_layer()[0], self.clock)
            glog.info("caffe.cpp:354", f"Initial loss: {glog.fmt(float(self.net.loss(tape.values).detach()))}")
            glog.info("caffe.cpp:355", "Performing Backward")
            self.net.backward_by_layer(tape, self.clock)
        del tape
        for p in self.net.params:
            p.tensor.grad = None

    def benchmark(self, iterations: int) -> dict:
        """Time `iterations` passes layer by layer; log and return the averages (see time_net)."""
        rows = self.net.layer_rows()          # (name, index in net.layers or -1: a data layer), Caffe's order
        glog.info("caffe.cpp:363", "*** Benchmark begins ***")
        glog.info("caffe.cpp:364", f"Testing for {iterations} iterations.")
        forward_layer, backward_layer = [0.0] * len(rows), [0.0] * len(rows)
        per_iteration = []
        total_start = self.clock()
        for j in range(iterations):
            start = self.clock()
            batch, waited = self.batch_by_layer()
            with self.autocast:
                forward, tape = self.net.forward_by_layer(batch, self.clock)
                backward = self.net.backward_by_layer(tape, self.clock)
            del tape
            for p in self.net.params:
                p.tensor.grad = None
            for k, (name, index) in enumerate(rows):    # a data layer's forward: the wait for its batch
                forward_layer[k] += forward.get(index, 0.0) if index >= 0 else waited.get(name, 0.0)
                backward_layer[k] += backward.get(index, 0.0) if index >= 0 else 0.0
            per_iteration.append((self.clock() - start) * 1000)
            glog.info("caffe.cpp:394", f"Iteration: {j + 1} forward-backward time: {glog.fmt(per_iteration[-1])} ms.")
        total_ms = (self.clock() - total_start) * 1000
        layers_ms = [(name, forward_layer[k] * 1000 / iterations, backward_layer[k] * 1000 / iterations)
                     for k, (name, _) in enumerate(rows)]
        return _log_times(layers_ms, per_iteration, total_ms, iterations)


def _log_times(layers_ms: list[tuple[str, float, float]], per_iteration: list[float], total_ms: float,
               iterations: int) -> dict:
    """Caffe's summary of `caffe time`: each layer's average forward and backward time (name, ms, ms: one row per
    layer, two layers of one name two rows), then the passes."""
    glog.info("caffe.cpp:397", "Average time per layer: ")
    for name, forward_ms, backward_ms in layers_ms:
        glog.info("caffe.cpp:400", f"{name:>10}\tforward: {glog.fmt(forward_ms)} ms.")
        glog.info("caffe.cpp:403", f"{name:>10}\tbackward: {glog.fmt(backward_ms)} ms.")
    result = {"forward_ms": sum(f for _, f, _ in layers_ms),
              "backward_ms": sum(b for _, _, b in layers_ms),
              "forward_backward_ms": total_ms / iterations, "total_ms": total_ms,
              "per_iteration_ms": per_iteration, "layers_ms": layers_ms}
    glog.info("caffe.cpp:407", f"Average Forward pass: {glog.fmt(result['forward_ms'])} ms.")
    glog.info("caffe.cpp:409", f"Average Backward pass: {glog.fmt(result['backward_ms'])} ms.")
    glog.info("caffe.cpp:411", f"Average Forward-Backward: {glog.fmt(result['forward_backward_ms'])} ms.")
    glog.info("caffe.cpp:413", f"Total Time: {glog.fmt(total_ms)} ms.")
    glog.info("caffe.cpp:414", "*** Benchmark ends ***")
    return result
