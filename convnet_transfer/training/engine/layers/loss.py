"""Loss layers and Accuracy (Caffe's loss_layer.cpp and its subclasses, accuracy_layer.cpp).

Every loss layer outputs a scalar; the Net gives its top 0 loss weight 1 unless `loss_weight` says otherwise, and
scales the gradient by it. Where Caffe's Backward is not the derivative of its Forward (the log clamps, the
contrastive distance's +1e-4, the second top of probabilities whose diff Caffe ignores), the forward is written so
that autograd gives Caffe's backward. Labels (and targets, infogain matrices) get no gradient: Caffe refuses to
backpropagate to them, so an explicit `propagate_down: true` for one is an EngineError, as Caffe aborts there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convnet_transfer.formats.protoio import ProtoFileError, blob_to_array, pb, read_binary
from ..errors import EngineError
from .base import FLT_MIN, Layer, canonical_axis, layer_where, register

K_LOG_THRESHOLD = 1e-20     # loss_layer.hpp's kLOG_THRESHOLD (InfogainLoss, MultinomialLogisticLoss)
Mode = pb.LossParameter


def _outer_inner(shape, axis):
    return math.prod(shape[:axis]), math.prod(shape[axis + 1:])


def _legacy_dims(shape, where: str) -> tuple[int, int, int, int]:
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes (missing axes are 1)."""
    if len(shape) > 4:
        raise EngineError(f"{where}: needs blobs of at most 4 axes, got shape {tuple(shape)}")
    return tuple(shape) + (1,) * (4 - len(shape))


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


def _valid_labels(label: torch.Tensor, ignore_label: int | None):
    """Labels as Caffe reads them (static_cast<int>: truncated), flattened; the mask of non-ignored ones (None
    when nothing is ignored); the labels with ignored ones set to 0 (safe to index with)."""
    label = label.detach().reshape(-1).long()
    if ignore_label is None:
        return label, None, label
    valid = label != ignore_label
    return label, valid, torch.where(valid, label, torch.zeros_like(label))


def _floor_keeping_grad(values: torch.Tensor, floor: float) -> torch.Tensor:
    """max(values, floor) in value, with the gradient of `values` itself: Caffe clamps before its logs in Forward
    but not in Backward."""
    return values + (values.clamp(min=floor) - values).detach()


def _normalization_mode(lparam: pb.LossParameter, default: int) -> int:
    """`normalization` when set, else the legacy `normalize` (true: VALID, false: BATCH_SIZE), else `default`."""
    if lparam.HasField("normalization"):
        return lparam.normalization
    if lparam.HasField("normalize"):
        return Mode.VALID if lparam.normalize else Mode.BATCH_SIZE
    return default


def _normalizer(mode: int, outer: int, inner: int, valid_count: torch.Tensor | None):
    """Caffe's get_normalizer: FULL outer*inner, VALID the non-ignored count, BATCH_SIZE outer, NONE 1; at
    least 1."""
    if mode == Mode.VALID and valid_count is not None:
        return valid_count.clamp(min=1).to(torch.float32)
    value = {Mode.FULL: outer * inner, Mode.VALID: outer * inner, Mode.BATCH_SIZE: outer}.get(mode, 1)
    return float(max(1, value))


class LossLayer(Layer):
    """Caffe's LossLayer: bottoms of the same first dimension, a scalar top. `refused` maps the bottoms Caffe's
    Backward refuses to the word of its error ("label", "infogain")."""
    n_bottoms = (2, 2)
    refused = {1: "label"}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if tuple(bottom_shapes[0])[:1] != tuple(bottom_shapes[1])[:1]:
            raise EngineError(f"{self.where}: The data and label should have the same first dimension "
                              f"(shapes {tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])})")
        for index, what in self.refused.items():
            if index < len(lp.propagate_down) and lp.propagate_down[index]:
                raise EngineError(f"{self.where}: {self.type_name} Layer cannot backpropagate to {what} inputs "
                                  f"(propagate_down: true for bottom {index})")
        self.top_shapes = [()]


class SoftmaxLossBase(LossLayer):
    """What SoftmaxWithLoss and InfogainLoss share: a softmax over `axis`, one label per position outside it,
    `ignore_label`, a normalization, an optional second top of the probabilities (whose diff Caffe ignores; it
    needs `loss_weight` once per top, e.g. 1 and 0, as LossLayer::LayerSetUp gives a layer without any one)."""
    n_tops = (1, 2)

    def setup_softmax(self, axis: int, shapes, label_word: str) -> None:
        shape = shapes[0]
        self.axis = canonical_axis(axis, len(shape), self.where)
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(shapes[1]):
            raise EngineError(f"{self.where}: Number of labels must match number of predictions; e.g., if "
                              f"{label_word} axis == 1 and prediction shape is (N, C, H, W), label count (number "
                              f"of labels) must be N*H*W, with integer values in {{0, 1, ..., C-1}}")
        lparam = self.lp.loss_param
        self.ignore_label = lparam.ignore_label if lparam.HasField("ignore_label") else None
        self.top_shapes = [()] + ([tuple(shape)] if len(self.lp.top) > 1 else [])

    def log_probs(self, x, label):
        """The log-probabilities (positions x classes), the labels (ignored ones set to 0), the mask of
        non-ignored positions (None when nothing is ignored) and its count (or None)."""
        classes = x.shape[self.axis]
        log_prob = torch.log_softmax(x, dim=self.axis).movedim(self.axis, -1).reshape(-1, classes)
        _, valid, safe = _valid_labels(label, self.ignore_label)
        _check_labels(safe, classes, valid, self.where)
        count = None if valid is None else valid.sum()
        return log_prob, safe, valid, count

    def finish(self, x, per_position, valid, count):
        """The tops: the loss (sum over non-ignored positions / normalizer), and the probabilities if asked."""
        if valid is not None:
            per_position = per_position * valid
        outer, inner = _outer_inner(x.shape, self.axis)     # this forward's shape (Caffe reshapes each time)
        tops = [per_position.sum() / _normalizer(self.normalization, outer, inner, count)]
        if len(self.lp.top) > 1:
            tops.append(torch.softmax(x.detach(), dim=self.axis))
        return tops


@register
class SoftmaxWithLossLayer(SoftmaxLossBase):
    """loss = -sum over non-ignored positions of log(max(prob[label], FLT_MIN)) / normalizer.
    normalizer: VALID (default) = number of non-ignored labels; FULL = outer*inner; BATCH_SIZE = outer; NONE = 1;
    at least 1. The legacy `normalize: false` means BATCH_SIZE, `normalize: true` VALID. Gradient:
    (prob - onehot) / normalizer at non-ignored positions, 0 elsewhere (the FLT_MIN clamp does not cut it).
    A second top (the probabilities) is refused, as Caffe cannot build one: it declares it, but its inner Softmax
    layer gets this layer's loss_weight values, one per top, for its single top, and aborts "loss_weight must be
    unspecified or specified once per top blob" (with none given, the outer check aborts likewise)."""
    type_name = "SoftmaxWithLoss"
    allowed = {"softmax_param": {"axis", "engine"}, "loss_param": {"ignore_label", "normalization", "normalize"}}

    def __init__(self, lp, bottom_shapes, ctx):
        if len(lp.top) > 1:
            raise EngineError(f"{layer_where(lp)}: a second top (the probabilities) cannot be built in Caffe "
                              f"(its inner Softmax aborts: loss_weight must be unspecified or specified once per top "
                              f"blob); take them from a Softmax layer on the same bottom")
        super().__init__(lp, bottom_shapes, ctx)
        self.setup_softmax(lp.softmax_param.axis, bottom_shapes, "softmax")
        self.normalization = _normalization_mode(lp.loss_param, Mode.VALID)

    def forward(self, x, label):
        log_prob, safe, valid, count = self.log_probs(x, label)
        picked = _floor_keeping_grad(log_prob.gather(1, safe.unsqueeze(1)).squeeze(1), math.log(FLT_MIN))
        return self.finish(x, -picked, valid, count)


@register
class InfogainLossLayer(SoftmaxLossBase):
    """loss = -sum over non-ignored positions of sum_l H[label, l] * log(max(prob_l, 1e-20)) / normalizer, H the
    infogain matrix (classes x classes): a third bottom, or the BlobProto file `infogain_loss_param.source`
    (relative to the current directory, as Caffe). Gradient prob * sum_l H[label, l] - H[label, :] (the clamp
    does not cut it); none to the labels or H. `source` is not read when H is a bottom (as in Caffe).
    `normalization` as SoftmaxWithLoss (default VALID); the legacy `normalize` is refused, as Caffe does."""
    type_name = "InfogainLoss"
    allowed = {"infogain_loss_param": {"source", "axis"}, "softmax_param": {"engine"},
               "loss_param": {"ignore_label", "normalization", "normalize"}}
    n_bottoms = (2, 3)
    refused = {1: "label", 2: "infogain"}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        param = lp.infogain_loss_param
        if lp.loss_param.HasField("normalize"):
            raise EngineError(f'{self.where}: loss_param.normalize is deprecated. use "normalization"')
        self.normalization = lp.loss_param.normalization
        self.setup_softmax(param.axis, bottom_shapes, "infogain")
        classes = bottom_shapes[0][self.axis]
        if len(bottom_shapes) == 3:
            h_count = math.prod(bottom_shapes[2])
            self.infogain = None
        else:
            self.register_buffer("infogain", self._read_source(param, classes, ctx.meta), persistent=False)
            h_count = self.infogain.numel()
        if h_count != classes * classes:
            raise EngineError(f"{self.where}: the infogain matrix has {h_count} values, not {classes}x{classes} "
                              f"(the number of classes at axis {self.axis})")

    def _read_source(self, param, classes: int, meta: bool) -> torch.Tensor:
        if not param.HasField("source"):
            raise EngineError(f"{self.where}: Infogain matrix source must be specified "
                              f"(infogain_loss_param.source, or the matrix as a third bottom)")
        if meta:
            return torch.empty((classes, classes), device="meta")
        try:
            values = blob_to_array(read_binary(param.source, pb.BlobProto))
        except ProtoFileError as err:
            raise EngineError(f"{self.where}: infogain_loss_param.source: {err}") from None
        return torch.from_numpy(values.reshape(-1).copy())

    def forward(self, x, label, infogain=None):
        log_prob, safe, valid, count = self.log_probs(x, label)
        classes = log_prob.shape[1]
        matrix = (self.infogain if infogain is None else infogain).detach().reshape(classes, classes)
        log_prob = _floor_keeping_grad(log_prob, math.log(K_LOG_THRESHOLD))
        return self.finish(x, -(matrix[safe] * log_prob).sum(dim=1), valid, count)


@register
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / num / 2; gradients (a - b) / num to a and -(a - b) / num to b (both bottoms)."""
    type_name = "EuclideanLoss"
    refused = {}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if math.prod(bottom_shapes[0][1:]) != math.prod(bottom_shapes[1][1:]):
            raise EngineError(f"{self.where}: Inputs must have the same dimension (shapes {tuple(bottom_shapes[0])} "
                              f"and {tuple(bottom_shapes[1])})")

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return [(diff * diff).sum() / a.shape[0] / 2]


@register
class HingeLossLayer(LossLayer):
    """t = max(0, 1 + s * x) per (item, class), s = -1 at the item's label, +1 elsewhere (x seen as num x dim);
    loss = sum(t) / num (norm L1, default) or sum(t^2) / num (L2). Labels: the first num values of bottom 1."""
    type_name = "HingeLoss"
    allowed = {"hinge_loss_param": {"norm"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        self.squared = lp.hinge_loss_param.norm == pb.HingeLossParameter.L2

    def forward(self, x, label):
        num = x.shape[0]
        scores = x.reshape(num, -1)
        label, _, _ = _valid_labels(label, None)
        label = label[:num]
        _check_labels(label, scores.shape[1], None, self.where)
        sign = 1 - 2 * F.one_hot(label, scores.shape[1]).to(scores.dtype)
        margin = torch.relu(1 + sign * scores)
        return [(margin * margin if self.squared else margin).sum() / num]


@register
class MultinomialLogisticLossLayer(LossLayer):
    """loss = -sum over items of log(max(p[label], 1e-20)) / num, bottom 0 being probabilities (num x dim) and
    bottom 1 one label per item; gradient -1 / (num * max(p[label], 1e-20)) at the label (Caffe's Backward
    divides by the clamped value: the clamp does not cut the gradient)."""
    type_name = "MultinomialLogisticLoss"

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if _legacy_dims(bottom_shapes[1], self.where)[1:] != (1, 1, 1):
            raise EngineError(f"{self.where}: the label bottom must hold one label per item (shape (N, 1, 1, 1)), "
                              f"got {tuple(bottom_shapes[1])}")

    def forward(self, prob, label):
        num = prob.shape[0]
        prob = prob.reshape(num, -1)
        label, _, _ = _valid_labels(label, None)
        _check_labels(label, prob.shape[1], None, self.where)
        picked = _floor_keeping_grad(prob.gather(1, label.unsqueeze(1)).squeeze(1), K_LOG_THRESHOLD)
        return [-torch.log(picked).sum() / num]


@register
class SigmoidCrossEntropyLossLayer(LossLayer):
    """loss = sum over non-ignored elements of -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) / normalizer,
    computed stably; bottom 1 the targets t (same count as x), an element ignored where int(t) == ignore_label.
    Normalizer as SoftmaxWithLoss's with outer = num, inner = count / num, but the default (neither
    `normalization` nor `normalize` set) is BATCH_SIZE. Gradient (sigmoid(x) - t) / normalizer, 0 where ignored."""
    type_name = "SigmoidCrossEntropyLoss"
    allowed = {"loss_param": {"ignore_label", "normalization", "normalize"}}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        if math.prod(bottom_shapes[0]) != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count "
                              f"(shapes {tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])})")
        lparam = lp.loss_param
        self.ignore_label = lparam.ignore_label if lparam.HasField("ignore_label") else None
        self.normalization = _normalization_mode(lparam, Mode.BATCH_SIZE)

    def forward(self, x, target):
        target = target.detach().reshape(x.shape)
        # torch's gradient of this loss is sigmoid(x) - t, Caffe's (not the derivative of |x| in its formula)
        per_element = F.binary_cross_entropy_with_logits(x, target, reduction="none").reshape(-1)
        _, valid, _ = _valid_labels(target, self.ignore_label)
        count = None
        if valid is not None:
            per_element = torch.where(valid, per_element, torch.zeros_like(per_element))
            count = valid.sum()
        num = x.shape[0]
        normalizer = _normalizer(self.normalization, num, x.numel() // max(num, 1), count)
        return [per_element.sum() / normalizer]


@register
class ContrastiveLossLayer(LossLayer):
    """Bottoms a, b (num x channels, 1 x 1) and y (num, similar when int(y) != 0); d = ||a - b||.
    loss = sum over items of (y ? d^2 : max(margin - d, 0)^2) / num / 2, or with `legacy_version`
    (y ? d^2 : max(margin - d^2, 0)) / num / 2. Gradients to a and b (none to y); for dissimilar pairs Caffe
    divides by d + 1e-4, not d (so does the engine)."""
    type_name = "ContrastiveLoss"
    allowed = {"contrastive_loss_param": {"margin", "legacy_version"}}
    n_bottoms = (3, 3)
    refused = {}

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        a, b, y = (_legacy_dims(shape, self.where) for shape in bottom_shapes)
        if a[1] != b[1] or a[2:] != (1, 1) or b[2:] != (1, 1) or y[1:] != (1, 1, 1) or y[0] != a[0]:
            raise EngineError(f"{self.where}: needs bottoms a, b of shape (N, C, 1, 1) and y of shape (N, 1, 1, 1), "
                              f"got {', '.join(str(tuple(s)) for s in bottom_shapes)}")
        param = lp.contrastive_loss_param
        self.margin = float(param.margin)
        self.legacy = bool(param.legacy_version)

    def forward(self, a, b, y):
        num = a.shape[0]
        diff = (a - b.reshape(a.shape)).reshape(num, -1)
        dist_sq = (diff * diff).sum(dim=1)
        similar = y.detach().reshape(-1).long() != 0
        if self.legacy:
            dissimilar = torch.relu(self.margin - dist_sq)
        else:
            dist = dist_sq.detach().sqrt()
            # value d, gradient diff / (d + 1e-4): Caffe's Backward
            surrogate = dist_sq / (2 * (dist + 1e-4))
            dissimilar = torch.relu(self.margin - (dist + surrogate - surrogate.detach())) ** 2
        return [torch.where(similar, dist_sq, dissimilar).sum() / num / 2]


@register
class AccuracyLayer(Layer):
    """Fraction of non-ignored positions whose true class is among the top_k scores. Ties count against:
    a position is correct when fewer than top_k other classes score >= the true class (accuracy_layer.cpp).
    Optional second top: per-class accuracy (0 for a class with no non-ignored position). No gradient."""
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
            raise EngineError(f"{self.where}: top_k must be less than or equal to the number of classes "
                              f"({self.top_k} > {shape[self.axis]})")
        outer, inner = _outer_inner(shape, self.axis)
        if outer * inner != math.prod(bottom_shapes[1]):
            raise EngineError(f"{self.where}: Number of labels must match number of predictions")
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.top_shapes = [()] + ([(shape[self.axis],)] if len(lp.top) > 1 else [])

    @torch.no_grad()
    def forward(self, x, label):
        classes = x.shape[self.axis]
        scores = x.movedim(self.axis, -1).reshape(-1, classes)
        _, valid, safe = _valid_labels(label, self.ignore_label)
        if valid is None:
            valid = torch.ones_like(safe, dtype=torch.bool)
        _check_labels(safe, classes, valid, self.where)
        better = (scores >= scores.gather(1, safe.unsqueeze(1))).sum(dim=1) - 1
        correct = (better < self.top_k) & valid
        tops = [correct.sum().float() / valid.sum().clamp(min=1).float()]
        if len(self.lp.top) > 1:
            per_class_n = torch.zeros(classes, device=x.device).index_add_(0, safe, valid.float())
            per_class_ok = torch.zeros(classes, device=x.device).index_add_(0, safe, correct.float())
            tops.append(per_class_ok / per_class_n.clamp(min=1))
        return tops
