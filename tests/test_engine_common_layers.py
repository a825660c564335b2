"""The common layers where Caffe refuses: the backward passes Caffe aborts (ArgMax has none; Embed, Filter and
BatchReindex cannot backpropagate to their index bottom) are an EngineError naming the layer, and real Caffe
aborts on the same nets; nets Caffe rejects at setup are an EngineError naming the layer and the field.
(What the layers compute, forward and backward, is tested against Caffe by the goldens: cases_common.py.)"""
import subprocess
import sys
import textwrap

import pytest
import torch

from convnet_transfer.formats.protoio import parse_text, pb
from convnet_transfer.training.engine import EngineError, Net

# (net text after an Input of x (4, 3) and one of i (4,) holding 0..2, the message of Caffe's abort)
REFUSED_BACKWARD = {
    "argmax": ('layer { name: "argmax" type: "ArgMax" bottom: "x" top: "y" loss_weight: 1 }', "Not Implemented Yet"),
    "embed": ('layer { name: "embed" type: "Embed" bottom: "i" top: "y" loss_weight: 1 '
              'embed_param { num_output: 2 input_dim: 3 } }', "Can't backpropagate to EmbedLayer input"),
    "filter": ('layer { name: "filter" type: "Filter" bottom: "x" bottom: "i" top: "y" loss_weight: 1 }',
               "cannot backpropagate to filter index inputs"),
    "batch_reindex": ('layer { name: "reindex" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" loss_weight: 1 }',
                      "Cannot backprop to index"),
}
INPUTS = ('name: "refused" force_backward: true\n'
          'layer { name: "in_x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }\n'
          'layer { name: "in_i" type: "Input" top: "i" input_param { shape { dim: 4 } } }\n')


def _inputs():
    return {"x": torch.randn(4, 3), "i": torch.tensor([2.0, 0.0, 1.0, 1.0])}


@pytest.mark.parametrize("name", sorted(REFUSED_BACKWARD))
def test_backward_caffe_aborts_is_an_engine_error(name):
    text, caffe_words = REFUSED_BACKWARD[name]
    net = Net(parse_text(INPUTS + text, pb.NetParameter()), "TRAIN", seed=0)
    blobs = net(_inputs())
    loss = net.loss(blobs)
    with pytest.raises(EngineError, match=f"layer '{net.layers[0].name}'.*{caffe_words}"):
        loss.backward()


@pytest.mark.parametrize("name", sorted(set(REFUSED_BACKWARD) - {"argmax"}))
def test_index_bottom_without_gradient_runs(name):
    """propagate_down: false on the index bottom (Caffe's way round its abort): the backward runs."""
    text, _ = REFUSED_BACKWARD[name]
    text = text.replace("loss_weight: 1", "loss_weight: 1 " + ("propagate_down: false" if name == "embed" else
                                                              "propagate_down: true propagate_down: false"))
    net = Net(parse_text(INPUTS.replace("force_backward: true", "") + text, pb.NetParameter()), "TRAIN", seed=0)
    inputs = _inputs()
    inputs["x"].requires_grad_(True)
    net.loss(net(inputs)).backward()
    if name != "embed":
        assert inputs["x"].grad is not None and inputs["x"].grad.abs().sum() > 0


def test_real_caffe_aborts_on_the_same_nets(real_caffe, tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import caffe
        caffe.set_mode_cpu()
        net = caffe.Net(sys.argv[1], caffe.TRAIN)
        net.blobs["x"].data[...] = np.random.randn(4, 3)
        net.blobs["i"].data[...] = [2, 0, 1, 1]
        net.forward()
        net.backward()
        print("BACKWARD DONE")
    """)
    for name, (text, caffe_words) in sorted(REFUSED_BACKWARD.items()):
        path = tmp_path / f"{name}.prototxt"
        path.write_text(INPUTS + text)
        result = subprocess.run([sys.executable, "-c", script, str(path)], env=real_caffe.env(), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode != 0 and "BACKWARD DONE" not in result.stdout, name
        assert caffe_words in result.stderr, (name, result.stderr[-2000:])


BAD_NETS = {
    'type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: -1 } }': "does not allow in-place",
    'type: "Flatten" bottom: "x" top: "x"': "does not allow in-place",
    'type: "Split" bottom: "x" top: "x" top: "y"': "does not allow in-place",
    'type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }': "multiple -1",
    'type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 5 dim: -1 } }': "must be divisible",
    'type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 0 dim: 0 } }': "no corresponding bottom",
    'type: "Slice" bottom: "x" top: "y" top: "z" slice_param { slice_point: 2 slice_point: 3 }': "one fewer",
    'type: "Slice" bottom: "x" top: "y" top: "z" slice_param { slice_point: 4 }': "must increase",
    'type: "Slice" bottom: "x" top: "y" top: "z" slice_param { axis: 0 slice_dim: 0 }': "not both",
    'type: "Slice" bottom: "x" top: "y" top: "z"': "evenly divide",
    'type: "Concat" bottom: "x" bottom: "i" top: "y"': "same #axes",
    'type: "Tile" bottom: "x" top: "y"': "tiles must be specified",
    'type: "Tile" bottom: "x" top: "y" tile_param { tiles: 0 }': "tiles must be positive",
    'type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { operation: MAX coeff: 1 coeff: 2 }':
        "coefficients for summation",
    'type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { coeff: 1 }': "one coefficient per bottom",
    'type: "Eltwise" bottom: "x" bottom: "i" top: "y"': "one shape",
    'type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { stable_prod_grad: false }': "for the PROD",
    'type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 4 }': "top_k",
    'type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 top_k: 4 }': "top_k",
    'type: "Embed" bottom: "i" top: "y" embed_param { input_dim: 3 }': "num_output must be positive",
    'type: "Filter" bottom: "x" bottom: "i" top: "y" top: "z"': "one top per bottom",
    'type: "Filter" bottom: "x" bottom: "x" top: "y"': "Selector blob dimensions must be singletons",
    'type: "BatchReindex" bottom: "x" bottom: "x" top: "y"': "must be 1-D",
    'type: "Reduction" bottom: "x" top: "y" reduction_param { operation: SUM } slice_param { axis: 0 }':
        "field 'slice_param' is not used",
}


@pytest.mark.parametrize("text", sorted(BAD_NETS))
def test_setup_errors_name_the_layer(text):
    net = parse_text(INPUTS + f'layer {{ name: "bad" {text} }}', pb.NetParameter())
    with pytest.raises(EngineError, match=f"layer 'bad'.*{BAD_NETS[text]}"):
        Net(net, "TRAIN", seed=0)


def test_batch_reindex_index_out_of_range():
    net = Net(parse_text(INPUTS + REFUSED_BACKWARD["batch_reindex"][0], pb.NetParameter()), "TRAIN", seed=0)
    for bad, words in ((4.0, "greater than batch size"), (-1.0, "negative")):
        inputs = _inputs()
        inputs["i"][1] = bad
        with pytest.raises(EngineError, match=f"layer 'reindex'.*{words}"):
            net(inputs)


def test_embed_index_out_of_range_or_fractional():
    text = REFUSED_BACKWARD["embed"][0].replace("loss_weight: 1 ", "")
    net = Net(parse_text(INPUTS + text, pb.NetParameter()), "TEST", seed=0)
    for bad, words in ((3.0, "outside 0..2"), (1.5, "must be integers")):
        inputs = _inputs()
        inputs["i"][0] = bad
        with pytest.raises(EngineError, match=f"layer 'embed'.*{words}"):
            net(inputs)
