"""Net and solver upgrades (V0/V1 -> current) as Caffe's upgrade_proto.cpp, FilterNet, and building a Net from
every 2014 net of the release."""
import re

import pytest

from convnet_transfer.training.engine import EngineError, Net, filter_net, read_net_file, upgrade_net
from convnet_transfer.formats.protoio import ProtoFileError, parse_text, pb, read_solver, upgrade_solver

SHAPES = {"data": (2, 3, 227, 227), "label": (2,)}


def net_from(text: str) -> pb.NetParameter:
    return parse_text(text, pb.NetParameter())


def reference_nets(reference):
    paths = sorted((reference / "results").glob("*/imagenet_*.prototxt"))
    return [p for p in paths if "solver" not in p.name]


def test_every_reference_net_upgrades_and_builds(reference):
    """All 170 net directories: train and val nets upgrade from V0 and build (meta device: shapes only)."""
    paths = reference_nets(reference)
    assert len(paths) == 340
    for path in paths:
        net_param = read_net_file(path)
        assert len(net_param.layers) == 0 and len(net_param.layer) > 0, path
        phase = "TEST" if path.name == "imagenet_val.prototxt" else "TRAIN"
        net = Net(net_param, phase, {"data": (256, 3, 227, 227), "label": (256,)}, meta=True)
        assert net.blob_shapes["pool5"] == (256, 256, 6, 6), path
        assert [p.tensor.shape[0] for p in net.params if p.index == 0] == [96, 256, 384, 384, 256, 4096, 4096, 1000]
        assert [lp.type for lp in net.data_layers] == ["Data"]
        if phase == "TEST":
            assert net.outputs == ["accuracy"]
            assert net.loss_weights == {}
        else:
            assert net.outputs == []       # the V0 loss layer has no top: Caffe's anonymous top is no output
            assert list(net.loss_weights.values()) == [1.0]


def test_transfer_nets_freeze_and_rename_the_first_n_layers(reference):
    """transferXY_1_n: the first n layers keep their base-net names and have lr_mult 0 (frozen); the others are
    renamed `-new` and learn (lr 1/2, decay 1/0). transfer-ft: the same names, all learning."""
    for path in sorted((reference / "results").glob("transfer*_1_*/imagenet_train.prototxt")):
        n = int(path.parent.name.rsplit("_", 1)[1])
        fine_tuned = path.parent.name.startswith("transfer-ft")
        net = Net(read_net_file(path), "TRAIN", SHAPES, meta=True)
        weights = [p for p in net.params if p.index == 0]
        biases = [p for p in net.params if p.index == 1]
        for i, (w, b) in enumerate(zip(weights, biases)):
            copied = i < n
            assert w.layer_name.endswith("-new") != copied, (path, w.layer_name)
            if copied and not fine_tuned:
                assert (w.lr_mult, b.lr_mult, w.decay_mult, b.decay_mult) == (0, 0, 0, 0)
                assert not w.tensor.requires_grad and w.frozen
            else:
                assert (w.lr_mult, b.lr_mult, w.decay_mult, b.decay_mult) == (1, 2, 1, 0), (path, w.layer_name)
                assert w.tensor.requires_grad


def test_v0_padding_layers_fold_into_the_next_convolution(reference):
    net = read_net_file(reference / "results" / "netbase" / "imagenet_train.prototxt")
    layers = {lp.name: lp for lp in net.layer}
    assert not any(name.startswith("pad") for name in layers)
    assert list(layers["conv2"].bottom) == ["norm1"] and list(layers["conv2"].convolution_param.pad) == [2]
    assert list(layers["conv3"].bottom) == ["norm2"] and list(layers["conv3"].convolution_param.pad) == [1]
    assert list(layers["conv5"].bottom) == ["conv4"] and list(layers["conv5"].convolution_param.pad) == [1]
    data = layers["data"]
    assert data.type == "Data" and data.data_param.batch_size == 256
    assert data.data_param.source == "imagenet_train_leveldb"
    assert data.transform_param.crop_size == 227 and data.transform_param.mirror
    assert data.transform_param.mean_file == "imagenet_mean.binaryproto"
    conv1 = layers["conv1"]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert conv1.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert layers["pool1"].pooling_param.pool == pb.PoolingParameter.MAX
    assert layers["norm1"].lrn_param.alpha == pytest.approx(1e-4) and layers["norm1"].lrn_param.local_size == 5
    assert layers["drop6"].dropout_param.dropout_ratio == pytest.approx(0.5)
    assert layers["loss"].type == "SoftmaxWithLoss"
    # the padded CaffeNet has the same shapes as the one with `pad:` in the conv layers
    built = Net(net, "TRAIN", SHAPES, meta=True)
    assert built.blob_shapes["conv2"] == (2, 256, 27, 27) and built.blob_shapes["pool5"] == (2, 256, 6, 6)


def test_reference_solvers_upgrade(reference):
    for path in sorted((reference / "results").glob("*/imagenet_solver.prototxt")):
        solver = read_solver(path)
        assert solver.train_net == "imagenet_train.prototxt" and list(solver.test_net) == ["imagenet_val.prototxt"]
        assert solver.solver_mode == pb.SolverParameter.GPU      # written `solver_mode: 1`
        assert solver.type == "SGD" and solver.lr_policy == "step"


def test_solver_spellings_and_solver_type():
    current = parse_text('net: "n.prototxt" solver_mode: CPU type: "Nesterov" base_lr: 0.1', pb.SolverParameter())
    assert upgrade_solver(current).type == "Nesterov"
    old = parse_text('train_net: "t.prototxt" test_net: "v.prototxt" solver_mode: 0 solver_type: ADAGRAD',
                     pb.SolverParameter())
    upgraded = upgrade_solver(old, "/some/dir/my_solver.prototxt")
    assert upgraded.type == "AdaGrad" and not upgraded.HasField("solver_type")
    assert upgraded.solver_mode == pb.SolverParameter.CPU
    assert upgraded.snapshot_prefix == "/some/dir/my_solver"          # defaulted from the file name, as Caffe
    both = parse_text('solver_type: SGD type: "SGD"', pb.SolverParameter())
    with pytest.raises(ProtoFileError, match="solver_type"):
        upgrade_solver(both)


def test_snapshot_prefix_directory(tmp_path):
    solver = parse_text(f'snapshot_prefix: "{tmp_path}"', pb.SolverParameter())
    assert upgrade_solver(solver, tmp_path / "solver.prototxt").snapshot_prefix == str(tmp_path / "solver")


V1_NET = """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
         weight_decay: 0 convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 5 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" loss_weight: 2
         include { phase: TRAIN } }
"""


def test_v1_upgrade_types_multipliers_and_inputs():
    net = upgrade_net(net_from(V1_NET))
    assert [lp.type for lp in net.layer] == ["Input", "Convolution", "ReLU", "InnerProduct", "SoftmaxWithLoss"]
    assert net.layer[0].name == "input" and list(net.layer[0].top) == ["data"]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[2].relu_param.negative_slope == pytest.approx(0.1)
    assert list(net.layer[4].loss_weight) == [2] and net.layer[4].include[0].phase == pb.TRAIN
    assert not net.input and not net.input_dim and not net.layers


def test_v1_data_transformation_fields_move_to_transform_param():
    net = upgrade_net(net_from('layers { name: "d" type: DATA top: "data" top: "label" data_param { source: "x" '
                               'batch_size: 4 mean_file: "m.binaryproto" crop_size: 5 mirror: true scale: 0.5 } }'))
    data = net.layer[0]
    assert data.type == "Data" and data.data_param.source == "x" and data.data_param.batch_size == 4
    assert not data.data_param.HasField("mean_file") and not data.data_param.HasField("crop_size")
    t = data.transform_param
    assert (t.mean_file, t.crop_size, t.mirror, t.scale) == ("m.binaryproto", 5, True, 0.5)


def test_mixed_formats_and_misplaced_v0_fields_are_errors():
    with pytest.raises(EngineError, match="both"):
        upgrade_net(net_from('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }'))
    with pytest.raises(EngineError, match="group"):
        upgrade_net(net_from('layers { layer { name: "p" type: "pool" group: 2 kernelsize: 2 } }'))
    with pytest.raises(EngineError, match="unknown layer type"):
        upgrade_net(net_from('layers { layer { name: "p" type: "wavelet" } }'))


def test_v0_layer_fields_map_as_caffe():
    net = upgrade_net(net_from("""
        input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
        layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
        layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad1" top: "p" }
        layers { layer { name: "norm" type: "lrn" local_size: 3 alpha: 2 beta: 0.5 k: 2 } bottom: "p" top: "n" }
        layers { layer { name: "ip" type: "innerproduct" num_output: 3 biasterm: false
                         weight_filler { type: "xavier" } } bottom: "n" top: "ip" }
    """))
    pool = net.layer[1]
    assert pool.type == "Pooling" and list(pool.bottom) == ["data"]
    assert (pool.pooling_param.pool, pool.pooling_param.pad, pool.pooling_param.kernel_size,
            pool.pooling_param.stride) == (pb.PoolingParameter.AVE, 1, 3, 2)
    lrn = net.layer[2].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (3, 2, 0.5, 2)
    ip = net.layer[3].inner_product_param
    assert ip.num_output == 3 and not ip.bias_term and ip.weight_filler.type == "xavier"
    built = Net(net, "TEST", meta=True)
    assert built.blob_shapes["p"] == (1, 3, 5, 5)


def test_filter_net_rules():
    net = net_from("""
        layer { name: "a" type: "ReLU" include { phase: TRAIN } }
        layer { name: "b" type: "ReLU" include { phase: TEST } }
        layer { name: "c" type: "ReLU" exclude { phase: TEST } }
        layer { name: "d" type: "ReLU" include { min_level: 1 } }
        layer { name: "e" type: "ReLU" include { stage: "deploy" } }
        layer { name: "f" type: "ReLU" include { not_stage: "deploy" } }
        layer { name: "g" type: "ReLU" include { phase: TRAIN max_level: 0 } include { stage: "x" } }
    """)
    names = lambda n: [lp.name for lp in n.layer]  # noqa: E731
    assert names(filter_net(net, "TRAIN")) == ["a", "c", "f", "g"]
    assert names(filter_net(net, "TEST")) == ["b", "f"]
    assert names(filter_net(net, "TEST", level=1, stages=("deploy",))) == ["b", "d", "e"]
    assert names(filter_net(net, "TEST", stages=("x",))) == ["b", "f", "g"]
    own_state = net_from('state { stage: "deploy" level: 1 }')
    own_state.MergeFrom(net)
    assert names(filter_net(own_state, "TEST")) == ["b", "d", "e"]            # the net's own state counts
    assert names(filter_net(own_state, "TEST", level=0)) == ["b", "e"]
    with pytest.raises(EngineError, match="not both"):
        filter_net(net_from('layer { name: "z" include { phase: TRAIN } exclude { phase: TEST } }'), "TRAIN")


def test_unsupported_layers_and_fields_name_themselves():
    base = 'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } '
    with pytest.raises(EngineError, match=r"layer 'bn'.*'BatchNormalization' is not supported"):   # not Caffe's
        Net(net_from(base + 'layer { name: "bn" type: "BatchNormalization" bottom: "data" top: "bn" }'), "TEST")
    with pytest.raises(EngineError, match=r"layer 'p'.*Padding implemented only for average and max pooling"):
        Net(net_from(base + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                            'pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 } }'), "TEST")
    with pytest.raises(EngineError, match=r"layer 'c'.*axis 4 out of range"):
        Net(net_from(base + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                            'convolution_param { num_output: 2 kernel_size: 3 axis: 4 } }'), "TEST")
    with pytest.raises(EngineError, match=r"layer 'r'.*'pooling_param'"):
        Net(net_from(base + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" '
                            'pooling_param { kernel_size: 2 } }'), "TEST")
    with pytest.raises(EngineError, match=r"filler type 'nosuch'"):
        Net(net_from(base + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param '
                            '{ num_output: 2 kernel_size: 3 weight_filler { type: "nosuch" } } }'), "TEST")
    with pytest.raises(EngineError, match="Unknown bottom blob 'nope'"):
        Net(net_from(base + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }'), "TEST")
    with pytest.raises(EngineError, match="input_shapes"):
        Net(net_from('layer { name: "d" type: "Data" top: "data" top: "label" }'), "TRAIN")
    # a field at its default value is fine
    Net(net_from(base + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" '
                        'relu_param { negative_slope: 0 engine: CAFFE } }'), "TEST")


def test_reference_val_net_differs_from_train_only_where_expected(reference):
    train = read_net_file(reference / "results" / "half0A" / "imagenet_train.prototxt")
    val = read_net_file(reference / "results" / "half0A" / "imagenet_val.prototxt")
    assert [lp.name for lp in train.layer][:-1] == [lp.name for lp in val.layer][:-2]
    assert [lp.type for lp in val.layer][-2:] == ["Softmax", "Accuracy"]
    assert re.search("val", val.layer[0].data_param.source)


def _distinct(paths):
    seen, out = set(), []
    for path in paths:
        text = path.read_text()
        if text not in seen:
            seen.add(text)
            out.append(path)
    return out


def test_upgrade_equals_caffes_own_upgrade_tools(real_caffe, reference, tmp_path):
    """Caffe's upgrade_net_proto_text / upgrade_solver_proto_text on every distinct 2014 net and solver give
    exactly the messages our upgrade gives."""
    import subprocess

    from convnet_transfer.formats import protoio
    env = real_caffe.env()
    results = reference / "results"
    for tool, paths, ours, read in (
            ("upgrade_net_proto_text", _distinct(reference_nets(reference)), read_net_file, protoio.read_net),
            ("upgrade_solver_proto_text", _distinct(sorted(results.glob("*/imagenet_solver.prototxt"))),
             protoio.read_solver, lambda p: protoio.read_text(p, pb.SolverParameter))):
        assert paths
        for path in paths:
            out = tmp_path / "upgraded.prototxt"
            subprocess.run([str(real_caffe.tool(tool)), str(path), str(out)], env=env, check=True,
                           capture_output=True, timeout=60)
            assert read(out) == ours(path), path


V0_FIELDS_NET = """
input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "d" type: "data" source: "db" meanfile: "m" batchsize: 5 cropsize: 3 mirror: true scale: 0.1
                 rand_skip: 4 } top: "x" top: "label" }
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad1" top: "p" }
layers { layer { name: "norm" type: "lrn" local_size: 3 alpha: 2 beta: 0.5 k: 2 } bottom: "p" top: "n" }
layers { layer { name: "c" type: "conv" num_output: 4 group: 2 kernelsize: 1 stride: 1 biasterm: false
                 blobs_lr: 3 weight_decay: 0 weight_filler { type: "xavier" } } bottom: "n" top: "c" }
layers { layer { name: "ip" type: "innerproduct" num_output: 3 bias_filler { type: "constant" value: 1 } }
         bottom: "c" top: "ip" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 } bottom: "ip" top: "ip" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "ip" bottom: "ip" top: "cat" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "ip" bottom: "label" }
"""


@pytest.mark.parametrize("text", [V1_NET, V0_FIELDS_NET], ids=["v1", "v0"])
def test_upgrade_of_other_fields_equals_caffes(real_caffe, tmp_path, text):
    import subprocess

    from convnet_transfer.formats import protoio
    source = tmp_path / "net.prototxt"
    source.write_text(text)
    out = tmp_path / "upgraded.prototxt"
    subprocess.run([str(real_caffe.tool("upgrade_net_proto_text")), str(source), str(out)], env=real_caffe.env(),
                   check=True, capture_output=True, timeout=60)
    assert protoio.read_net(out) == read_net_file(source)
