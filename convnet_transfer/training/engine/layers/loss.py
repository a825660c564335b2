"""Loss layers and Accuracy."""
from __future__ import annotations

import math

import torch

from convnet_transfer.formats.protoio import pb
from ..errors import EngineError
from .base import FLT_MIN, Layer, canonical_axis, register


def _outer_inner(shape, axis):
    return math.prod(shape[:axis]), math.prod(shape[axis + 1:])


def _check_labels(label: torch.Tensor, classes: int, valid, where: str) -> None:
    """Labels must be integers in 0..classes-1 (Caffe only DCHECKs this). Checked on the CPU only: on a GPU the
    check would stall the pipeline (torch's own device assert fires instead)."""
    if label.device.type != "cpu" or label.numel() == 0:
        return
    checked = label if valid is None else label[valid]
    if not checked.numel():
        return
    low, high = int(checked.min()), int(checked.max())
    if low < 0 or high >= classes:
        raise EngineError(f"{where}: label value {high if high >= classes else low} is outside 0..{classes - 1} "
                          f"(the net predicts {classes} classes): the database's labels do not fit this net; "
                          f"check the split's files.txt and num_output")


@register
class SoftmaxWithLossLayer(Layer):
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.
    normalizer: VALID (default) = number of non-ignored labels; FULL = outer*inner; BATCH_SIZE = outer; NONE = 1;
    at least 1. The legacy `normalize: false` means BATCH_SIZE, `normalize: true` VALID. Gradient:
    (prob - onehot) / normalizer at non-ignored positions, 0 elsewhere (the FLT_MIN clamp does not cut it)."""
    type_name = "SoftmaxWithLoss"
    allowed = {"softmax_param": {"axis", "engine"}, "loss_param": {"ignore_label", "normalization", "normalize"}}
    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        shape = bottom_shapes[0]
        self.axis = canonical_axis(lp.softmax_param.axis, len(shape), self.where)
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: number of labels must match number of predictions; e.g., if softmax "
                              f"axis == 1 and prediction shape is (N, C, H, W), label count (number of labels) "
                              f"must be N*H*W, with integer values in {{0, 1, ..., C-1}}")
        lparam = lp.loss_param
        self.ignore_label = lparam.ignore_label if lparam.HasField("ignore_label") else None
        if not lparam.HasField("normalization") and lparam.HasField("normalize"):
            self.normalization = pb.LossParameter.VALID if lparam.normalize else pb.LossParameter.BATCH_SIZE
        else:
            self.normalization = lparam.normalization
        self.top_shapes = [()] + ([tuple(shape)] if len(lp.top) > 1 else [])

    def forward(self, x, label):
        axis = self.axis
        log_prob = torch.log_softmax(x, dim=axis)
        classes = x.shape[axis]
        moved = log_prob.movedim(axis, -1).reshape(-1, classes)
        label = label.reshape(-1).long()
        if self.ignore_label is not None:
            valid = label != self.ignore_label
            safe = torch.where(valid, label, torch.zeros_like(label))
        else:
            valid = None
            safe = label
        _check_labels(safe, classes, valid, self.where)
        picked = moved.gather(1, safe.unsqueeze(1)).squeeze(1)
        # forward value log(max(prob, FLT_MIN)); the gradient stays that of log_softmax, as in Caffe
        floor = math.log(FLT_MIN)
        picked = picked + (picked.clamp(min=floor) - picked).detach()
        if valid is not None:
            picked = picked * valid
            count = valid.sum()
        else:
            count = None
        loss = -picked.sum() / self._normalizer(x.shape, count)
        tops = [loss]
        if len(self.lp.top) > 1:
            tops.append(torch.softmax(x, dim=axis))
        return tops

    def _normalizer(self, shape, valid_count):
        outer, inner = _outer_inner(shape, self.axis)
        mode = self.normalization
        if mode == pb.LossParameter.FULL:
            value = outer * inner
        elif mode == pb.LossParameter.VALID:
            value = outer * inner if valid_count is None else valid_count
        elif mode == pb.LossParameter.BATCH_SIZE:
            value = outer
        else:
            value = 1
        if isinstance(value, torch.Tensor):
            return value.clamp(min=1).to(torch.float32)
        return float(max(1, value))


@register
class AccuracyLayer(Layer):
    """Fraction of non-ignored positions whose true class is among the top_k scores. Ties count against:
    a position is correct when fewer than top_k other classes score >= the true class (accuracy_layer.cpp).
    Optional second top: per-class accuracy."""
    type_name = "Accuracy"
    allowed = {"accuracy_param": {"top_k", "axis", "ignore_label"}}
    n_bottoms = (2, 2)
    n_tops = (1, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.accuracy_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.where)
        self.top_k = int(p.top_k)
        if self.top_k > shape[self.axis]:
            raise EngineError(f"{self.where}: top_k {self.top_k} must be at most the number of classes "
                              f"{shape[self.axis]}")
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: number of labels must match number of predictions")
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.top_shapes = [()] + ([(shape[self.axis],)] if len(lp.top) > 1 else [])

    @torch.no_grad()
    def forward(self, x, label):
        classes = x.shape[self.axis]
        scores = x.movedim(self.axis, -1).reshape(-1, classes)
        label = label.reshape(-1).long()
        valid = label != self.ignore_label if self.ignore_label is not None else torch.ones_like(label, dtype=bool)
        safe = torch.where(valid, label, torch.zeros_like(label))
        _check_labels(safe, classes, valid, self.where)
        true_score = scores.gather(1, safe.unsqueeze(1))
        better = (scores >= true_score).sum(dim=1) - 1
        correct = (better < self.top_k) & valid
        count = valid.sum()
        accuracy = torch.where(count > 0, correct.sum().float() / count.clamp(min=1).float(),
                               torch.zeros((), device=x.device))
        tops = [accuracy]
        if len(self.lp.top) > 1:
            per_class_n = torch.zeros(classes, device=x.device).index_add_(0, safe[valid],
                                                                           torch.ones_like(safe[valid], dtype=torch.float32))
            per_class_ok = torch.zeros(classes, device=x.device).index_add_(0, safe[correct],
                                                                            torch.ones_like(safe[correct], dtype=torch.float32))
            tops.append(torch.where(per_class_n > 0, per_class_ok / per_class_n.clamp(min=1), per_class_n))
        return tops
