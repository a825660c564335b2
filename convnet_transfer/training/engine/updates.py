"""Caffe's solver types as update rules (src/caffe/solvers/*_solver.cpp, CPU path), keyed by Caffe's type name.

The solver (solver.py) does what all of Caffe's solvers share (SGDSolver::ApplyUpdate): the learning rate,
gradient clipping, `g *= 1/iter_size`, `g += local_decay * w` (L2, or its sign for L1). Then, per learnable
parameter, one rule here computes the update from g and `local_rate = rate * lr_mult`, changes the parameter's
history and subtracts the update from w (Net::Update). All in float32, in Caffe's order of operations.

History: Caffe's `history_` holds one blob per parameter, two sets for AdaDelta and Adam (the first N then the N
second ones); `.solverstate` stores them in that order, and so does `SGDSolver.history`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from convnet_transfer.formats import caffe_pb2 as pb

__all__ = ["Hyper", "UpdateRule", "UPDATE_RULES", "solver_type_problem"]


def f32(x: float) -> float:
    """x rounded to a float32 value (Caffe's Dtype)."""
    return float(np.float32(x))


class Hyper(NamedTuple):
    """The solver's constants as Caffe's float32 values, and the iteration of this update (Adam's t - 1)."""
    momentum: float
    momentum2: float
    delta: float
    rms_decay: float
    iteration: int

    @classmethod
    def of(cls, param: pb.SolverParameter, iteration: int) -> "Hyper":
        return cls(f32(param.momentum), f32(param.momentum2), f32(param.delta), f32(param.rms_decay), iteration)


Update = Callable[[torch.Tensor, "torch.Tensor | None", list, float, Hyper], None]


class UpdateRule(NamedTuple):
    """One of Caffe's solver types. `update(w, g, history, local_rate, hyper)` changes w and its history blobs in
    place; g is None only for a frozen parameter (lr_mult 0) of a rule whose history sees no gradient at rate 0
    (`frozen_skips_gradient`), so that a frozen layer costs nothing. `keeps`: what the history holds (docs)."""
    history_sets: int
    keeps: str
    update: Update
    frozen_skips_gradient: bool = False
    check: Callable[[pb.SolverParameter], "str | None"] = lambda param: None

    def new_history(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Caffe's history_, zeros: one blob per parameter, then a second set after the first (AdaDelta, Adam)."""
        return [torch.zeros_like(w.detach()) for _ in range(self.history_sets) for w in params]


def sgd(w, g, history, local_rate, hyper) -> None:
    """sgd_solver.cpp: v = momentum * v + local_rate * g; w -= v."""
    v, = history
    v.mul_(hyper.momentum)
    if g is not None:
        v.add_(g, alpha=local_rate)
    w.sub_(v)


def nesterov(w, g, history, local_rate, hyper) -> None:
    """nesterov_solver.cpp: v' = momentum * v + local_rate * g; w -= (1 + momentum) * v' - momentum * v."""
    v, = history
    step = v.clone()
    v.mul_(hyper.momentum)
    if g is not None:
        v.add_(g, alpha=local_rate)
    step.mul_(-hyper.momentum).add_(v, alpha=f32(1.0 + hyper.momentum))
    w.sub_(step)


def _scaled_by_root(g, mean_square, delta, local_rate) -> torch.Tensor:
    """local_rate * g / (sqrt(mean_square) + delta), as AdaGrad and RMSProp compute it."""
    return torch.div(g, mean_square.sqrt().add_(delta)).mul_(local_rate)


def adagrad(w, g, history, local_rate, hyper) -> None:
    """adagrad_solver.cpp: h += g^2; w -= local_rate * g / (sqrt(h) + delta)."""
    h, = history
    h.add_(torch.square(g))
    w.sub_(_scaled_by_root(g, h, hyper.delta, local_rate))


def rmsprop(w, g, history, local_rate, hyper) -> None:
    """rmsprop_solver.cpp: h = rms_decay * h + (1 - rms_decay) * g^2; w -= local_rate * g / (sqrt(h) + delta)."""
    h, = history
    h.mul_(hyper.rms_decay).add_(torch.square(g), alpha=f32(1.0 - hyper.rms_decay))
    w.sub_(_scaled_by_root(g, h, hyper.delta, local_rate))


def adadelta(w, g, history, local_rate, hyper) -> None:
    """adadelta_solver.cpp: h = m h + (1-m) g^2; u = g sqrt((delta + hu) / (delta + h)); hu = m hu + (1-m) u^2;
    w -= local_rate * u (local_rate from base_lr and the lr policy, as in Caffe: base_lr 1 is the paper's)."""
    h, hu = history
    m, rest = hyper.momentum, f32(1.0 - hyper.momentum)
    h.mul_(m).add_(torch.square(g), alpha=rest)
    u = torch.div(hu + hyper.delta, h + hyper.delta).sqrt_().mul_(g)
    hu.mul_(m).add_(torch.square(u), alpha=rest)
    w.sub_(u.mul_(local_rate))


def adam(w, g, history, local_rate, hyper) -> None:
    """adam_solver.cpp: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= local_rate * correction * m /
    (sqrt(v) + delta), correction = sqrt(1 - b2^t) / (1 - b1^t) with t = iter + 1 (computed in double)."""
    m, v = history
    b1, b2, t = hyper.momentum, hyper.momentum2, hyper.iteration + 1
    correction = f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
    m.mul_(b1).add_(g, alpha=f32(1.0 - b1))
    v.mul_(b2).add_(g * g, alpha=f32(1.0 - b2))
    w.sub_(torch.div(m, v.sqrt().add_(hyper.delta)).mul_(f32(local_rate * correction)))


def _no_momentum(name: str):
    def check(param: pb.SolverParameter) -> str | None:
        return f"Momentum cannot be used with {name}." if param.momentum != 0 else None
    return check


def _rmsprop_check(param: pb.SolverParameter) -> str | None:
    return _no_momentum("RMSProp")(param) or (None if 0 <= param.rms_decay < 1 else
                                              "rms_decay should lie between 0 and 1.")


UPDATE_RULES: dict[str, UpdateRule] = {
    "SGD": UpdateRule(1, "momentum v (the last update)", sgd, frozen_skips_gradient=True),
    "Nesterov": UpdateRule(1, "momentum v (the last update before the look-ahead)", nesterov,
                           frozen_skips_gradient=True),
    "AdaGrad": UpdateRule(1, "sum of squared gradients", adagrad, check=_no_momentum("AdaGrad")),
    "RMSProp": UpdateRule(1, "running mean of squared gradients (rms_decay)", rmsprop, check=_rmsprop_check),
    "AdaDelta": UpdateRule(2, "running means (momentum) of squared gradients, then of squared updates", adadelta),
    "Adam": UpdateRule(2, "first moment m (momentum), then second moment v (momentum2)", adam),
}


def solver_type_problem(param: pb.SolverParameter) -> str | None:
    """Why Caffe would refuse the solver's type and its constants (SolverRegistry, constructor_sanity_check), or
    None."""
    rule = UPDATE_RULES.get(param.type)
    if rule is None:
        return f"Unknown solver type: {param.type} (known types: {', '.join(sorted(UPDATE_RULES))})"
    return rule.check(param)
