"""Golden cases: normalisation layers, as Caffe's test_batch_norm_layer.cpp, test_scale_layer.cpp,
test_bias_layer.cpp and test_mvn_layer.cpp vary them (plus the phases and use_global_stats both ways, the moving
averages a TRAIN forward writes into BatchNorm's blobs (after/), and a zero scale factor)."""
from layer_goldens import Case

X = ((2, 3, 4, 5), "normal")
BN_BLOBS = {"bn": ["normal", "positive", "positive"]}   # mean sums, variance sums, scale factor


def layer(name, type_, bottoms, param="", top="y"):
    bottoms = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {bottoms} top: "{top}" {param} }}'


def bn(name, param="", shape=(2, 3, 4, 5), phase="TRAIN", kinds=None, top="y"):
    return Case(name, layer("bn", "BatchNorm", ["x"], f"batch_norm_param {{ {param} }}" if param else "", top),
                {"x": (shape, "normal")}, phase=phase, param_kinds={"bn": kinds or BN_BLOBS["bn"]})


def broadcast(name, type_, operand=None, param="", in_place=False):
    """Scale or Bias of x (2, 3, 4, 5) by a second bottom of shape `operand`, or by its own blob (None)."""
    inputs = {"x": X} if operand is None else {"x": X, "s": (operand, "normal")}
    field = "scale_param" if type_ == "Scale" else "bias_param"
    text = layer(type_.lower(), type_, list(inputs), f"{field} {{ {param} }}" if param else "",
                 "x" if in_place else "y")
    return Case(name, text, inputs)


def mvn(name, param="", shape=(2, 3, 4, 5), top="y"):
    return Case(name, layer("mvn", "MVN", ["x"], f"mvn_param {{ {param} }}" if param else "", top),
                {"x": (shape, "normal")})


CASES = [
    bn("bn_train"),
    bn("bn_train_in_place", top="x"),
    bn("bn_train_fraction_eps_2d", "moving_average_fraction: 0.9 eps: 0.001", shape=(6, 3)),
    bn("bn_train_3d", shape=(2, 3, 5)),
    bn("bn_train_global_stats", "use_global_stats: true"),
    bn("bn_test"),
    bn("bn_test_local_stats", "use_global_stats: false", phase="TEST"),
    bn("bn_test_zero_factor", phase="TEST", kinds=["normal", "positive", "uniform:0:0"]),
    Case("bn_scale_block", layer("bn", "BatchNorm", ["x"], top="x") + "\n"
         + layer("scale", "Scale", ["x"], "scale_param { bias_term: true }", top="x"),
         {"x": X}, param_kinds=BN_BLOBS),
    broadcast("scale_eltwise", "Scale", (2, 3, 4, 5), "axis: 0"),
    broadcast("scale_eltwise_in_place", "Scale", (2, 3, 4, 5), "axis: 0", in_place=True),
    broadcast("scale_eltwise_param", "Scale", None, 'axis: 0 num_axes: -1 filler { type: "gaussian" }'),
    broadcast("scale_broadcast_begin", "Scale", (2, 3), "axis: 0"),
    broadcast("scale_broadcast_middle", "Scale", (3, 4), "axis: 1"),
    broadcast("scale_broadcast_middle_in_place", "Scale", (3, 4), "axis: 1", in_place=True),
    broadcast("scale_broadcast_middle_param", "Scale", None, 'axis: 1 num_axes: 2 filler { type: "gaussian" }'),
    broadcast("scale_broadcast_middle_param_bias", "Scale", None,
              'axis: 1 num_axes: 2 filler { type: "gaussian" } bias_term: true bias_filler { type: "gaussian" }'),
    broadcast("scale_broadcast_end", "Scale", (4, 5), "axis: 2"),
    broadcast("scale_scalar", "Scale", ()),
    broadcast("scale_scalar_axis2", "Scale", (), "axis: 2"),
    broadcast("scale_scalar_and_bias", "Scale", (), 'bias_term: true bias_filler { type: "gaussian" }'),
    broadcast("scale_bottom_and_bias", "Scale", (3, 4), "axis: -3 bias_term: true"),
    broadcast("scale_param_channels_bias", "Scale", None, "bias_term: true"),
    broadcast("scale_param_scalar", "Scale", None, "num_axes: 0"),
    broadcast("bias_eltwise", "Bias", (2, 3, 4, 5), "axis: 0"),
    broadcast("bias_eltwise_in_place", "Bias", (2, 3, 4, 5), "axis: 0", in_place=True),
    broadcast("bias_eltwise_param", "Bias", None, 'axis: 0 num_axes: -1 filler { type: "gaussian" }'),
    broadcast("bias_broadcast_begin", "Bias", (2, 3), "axis: 0"),
    broadcast("bias_broadcast_middle", "Bias", (3, 4), "axis: 1"),
    broadcast("bias_broadcast_middle_in_place", "Bias", (3, 4), "axis: 1", in_place=True),
    broadcast("bias_broadcast_middle_param", "Bias", None, 'axis: 1 num_axes: 2 filler { type: "gaussian" }'),
    broadcast("bias_broadcast_end", "Bias", (4, 5), "axis: 2"),
    broadcast("bias_scalar", "Bias", ()),
    broadcast("bias_scalar_axis2", "Bias", (), "axis: 2"),
    broadcast("bias_param_channels", "Bias", None),
    mvn("mvn"),
    mvn("mvn_mean_only", "normalize_variance: false"),
    mvn("mvn_across_channels", "across_channels: true"),
    mvn("mvn_across_channels_mean_only", "across_channels: true normalize_variance: false"),
    mvn("mvn_eps_on_std", "eps: 0.5"),
    mvn("mvn_mean_only_in_place", "normalize_variance: false", top="x"),   # with variance: refused (engine.md)
    mvn("mvn_2d", shape=(4, 6)),
]
