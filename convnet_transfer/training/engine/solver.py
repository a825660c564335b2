"""Caffe's solvers (solver.cpp, sgd_solver.cpp and solvers/*_solver.cpp) on PyTorch, update for update.

Each iteration (Solver::Step): test when `iter % test_interval == 0` (and at 0 when test_initialization),
forward+backward `iter_size` times accumulating gradients, display the smoothed loss and the train net outputs
every `display` iterations, then ApplyUpdate (SGDSolver's, which all of Caffe's solver types share):

    rate        = lr_policy(base_lr, iter)            fixed, step, multistep, exp, inv, poly, sigmoid
    clip        : all gradients scaled by clip_gradients / ||g||_2 when the global norm exceeds it
    g          *= 1 / iter_size
    g          += weight_decay * decay_mult * w       (L2; L1 adds the sign of w)
    update rule of the solver `type` (updates.py), with local_rate = rate * lr_mult; SGD's:
    v           = momentum * v + local_rate * g       (the history saved in .solverstate)
    w          -= v
    iter       += 1

then a snapshot every `snapshot` iterations (`<prefix>_iter_<N>.caffemodel` + `.solverstate`, the files Caffe
writes, plus `.solverstate.rng`: our random generators, for an exact resume) and after training.

A loss that is NaN or infinite stops the run (`Diverged`, naming the iteration) when the losses are read back from
the device (in groups, at a display, before a snapshot and every READ_LOSSES_EVERY iterations, so that a GPU is not
stalled each iteration); a snapshot is never written from a diverged run, so the last good snapshot stays. Signals
are checked after each iteration (and during testing) as Caffe's SignalHandler does: `stop`, `snapshot` or `none`
per signal (SIGINT: stop, SIGHUP: snapshot by default); SIGTERM and SIGUSR1 (what Slurm sends before a time limit)
snapshot then stop.
"""
from __future__ import annotations

import base64
import contextlib
import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from convnet_transfer.formats.snapshots import snapshot_name
from . import glog
from .errors import EngineError
from .data import ENGINE_DATA_LAYER_TYPES, DataLayerSource, open_data_source
from .net import Net
from .updates import UPDATE_RULES, Hyper, solver_type_problem
from .upgrade import filter_net, read_net_file, upgrade_net

__all__ = ["SGDSolver", "SolverError", "Diverged", "SignalActions", "NetWithData", "learning_rate", "report_copied"]


class SolverError(EngineError):
    """A solver that cannot run as given: the message names the file or field and what to do."""


class Diverged(SolverError):
    """The loss (or the weights) became NaN or infinite."""


# ---------------------------------------------------------------- learning rate

def learning_rate(param: pb.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
    """SGDSolver::GetLearningRate: (rate as a float32 value, current_step) at iteration `it`."""
    policy, base, gamma, power = param.lr_policy, param.base_lr, param.gamma, param.power
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise SolverError("lr_policy \"step\" needs stepsize > 0 in the solver.")
        current_step = it // param.stepsize
        rate = base * gamma ** current_step
    elif policy == "exp":
        rate = base * gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            glog.info("sgd_solver.cpp:56", f"MultiStep Status: Iteration {it}, step = {current_step}")
        rate = base * gamma ** current_step
    elif policy == "poly":
        rate = base * (1.0 - float(np.float32(it) / np.float32(param.max_iter))) ** power
    elif policy == "sigmoid":
        if param.stepsize <= 0:
            raise SolverError("lr_policy \"sigmoid\" needs stepsize > 0 in the solver.")
        rate = base * (1.0 / (1.0 + math.exp(-gamma * (it - param.stepsize))))
    else:
        raise SolverError(f"Unknown learning rate policy: {policy!r} (use fixed, step, multistep, exp, inv, poly "
                          f"or sigmoid).")
    return float(np.float32(rate)), current_step


# ---------------------------------------------------------------- signals

class SignalActions:
    """What a signal asks of the solver, checked between iterations (Caffe's SignalHandler).

    effects: SIGINT -> `sigint_effect` (default stop), SIGHUP -> `sighup_effect` (default snapshot),
    SIGTERM and SIGUSR1 -> snapshot and stop. A second SIGINT while a stop is pending interrupts at once.
    """

    EFFECTS = ("stop", "snapshot", "none")

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        for flag, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if value not in self.EFFECTS:
                raise SolverError(f"Invalid signal effect \"{value}\" was specified for -{flag} "
                                  f"(use snapshot, stop or none).")
        self.effects = {signal.SIGINT: (sigint_effect,), signal.SIGHUP: (sighup_effect,),
                        signal.SIGTERM: ("snapshot", "stop"), signal.SIGUSR1: ("snapshot", "stop")}
        self.snapshot = self.stop = False
        self.stopped_by: str | None = None
        self._previous = {}

    def install(self) -> "SignalActions":
        for sig in self.effects:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.stop:
            raise KeyboardInterrupt
        effects = self.effects[signum]
        self.snapshot |= "snapshot" in effects
        if "stop" in effects:
            self.stop = True
            self.stopped_by = signal.Signals(signum).name

    def take_snapshot_request(self) -> bool:
        requested, self.snapshot = self.snapshot, False
        return requested


# ---------------------------------------------------------------- reading the solver and nets

def _net_state(phase: str, net_param: pb.NetParameter, override: pb.NetState | None) -> pb.NetState:
    state = pb.NetState()
    state.phase = pb.TRAIN if phase == "TRAIN" else pb.TEST
    state.MergeFrom(net_param.state)
    if override is not None:
        state.MergeFrom(override)
    return state


class NetWithData:
    """A Net and the sources that feed its Data layers: the solver's train and test nets, and the net that
    `caffe test` and `caffe time` run. The net is filtered by phase, level and stages.

    seed_seq: where the data sources' seeds come from (one spawned per layer); None: layer i's source gets seed i.
    seed: the net's filler and dropout seed (None: a random one)."""

    def __init__(self, net_param: pb.NetParameter, phase: str, device: torch.device, *, level: int = 0,
                 stages: tuple[str, ...] = (), seed_seq: np.random.SeedSequence | None = None,
                 workers: int | None = None, seed: int | None = None, log: bool = True):
        filtered = filter_net(net_param, phase, level=level, stages=stages)
        if seed_seq is None:
            layer_seeds = list(range(len(filtered.layer)))
        else:
            layer_seeds = [int(s.generate_state(1)[0]) for s in seed_seq.spawn(len(filtered.layer))]
        self.sources: list[DataLayerSource] = []
        try:
            for layer, layer_seed in zip(filtered.layer, layer_seeds):
                if layer.type in ENGINE_DATA_LAYER_TYPES:   # the others compute their tops in the net
                    self.sources.append(open_data_source(layer, phase, device, seed=layer_seed, workers=workers))
            shapes = {}
            for source in self.sources:
                shapes.update(source.shapes)
            self.net = Net(filtered, phase, shapes, level=level, stages=stages, seed=seed, log=log)
            self.net.place(device)
            self.name = filtered.name
        except BaseException:
            self.close()
            raise
        self.phase = phase

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = {}
        for source in self.sources:
            batch.update(source.next_batch())
        return batch

    def close(self) -> None:
        for source in self.sources:
            source.close()


# ---------------------------------------------------------------- the solver

class SGDSolver:
    """Caffe's SGDSolver and its subclasses (the solver `type`, one rule of updates.UPDATE_RULES). `solve()` trains
    to max_iter (or until a signal stops it) and returns "done" or "stopped".

    device: torch device; weights: caffemodels to copy into same-named layers (-weights, comma list allowed);
    precision: "fp32" (default), "tf32" or "bf16" (autocast) — the last two only when asked for.
    """

    def __init__(self, param: pb.SolverParameter, *, device: str | torch.device = "cpu",
                 weights: list[str] | tuple[str, ...] = (), level: int = 0, stages: tuple[str, ...] = (),
                 actions: SignalActions | None = None, precision: str = "fp32", workers: int | None = None,
                 solver_file: str | None = None):
        self.param = param
        self.device = torch.device(device)
        self.actions = actions or SignalActions()
        self.precision = precision
        self.iter = self.current_step = 0
        self.last_snapshot: str | None = None
        self._snapshot_iter = -1
        self.requested_early_exit = False
        self._check_param(solver_file)
        glog.info("solver.cpp:45", "Initializing solver from parameters: \n"
                  + text_format.MessageToString(param).rstrip())
        self._check_snapshot_prefix()

        seed = param.random_seed
        if seed >= 0:
            torch.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed_all(seed)
        seed_seq = np.random.SeedSequence(seed if seed >= 0 else None)
        train_seq, *test_seqs = seed_seq.spawn(1 + 64)

        self.test_nets: list[NetWithData] = []
        self.train = None
        try:
            train_param, train_source = self._train_net_param()
            glog.info("solver.cpp:103", f"Creating training net {train_source}")
            train_state = pb.NetState()
            train_state.CopyFrom(param.train_state)
            train_state.level = level or train_state.level
            train_state.stage.extend(s for s in stages if s)
            state = _net_state("TRAIN", train_param, train_state)
            net_seed = seed if seed >= 0 else None
            self.train = NetWithData(train_param, "TRAIN", self.device, level=state.level, stages=tuple(state.stage),
                                     seed_seq=train_seq, workers=workers, seed=net_seed)
            self.net = self.train.net
            for path in weights:
                self._load_weights(self.net, path, report=True)
            for i, (test_param, source) in enumerate(self._test_net_params()):
                glog.info("solver.cpp:191", f"Creating test net (#{i}) specified by {source}")
                override = param.test_state[i] if param.test_state else None
                state = _net_state("TEST", test_param, override)
                self.test_nets.append(NetWithData(test_param, "TEST", self.device, level=state.level,
                                                  stages=tuple(state.stage), seed_seq=test_seqs[i], workers=workers,
                                                  seed=net_seed, log=False))
                for path in weights:
                    self._load_weights(self.test_nets[-1].net, path)
        except BaseException:
            self.close()
            raise
        self.params = list(self.net.params)
        self.rule, self.hyper = UPDATE_RULES[param.type], Hyper.of(param, 0)
        self.history = self.rule.new_history([p.tensor for p in self.params])
        glog.info("solver.cpp:57", "Solver scaffolding done.")
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self._pending_losses: list[tuple[int, int, torch.Tensor]] = []   # (iteration, its index in the step, loss)

    # ------------------------------------------------------------ set-up

    def _check_param(self, solver_file: str | None) -> None:
        p = self.param
        where = solver_file or "the solver"
        if p.average_loss < 1:
            raise SolverError(f"{where}: average_loss should be non-negative.")
        problem = solver_type_problem(p)
        if problem:
            raise SolverError(f"{where}: {problem}")
        if p.regularization_type not in ("L2", "L1"):
            raise SolverError(f"{where}: Unknown regularization type: {p.regularization_type}")
        if p.iter_size < 1:
            raise SolverError(f"{where}: iter_size must be at least 1.")
        if p.snapshot_format != pb.SolverParameter.BINARYPROTO:
            raise SolverError(f"{where}: snapshot_format HDF5 is not supported by the engine; use BINARYPROTO.")
        learning_rate(p, 0, 0)  # an unknown policy fails now, not at the first update
        if p.base_lr < 0:
            glog.warning(glog.here(), f"{where}: base_lr is {glog.fmt(p.base_lr)}, negative: every update climbs the "
                                      f"loss instead of descending it (Caffe trains with it all the same). Check "
                                      f"base_lr.")

    def _check_snapshot_prefix(self) -> None:
        p = self.param
        if p.snapshot or p.snapshot_after_train:
            if not p.HasField("snapshot_prefix"):
                if p.snapshot:
                    raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
                return
            probe = Path(self._snapshot_filename(".tempfile"))
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError:
                raise SolverError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}'.  Make sure that the "
                                  f"directory exists and is writable.") from None

    def _train_net_param(self) -> tuple[pb.NetParameter, str]:
        p = self.param
        fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(fields) != 1:
            raise SolverError("SolverParameter must specify exactly one train net using one of these fields: net, "
                              f"net_param, train_net, train_net_param (found: {', '.join(fields) or 'none'}).")
        field = fields[0]
        if field in ("net", "train_net"):
            return read_net_file(getattr(p, field)), f"from {field} file: {getattr(p, field)}"
        return upgrade_net(getattr(p, field)), f"specified in {field}"

    def _test_net_params(self) -> list[tuple[pb.NetParameter, str]]:
        p = self.param
        generic = p.HasField("net") + p.HasField("net_param")
        explicit = [(upgrade_net(n), "test_net_param") for n in p.test_net_param]
        explicit += [(read_net_file(f), f"test_net file: {f}") for f in p.test_net]
        if (generic and len(p.test_iter) < len(explicit)) or (not generic and len(p.test_iter) != len(explicit)):
            raise SolverError("test_iter must be specified for each test network.")
        remaining = len(p.test_iter) - len(explicit)
        nets = list(explicit)
        if p.HasField("net_param"):
            nets += [(upgrade_net(p.net_param), "net_param")] * remaining
        elif p.HasField("net"):
            nets += [(read_net_file(p.net), f"net file: {p.net}") for _ in range(remaining)]
        if p.test_state and len(p.test_state) != len(nets):
            raise SolverError("test_state must be unspecified or specified once per test net.")
        if nets and p.test_interval <= 0:
            raise SolverError("test nets are given (test_iter) but test_interval is not > 0.")
        return nets

    def _load_weights(self, net, model_list: str, report: bool = False) -> None:
        for name in model_list.split(","):
            name = name.strip()
            glog.info("solver.cpp:72", f"Finetuning from {name}")
            copied = net.load_caffemodel(name)
            if report:
                report_copied(net, name, copied)

    # ------------------------------------------------------------ training

    def solve(self) -> str:
        """Train from the current iteration to max_iter. Returns "done", or "stopped" after a signal."""
        p = self.param
        glog.info("solver.cpp:289", f"Solving {self.train.name}")
        glog.info("solver.cpp:290", f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            glog.info("solver.cpp:311", "Optimization stopped early.")
            return "stopped"
        if p.display and self.iter % p.display == 0:
            with torch.no_grad(), self._autocast():
                blobs = self.net.forward(self.train.next_batch())
                loss = float(self.net.loss(blobs))
            self._update_smoothed_loss(loss, self.iter - start_iter)
            glog.info("solver.cpp:327", f"Iteration {self.iter}, loss = {glog.fmt(self.smoothed_loss)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        glog.info("solver.cpp:332", "Optimization Done.")
        return "done"

    READ_LOSSES_EVERY = 20

    def step(self, iters: int) -> None:
        """Solver::Step. Each iteration's loss stays on the device and is read back with the others at a display,
        before a snapshot, every READ_LOSSES_EVERY iterations and at the end: reading it at once would stop a GPU
        from running ahead of Python. The smoothed loss, the logs and the weights are those of reading it at once;
        a divergence is named at its first non-finite loss and never snapshotted."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        timer, iterations_last = time.time(), 0
        while self.iter < stop_iter:
            for param in self.params:
                param.tensor.grad = None
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            loss = None
            for _ in range(p.iter_size):
                with self._autocast():
                    blobs = self.net.forward(self.train.next_batch())
                    total = self.net.loss(blobs)
                total.backward()
                loss = total.detach().float() if loss is None else loss + total.detach().float()
            self._pending_losses.append((self.iter, self.iter - start_iter,
                                         loss / p.iter_size if p.iter_size > 1 else loss))
            if display or len(self._pending_losses) >= self.READ_LOSSES_EVERY:
                self._read_losses()
            if display:
                lapse = time.time() - timer
                per_s = (self.iter - iterations_last) / (lapse or 1)
                glog.info("solver.cpp:239", f"Iteration {self.iter} ({glog.fmt(per_s)} iter/s, {glog.fmt(lapse)}s/"
                          f"{p.display} iters), loss = {glog.fmt(self.smoothed_loss)}")
                timer, iterations_last = time.time(), self.iter
                values = {name: blobs[name].detach().float().reshape(-1).tolist() for name in self.net.outputs}
                glog.net_outputs("solver.cpp:258", "    Train net output", values, self.net.loss_weights)
            self.apply_update()
            snapshot_requested = self.actions.take_snapshot_request()
            if (p.snapshot and self.iter % p.snapshot == 0) or snapshot_requested:
                self.snapshot()
            if self.actions.stop:
                self.requested_early_exit = True
                break
        self._read_losses()

    def _read_losses(self) -> None:
        """Read the pending iterations' losses back in one transfer and add them to the smoothed loss in order;
        the first NaN or infinite one stops the run (`Diverged`), naming its iteration."""
        pending, self._pending_losses = self._pending_losses, []
        if not pending:
            return
        values = torch.stack([loss for _, _, loss in pending]).tolist()
        for (it, index, _), loss in zip(pending, values):
            if not math.isfinite(loss):
                raise Diverged(f"Iteration {it}: the loss is {glog.fmt(loss)}; training diverged and stops here. "
                               f"{self._last_good()} Lower base_lr (or check the data) and train again.")
            self._update_smoothed_loss(loss, index)

    def _update_smoothed_loss(self, loss: float, index: int) -> None:
        """Solver::UpdateSmoothedLoss; index: the iteration counted from the start of this step."""
        average = self.param.average_loss
        if len(self.losses) < average:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            index = index % average
            self.smoothed_loss += (loss - self.losses[index]) / average
            self.losses[index] = loss

    @torch.no_grad()
    def apply_update(self) -> None:
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if p.display and self.iter % p.display == 0:
            glog.info("sgd_solver.cpp:112", f"Iteration {self.iter}, lr = {glog.fmt(rate)}")
        grads = [param.tensor.grad for param in self.params]
        self._clip_gradients(grads)
        rule, hyper, n = self.rule, self.hyper._replace(iteration=self.iter), len(self.params)
        for i, (param, g) in enumerate(zip(self.params, grads)):
            w, history = param.tensor, self.history[i::n]
            if g is None and param.frozen and rule.frozen_skips_gradient:
                # lr_mult 0 (frozen): Caffe's zero diff (+ decay) times local_rate 0 adds nothing to the history;
                # SGD's v = momentum * v, w -= v leaves w bit-identical while its history is zero
                rule.update(w, None, history, 0.0, hyper)
                continue
            if g is None:
                g = torch.zeros_like(w)
            if p.iter_size > 1:
                g.mul_(float(np.float32(1.0 / p.iter_size)))
            local_decay = float(np.float32(np.float32(p.weight_decay) * np.float32(param.decay_mult)))
            if local_decay:
                g.add_(w if p.regularization_type == "L2" else torch.sign(w), alpha=local_decay)
            local_rate = float(np.float32(np.float32(rate) * np.float32(param.lr_mult)))
            rule.update(w, g, history, local_rate, hyper)
            param.tensor.grad = None
        self.iter += 1

    def _clip_gradients(self, grads: list[torch.Tensor | None]) -> None:
        """SGDSolver::ClipGradients: scale all gradients when their global L2 norm exceeds clip_gradients."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        norm = math.sqrt(sum(float(torch.sum(g.double() * g.double())) for g in grads if g is not None))
        if norm > clip:
            factor = float(np.float32(clip / norm))
            glog.info("sgd_solver.cpp:96", f"Gradient clipping: scaling down gradients (L2 norm "
                      f"{glog.fmt(norm)} > {glog.fmt(clip)}) by scale factor {glog.fmt(factor)}")
            for g in grads:
                if g is not None:
                    g.mul_(factor)

    # ------------------------------------------------------------ testing

    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    @torch.no_grad()
    def test(self, index: int) -> None:
        glog.info("solver.cpp:347", f"Iteration {self.iter}, Testing net (#{index})")
        test = self.test_nets[index]
        self._share_weights(test.net)
        scores: list[torch.Tensor] | None = None
        loss = 0.0
        for _ in range(self.param.test_iter[index]):
            if self.actions.take_snapshot_request():
                self.snapshot()
            if self.actions.stop:
                self.requested_early_exit = True
                break
            with self._autocast():
                blobs = test.net.forward(test.next_batch())
                if self.param.test_compute_loss:
                    loss += float(test.net.loss(blobs))
            values = [blobs[name].detach().float().reshape(-1).double() for name in test.net.outputs]
            scores = values if scores is None else [s + v for s, v in zip(scores, values)]
        if self.requested_early_exit:
            glog.info("solver.cpp:396", "Test interrupted.")
            return
        n = self.param.test_iter[index]
        if self.param.test_compute_loss:
            glog.info("solver.cpp:401", f"Test loss: {glog.fmt(loss / n)}")
        means = {name: (total / n).tolist() for name, total in zip(test.net.outputs, scores or [])}
        glog.net_outputs("solver.cpp:414", "    Test net output", means, test.net.loss_weights)

    def _share_weights(self, test_net) -> None:
        """Net::ShareTrainedLayersWith: the test net uses the train net's parameters of same-named layers."""
        trained = {(p.layer_name, p.index): p.tensor for p in self.params}
        for p in test_net.params:
            source = trained.get((p.layer_name, p.index))
            if source is not None and source.shape == p.tensor.shape:
                p.tensor.data = source.data

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ snapshots

    def _snapshot_filename(self, extension: str) -> str:
        return snapshot_name(self.param.snapshot_prefix, self.iter, extension)

    def _last_good(self) -> str:
        return (f"The last good snapshot is {self.last_snapshot}." if self.last_snapshot
                else "No snapshot was written in this run.")

    def snapshot(self) -> None:
        """Write <prefix>_iter_<N>.caffemodel, .solverstate (Caffe's) and .solverstate.rng (ours), atomically."""
        self._read_losses()   # a diverged run is named at its loss, and not snapshotted
        if self._snapshot_iter == self.iter:
            return
        if not self.param.HasField("snapshot_prefix"):
            glog.warning("solver.cpp:460", "No snapshot_prefix in the solver: no snapshot written.")
            return
        with torch.no_grad():
            bad = [f"{p.layer_name}[{p.index}]" for p in self.params if not bool(torch.isfinite(p.tensor).all())]
        if bad:
            raise Diverged(f"Iteration {self.iter}: weights of {', '.join(bad)} are NaN or infinite; no snapshot is "
                           f"written. {self._last_good()} Lower base_lr and train again.")
        model_file = self._snapshot_filename(".caffemodel")
        glog.info("solver.cpp:464", f"Snapshotting to binary proto file {model_file}")
        written = []
        try:
            protoio.write_binary(model_file, self.net.to_caffemodel())
            written.append(model_file)
            state = pb.SolverState()
            state.iter = self.iter
            state.learned_net = model_file
            state.current_step = self.current_step
            for v in self.history:
                state.history.append(protoio.array_to_blob(v.detach().float().cpu().numpy()))
            state_file = self._snapshot_filename(".solverstate")
            glog.info("sgd_solver.cpp:285", f"Snapshotting solver state to binary proto file {state_file}")
            protoio.write_binary(state_file, state)
            written.append(state_file)
            protoio.atomic_write_bytes(state_file + ".rng", json.dumps(self._rng_state()).encode())
        except OSError as err:   # a full or read-only disk: no half snapshot that a resume would pick up
            for path in written:
                Path(path).unlink(missing_ok=True)
            raise SolverError(f"Iteration {self.iter}: cannot write the snapshot {err.filename}: {err.strerror}. "
                              f"{self._last_good()} Free space (or make the folder writable) and train again; "
                              f"it resumes from the last good snapshot.") from None
        self.last_snapshot = model_file
        self._snapshot_iter = self.iter

    def _rng_state(self) -> dict:
        def encode(t: torch.Tensor) -> str:
            return base64.b64encode(t.cpu().numpy().tobytes()).decode()
        dropout = {key: encode(g.get_state()) for key, g in self.net.dropout_generators.items()}
        state = {"iter": self.iter, "torch": encode(torch.get_rng_state()), "dropout": dropout,
                 "train": [s.state_dict() for s in self.train.sources],
                 "test": [[s.state_dict() for s in t.sources] for t in self.test_nets]}
        if self.device.type == "cuda":
            state["cuda"] = encode(torch.cuda.get_rng_state(self.device))
        return state

    def _set_rng_state(self, state: dict) -> None:
        def decode(text: str) -> torch.Tensor:
            return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())
        torch.set_rng_state(decode(state["torch"]))
        for key, value in state.get("dropout", {}).items():
            self.net.dropout_generator(torch.device(key)).set_state(decode(value))
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(decode(state["cuda"]), self.device)
        for source, s in zip(self.train.sources, state["train"]):
            source.load_state_dict(s)
        for net, states in zip(self.test_nets, state["test"]):
            for source, s in zip(net.sources, states):
                source.load_state_dict(s)

    def restore(self, state_file: str) -> None:
        """SGDSolver::RestoreSolverStateFromBinaryProto, plus our .rng side file when present."""
        glog.info("solver.cpp:296", f"Restoring previous solver status from {state_file}")
        if state_file.endswith(".h5"):
            raise SolverError(f"{state_file}: HDF5 solver states are not supported by the engine; use a "
                              f".solverstate (BINARYPROTO).")
        state = protoio.read_binary(state_file, pb.SolverState)
        self.iter = state.iter
        if state.HasField("learned_net"):
            learned = Path(state.learned_net)
            if not learned.exists() and (Path(state_file).parent / learned.name).exists():
                learned = Path(state_file).parent / learned.name  # a snapshot moved with its directory
            if not learned.exists():
                raise SolverError(f"{state_file}: its weights {state.learned_net} are missing (paths are relative "
                                  f"to the directory caffe runs in); restore them or resume from another snapshot.")
            self.net.load_caffemodel(str(learned))
        self.current_step = state.current_step
        if len(state.history) != len(self.history):
            raise SolverError(f"{state_file}: Incorrect length of history blobs ({len(state.history)} in the file, "
                              f"{len(self.history)} for {len(self.params)} learnable parameters in the net and "
                              f"solver type {self.param.type}): the solver state is of another net or solver type.")
        glog.info("sgd_solver.cpp:318", "SGDSolver: restoring history")
        with torch.no_grad():
            for i, (blob, v) in enumerate(zip(state.history, self.history)):
                array = protoio.blob_to_array(blob)
                if array.size != v.numel():
                    p = self.params[i % len(self.params)]
                    raise SolverError(f"{state_file}: history of {p.layer_name}[{p.index}] has {array.size} values, "
                                      f"the net's parameter {tuple(v.shape)}: the solver state is of another net.")
                v.copy_(torch.from_numpy(array.reshape(tuple(v.shape))))
        rng_file = Path(state_file + ".rng")
        if rng_file.exists():
            try:
                self._set_rng_state(json.loads(rng_file.read_bytes()))
            except (ValueError, KeyError, TypeError, RuntimeError) as err:   # binascii.Error is a ValueError
                raise SolverError(f"{rng_file}: not the random generators' state this engine wrote ({err!r}); "
                                  f"it is truncated or damaged: delete it to resume with a fresh data order, or "
                                  f"resume from another snapshot.") from None
        else:
            glog.warning("solver.cpp:296", f"{rng_file} not found: data order and random crops restart from the "
                         f"beginning, so the resumed run is statistically, not bitwise, equal to an uninterrupted one.")
        self._snapshot_iter = self.iter
        self.last_snapshot = state.learned_net

    def close(self) -> None:
        for net in [self.train, *self.test_nets]:
            if net is not None:
                net.close()


def report_copied(net, path: str, copied: list[str]) -> None:
    """Say how many of the net's layers with weights a weights file filled (Caffe's CopyTrainedLayersFrom says
    nothing, so a file that fills none, empty or of another net, trains or tests a net from scratch unnoticed)."""
    weighted, copied = net.weighted_layers(), set(copied)
    filled = [layer for layer in weighted if layer in copied]
    if filled:
        glog.info(glog.here(), f"Copied {len(filled)} of the {len(weighted)} layers with weights of net {net.name} "
                               f"from {path}: {', '.join(filled)}")
    else:
        glog.warning(glog.here(), f"NONE of the {len(weighted)} layers with weights of net {net.name} was copied "
                                  f"from {path}: no layer there has the name of one here, so the net starts from "
                                  f"scratch (as in Caffe). Check -weights: is it this net's own or base net's?")
