"""The loss layers' refusals: where Caffe aborts (a CHECK in LayerSetUp/Reshape, a LOG(FATAL) in Backward), the
engine raises one EngineError naming the layer, at build time. Their numbers are checked against real Caffe by the
per-layer goldens (tests/golden/layers/cases_loss.py)."""
import re

import numpy as np
import pytest
import torch

from convnet_transfer.formats.protoio import array_to_blob, parse_text, pb, write_binary
from convnet_transfer.training.engine import EngineError, Net


def build(layer: str, shapes: dict) -> Net:
    text = "".join(f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())
    return Net(parse_text(text + layer, pb.NetParameter()), "TRAIN")


XL = {"x": (4, 5), "label": (4,)}


@pytest.mark.parametrize("layer,shapes,message", [
    ('type: "SoftmaxWithLoss" bottom: "x" bottom: "label" propagate_down: true propagate_down: true', XL,
     "SoftmaxWithLoss Layer cannot backpropagate to label inputs"),
    ('type: "HingeLoss" bottom: "x" bottom: "label" propagate_down: false propagate_down: true', XL,
     "cannot backpropagate to label inputs"),
    ('type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" propagate_down: true propagate_down: false '
     'propagate_down: true', {**XL, "H": (5, 5)}, "cannot backpropagate to infogain inputs"),
    ('type: "InfogainLoss" bottom: "x" bottom: "label" loss_param { normalize: false }', XL,
     'normalize is deprecated. use "normalization"'),
    ('type: "InfogainLoss" bottom: "x" bottom: "label"', XL, "Infogain matrix source must be specified"),
    ('type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H"', {**XL, "H": (4, 4)}, "not 5x5"),
    ('type: "InfogainLoss" bottom: "x" bottom: "label" infogain_loss_param { source: "/nonexistent/H.binaryproto" }',
     XL, "infogain_loss_param.source: /nonexistent/H.binaryproto: cannot read"),
    ('type: "EuclideanLoss" bottom: "x" bottom: "y"', {"x": (4, 5), "y": (4, 6)}, "Inputs must have the same dimension"),
    ('type: "EuclideanLoss" bottom: "x" bottom: "y"', {"x": (4, 5), "y": (3, 5)}, "should have the same first dimension"),
    ('type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "y"', {"x": (4, 5), "y": (4, 4)}, "must have the same count"),
    ('type: "MultinomialLogisticLoss" bottom: "x" bottom: "label"', {"x": (4, 5), "label": (4, 2)},
     "one label per item"),
    ('type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y"', {"a": (4, 3, 2, 1), "b": (4, 3, 2, 1), "y": (4,)},
     "(N, C, 1, 1)"),
    ('type: "EuclideanLoss" bottom: "x" bottom: "y" loss_param { normalize: true }', {"x": (4, 5), "y": (4, 5)},
     "field 'loss_param' is not used by a EuclideanLoss layer"),
    ('type: "Accuracy" bottom: "x" bottom: "label" accuracy_param { top_k: 6 }', XL, "top_k must be less than"),
])
def test_caffes_aborts_are_engine_errors(layer, shapes, message):
    with pytest.raises(EngineError, match=f"layer 'l' .*{re.escape(message)}"):
        build(f'layer {{ name: "l" {layer} top: "loss" }}', shapes)


def test_infogain_source_is_read_with_caffes_blob_format(tmp_path, monkeypatch):
    """A relative `source` is read from the current directory, as Caffe; H weights -log(prob) per (label, class)."""
    matrix = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    write_binary(tmp_path / "H.binaryproto", array_to_blob(matrix))
    monkeypatch.chdir(tmp_path)
    net = build('layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" '
                'infogain_loss_param { source: "H.binaryproto" } }', {"x": (2, 3), "label": (2,)})
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]])
    label = torch.tensor([2.0, 0.0])
    log_prob = torch.log_softmax(x, dim=1)
    expected = -(torch.from_numpy(matrix)[[2, 0]] * log_prob).sum() / 2
    assert net({"x": x, "label": label})["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_infogain_loss_probabilities_top_passes_no_gradient():
    """Caffe's Backward reads only the loss top's diff; a diff on the probabilities is ignored."""
    net = build('layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" '
                'top: "prob" loss_weight: 1 loss_weight: 0 }', {"x": (2, 3), "label": (2,), "H": (3, 3)})
    x = torch.randn(2, 3, requires_grad=True)
    blobs = net({"x": x, "label": torch.tensor([0.0, 2.0]), "H": torch.eye(3)})
    assert not blobs["prob"].requires_grad and net.loss_weights == {"loss": 1.0}
    assert torch.allclose(blobs["prob"], torch.softmax(x.detach(), dim=1))


def test_a_second_loss_top_without_loss_weights_is_refused_as_caffe_does():
    """LossLayer::LayerSetUp gives a loss layer without loss_weight one (1), and Layer::SetLossWeights then
    checks one per top: pycaffe aborts "loss_weight must be unspecified or specified once per top blob"."""
    with pytest.raises(EngineError, match=r"layer 'l' .*loss_weight must be unspecified or specified once per top "
                                          r"blob \(2 tops, 1 loss_weight; a loss layer without loss_weight has one"):
        build('layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" '
              'top: "prob" }', {"x": (2, 3), "label": (2,), "H": (3, 3)})


@pytest.mark.parametrize("weights", ["", "loss_weight: 1 loss_weight: 0"])
def test_softmax_with_loss_refuses_a_second_top_as_caffe_cannot_build_one(weights):
    """SoftmaxWithLoss declares a second top, but its inner Softmax layer copies the loss_weight values (one per
    outer top) for its one top: pycaffe aborts with or without them ("top.size() == num_loss_weights (2 vs. 1)",
    without; "(1 vs. 2)" with both given), so no golden can hold one."""
    with pytest.raises(EngineError, match=r"layer 'l' .*loss_weight must be unspecified or specified once per top"):
        build('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
              f'{weights} }}', {"x": (2, 3), "label": (2,)})
