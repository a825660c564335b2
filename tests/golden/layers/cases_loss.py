"""Golden cases: the loss layers and Accuracy, as Caffe's test_<x>_loss_layer.cpp and test_accuracy_layer.cpp vary
them (normalization modes, ignore_label, axis, the second tops, legacy versions, loss_weight scaling the gradient).
(Caffe cannot build a SoftmaxWithLoss with a second top, so none is here: tests/test_engine_layers.py checks it
against a port of Caffe's loop; InfogainLoss's second top, whose diff Caffe ignores, is here.)

Labels come from Input blobs of "labels:K" (or "int:a:b") kind, which get no diff on either side; Caffe's
force_backward leaves them alone too. Accuracy and an InfogainLoss with its matrix as a bottom abort in Caffe
under force_backward, so those cases run without it (an InnerProduct in front then carries the gradient check).
loss_infogain_H.binaryproto (here) is a 5x5 infogain matrix (uniform 0.1..2), the BlobProto an InfogainLoss
`source` names.
"""
from layer_goldens import Case


def loss(name, type_, bottoms, inputs, param="", tops=("loss",), **kw):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    top = " ".join(f'top: "{t}"' for t in tops)
    return Case(name, f'layer {{ name: "{name}" type: "{type_}" {bottom} {top} {param} }}', inputs, **kw)


def softmax_loss(name, param="", x=(2, 5, 2, 3), label=(2, 1, 2, 3), classes=5, **kw):
    return loss(name, "SoftmaxWithLoss", ["x", "label"],
                {"x": (x, "uniform:-4:4"), "label": (label, f"labels:{classes}")},
                param, **kw)


def sigmoid_ce(name, param="", target="uniform:0:1", shape=(4, 5), **kw):
    return loss(name, "SigmoidCrossEntropyLoss", ["x", "t"], {"x": (shape, "normal"), "t": (shape, target)},
                param, **kw)


def contrastive(name, param=""):
    return loss(name, "ContrastiveLoss", ["a", "b", "y"], {"a": ((10, 2, 1, 1), "uniform:-1:1"),
                                                          "b": ((10, 2, 1, 1), "uniform:-1:1"),
                                                          "y": ((10, 1, 1, 1), "binary")}, param)


def accuracy(name, param, x=(6, 5), label=(6,), kind="normal", tops=("accuracy",)):
    return loss(name, "Accuracy", ["x", "label"], {"x": (x, kind), "label": (label, "labels:5")},
                f"accuracy_param {{ {param} }}", tops, force_backward=False)


HINGE = {"x": ((6, 5), "uniform:-2:2"), "label": ((6,), "labels:5")}
INFOGAIN = {"x": ((2, 2, 5, 2), "uniform:-0.5:2"), "label": ((2, 2, 1, 2), "labels:5")}
INFOGAIN_MATRIX_BOTTOM = """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "score" inner_product_param { num_output: 5 } }
layer { name: "infogain" type: "InfogainLoss" bottom: "score" bottom: "label" bottom: "H" top: "loss"
        loss_param { ignore_label: 2 } }
"""

CASES = [
    loss("euclidean", "EuclideanLoss", ["a", "b"], {"a": ((4, 5), "normal"), "b": ((4, 5), "normal")}),
    loss("euclidean_weight_reshaped", "EuclideanLoss", ["a", "b"],
         {"a": ((4, 3, 2), "normal"), "b": ((4, 6, 1, 1), "normal")}, "loss_weight: 2.5"),
    loss("hinge_l1", "HingeLoss", ["x", "label"], HINGE),
    loss("hinge_l2", "HingeLoss", ["x", "label"], HINGE, "hinge_loss_param { norm: L2 }"),
    loss("hinge_l2_4d", "HingeLoss", ["x", "label"], {"x": ((6, 5, 1, 1), "uniform:-2:2"),
                                                      "label": ((6, 1, 1, 1), "labels:5")},
         "hinge_loss_param { norm: L2 } loss_weight: 0.5"),
    loss("infogain_source_axis_prob", "InfogainLoss", ["x", "label"], INFOGAIN,
         'infogain_loss_param { source: "loss_infogain_H.binaryproto" axis: 2 } loss_weight: 1 loss_weight: 0',
         tops=("loss", "prob")),
    loss("infogain_ignore_none", "InfogainLoss", ["x", "label"], {"x": ((6, 5), "uniform:-0.5:2"),
                                                                  "label": ((6,), "labels:5")},
         'infogain_loss_param { source: "loss_infogain_H.binaryproto" } '
         'loss_param { ignore_label: 1 normalization: NONE }'),
    # logits far apart: some probabilities below kLOG_THRESHOLD, clamped in the loss but not in the gradient
    loss("infogain_threshold", "InfogainLoss", ["x", "label"], {"x": ((6, 5), "uniform:-60:60"),
                                                                "label": ((6,), "labels:5")},
         'infogain_loss_param { source: "loss_infogain_H.binaryproto" }'),
    Case("infogain_matrix_bottom", INFOGAIN_MATRIX_BOTTOM, {"x": ((4, 6), "normal"), "label": ((4,), "labels:5"),
                                                            "H": ((5, 5), "positive")}, force_backward=False),
    loss("multinomial_logistic", "MultinomialLogisticLoss", ["p", "label"],
         {"p": ((6, 5), "uniform:0.01:1"), "label": ((6,), "labels:5")}),
    # probabilities about half of them below kLOG_THRESHOLD = 1e-20: Caffe's backward divides by the clamped value
    loss("multinomial_logistic_threshold", "MultinomialLogisticLoss", ["p", "label"],
         {"p": ((6, 5, 1, 1), "uniform:0:2e-20"), "label": ((6, 1, 1, 1), "labels:5")}),
    sigmoid_ce("sigmoid_ce"),
    sigmoid_ce("sigmoid_ce_ignore", "loss_param { ignore_label: -1 }", "int:-1:2"),
    sigmoid_ce("sigmoid_ce_ignore_valid", "loss_param { ignore_label: -1 normalization: VALID }", "int:-1:2"),
    sigmoid_ce("sigmoid_ce_normalize_legacy", "loss_param { ignore_label: -1 normalize: true }", "int:-1:2"),
    sigmoid_ce("sigmoid_ce_full_4d", "loss_param { normalization: FULL } loss_weight: 3", shape=(2, 3, 2, 2)),
    sigmoid_ce("sigmoid_ce_none", "loss_param { normalization: NONE }"),
    contrastive("contrastive"),
    contrastive("contrastive_margin", "contrastive_loss_param { margin: 1.3 }"),
    contrastive("contrastive_legacy", "contrastive_loss_param { legacy_version: true }"),
    contrastive("contrastive_legacy_margin", "contrastive_loss_param { legacy_version: true margin: 2 }"),
    softmax_loss("softmax_loss"),
    softmax_loss("softmax_loss_ignore_unnormalized", "loss_param { ignore_label: 0 normalize: false }"),
    softmax_loss("softmax_loss_ignore_valid", "loss_param { ignore_label: 3 }"),
    softmax_loss("softmax_loss_full", "loss_param { ignore_label: 1 normalization: FULL }"),
    softmax_loss("softmax_loss_none_weight", "loss_param { normalization: NONE } loss_weight: 0.25"),
    softmax_loss("softmax_loss_batch_size", "loss_param { normalization: BATCH_SIZE }"),
    # probabilities below FLT_MIN (logits up to 200 apart): the loss is clamped, the gradient is not
    loss("softmax_loss_flt_min", "SoftmaxWithLoss", ["x", "label"], {"x": ((8, 5), "uniform:-100:100"),
                                                                     "label": ((8,), "labels:5")}),
    softmax_loss("softmax_loss_axis", "softmax_param { axis: -1 }", x=(2, 3, 4), label=(2, 3), classes=4),
    accuracy("accuracy", ""),
    accuracy("accuracy_top_k_per_class", "top_k: 2", tops=("accuracy", "per_class")),
    accuracy("accuracy_axis_ignore_per_class", "axis: 1 ignore_label: 1", x=(2, 5, 3), label=(2, 3),
             tops=("accuracy", "per_class")),
    # integer scores: ties with the true class count against it
    accuracy("accuracy_ties_top_k", "top_k: 2", x=(8, 5), label=(8,), kind="int:0:3", tops=("accuracy", "per_class")),
]
