"""Golden cases: normalisation layers, as Caffe's test_batch_norm_layer.cpp, test_scale_layer.cpp,
test_bias_layer.cpp and test_mvn_layer.cpp vary them (plus the phases and use_global_stats both ways, the moving
averages a TRAIN forward writes into BatchNorm's blobs (after/), and a zero scale factor)."""
from layer_goldens import Case

X = ((2, 3, 4, 5), "normal")
BN_BLOBS = {"bn": ["normal", "positive", "positive"]}   # mean sums, variance sums, scale factor


def layer(name, type_, bottoms, param="", top="y"):
    bottoms = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {bottoms} top: "{top}" {param} }}'


def single(name, type_, layer_name, field, param="", shape=(2, 3, 4, 5), top="y", **kw):
    """A layer of `type_` on x of `shape` (in place with top "x"), its `field` message holding `param`."""
    return Case(name, layer(layer_name, type_, ["x"], f"{field} {{ {param} }}" if param else "", top),
                {"x": (shape, "normal")}, **kw)


def bn(name, param="", kinds=None, **kw):
    return single(name, "BatchNorm", "bn", "batch_norm_param", param, param_kinds={"bn": kinds or BN_BLOBS["bn"]}, **kw)


def broadcast(name, type_, operand=None, param="", in_place=False):
    """Scale or Bias of x (2, 3, 4, 5) by a second bottom of shape `operand`, or by its own blob (None)."""
    inputs = {"x": X} if operand is None else {"x": X, "s": (operand, "normal")}
    field = "scale_param" if type_ == "Scale" else "bias_param"
    text = layer(type_.lower(), type_, list(inputs), f"{field} {{ {param} }}" if param else "",
                 "x" if in_place else "y")
    return Case(name, text, inputs)


def mvn(name, param="", **kw):
    return single(name, "MVN", "mvn", "mvn_param", param, **kw)


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
    broadcast("scale_broadcast_middle_param_bias", "Scale", None,
              'axis: 1 num_axes: 2 filler { type: "gaussian" } bias_term: true bias_filler { type: "gaussian" }'),
    broadcast("scale_scalar_and_bias", "Scale", (), 'bias_term: true bias_filler { type: "gaussian" }'),
    broadcast("scale_bottom_and_bias", "Scale", (3, 4), "axis: -3 bias_term: true"),
    broadcast("scale_param_channels_bias", "Scale", None, "bias_term: true"),
    broadcast("scale_param_scalar", "Scale", None, "num_axes: 0"),
    broadcast("bias_param_channels", "Bias", None),
    mvn("mvn"),
    mvn("mvn_mean_only", "normalize_variance: false"),
    mvn("mvn_across_channels", "across_channels: true"),
    mvn("mvn_across_channels_mean_only", "across_channels: true normalize_variance: false"),
    mvn("mvn_eps_on_std", "eps: 0.5"),
    mvn("mvn_mean_only_in_place", "normalize_variance: false", top="x"),   # with variance: refused (engine.md)
    mvn("mvn_2d", shape=(4, 6)),
]
# the variants test_scale_layer.cpp and test_bias_layer.cpp share: (name, bottom 1's shape or None, param, in place)
SHARED_VARIANTS = [
    ("eltwise", (2, 3, 4, 5), "axis: 0", False),
    ("eltwise_in_place", (2, 3, 4, 5), "axis: 0", True),
    ("eltwise_param", None, 'axis: 0 num_axes: -1 filler { type: "gaussian" }', False),
    ("broadcast_begin", (2, 3), "axis: 0", False),
    ("broadcast_middle", (3, 4), "axis: 1", False),
    ("broadcast_middle_in_place", (3, 4), "axis: 1", True),
    ("broadcast_middle_param", None, 'axis: 1 num_axes: 2 filler { type: "gaussian" }', False),
    ("broadcast_end", (4, 5), "axis: 2", False),
    ("scalar", (), "", False),
    ("scalar_axis2", (), "axis: 2", False),
]
CASES += [broadcast(f"{type_.lower()}_{name}", type_, operand, param, in_place)
          for type_ in ("Scale", "Bias") for name, operand, param, in_place in SHARED_VARIANTS]
