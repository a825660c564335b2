"""Golden cases: the common layers (layers/common.py), as Caffe's test_<x>_layer.cpp vary them: inner_product,
softmax, flatten, reshape, concat, slice, split, tile, eltwise, reduction, argmax, embed, filter, batch_reindex
(Silence and Parameter have no test of their own there).

ArgMax, Embed, Filter and BatchReindex run without force_backward (Caffe aborts under it: see layer_goldens.Case);
a loss top (`loss_weight`) drives their backward, and where the blob to differentiate must come from a learnable
one, a Parameter layer makes it."""
from layer_goldens import Case

X = {"x": ((2, 3, 4, 5), "normal")}


def layer(name, type_, param="", inputs=X, bottoms=("x",), tops=("y",), **kw):
    """A case of one layer `name` of `type_` with `param` (its *_param text)."""
    wiring = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
    return Case(name, f'layer {{ name: "{name}" type: "{type_}"{wiring} {param} }}', inputs, **kw)


def parameter(name, shape):
    """A Parameter layer: the learnable blob `name` of `shape` as a top of that name."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Parameter" top: "{name}" parameter_param {{ shape {{ {dims} }} }} }}\n'


def weighted_loss(top, weights):
    """`top` times the input blob `weights` as a loss (loss_weight 1): `top`'s diff is `weights`."""
    return (f'layer {{ name: "weigh" type: "Eltwise" bottom: "{top}" bottom: "{weights}" top: "loss" '
            f'eltwise_param {{ operation: PROD }} loss_weight: 1 }}\n')


def sumsq_loss(top):
    """sum(top^2) as a loss: `top`'s diff is 2 * top, whatever its first dimension (a Filter's top)."""
    return (f'layer {{ name: "loss_{top}" type: "Reduction" bottom: "{top}" top: "loss_{top}" '
            f'reduction_param {{ operation: SUMSQ }} loss_weight: 1 }}\n')


def ip(name, param, inputs=X, **kw):
    return layer(name, "InnerProduct", f"inner_product_param {{ {param} }}", inputs, **kw)


def reduction(name, op, extra=""):
    return layer(name, "Reduction", f"reduction_param {{ operation: {op} {extra} }}")


def argmax(name, param, inputs=None):
    inputs = inputs or {"x": ((2, 3, 4, 5), "spread:-3:3")}
    return layer(name, "ArgMax", f"argmax_param {{ {param} }}", inputs, force_backward=False)


def embed(name, num_output, input_dim, shape, extra=""):
    """An Embed of indices (floats) of `shape`, its top's diff random (weighted_loss)."""
    text = (f'layer {{ name: "embed" type: "Embed" bottom: "x" top: "y" '
            f'embed_param {{ num_output: {num_output} input_dim: {input_dim}{extra} }} }}\n')
    inputs = {"x": (shape, f"int:0:{input_dim}"), "w": (shape + (num_output,), "normal")}
    return Case(name, text + weighted_loss("y", "w"), inputs, force_backward=False)


def eltwise(name, param, bottoms=("a", "b", "c"), kind="normal", **kw):
    inputs = {b: ((2, 3, 4, 5), kind) for b in bottoms}
    return layer(name, "Eltwise", f"eltwise_param {{ {param} }}", inputs, bottoms, **kw)


def eltwise_on_parameters(name, param, kinds, shape=(2, 3, 4)):
    """Eltwise on three Parameter blobs a, b, c drawn as `kinds` (their diffs show where the gradient went)."""
    layers = "".join(parameter(p, shape) for p in "abc")
    layers += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
               f'eltwise_param {{ {param} }} }}')
    return Case(name, layers, param_kinds={p: [kind] for p, kind in zip("abc", kinds)})


UNDERFLOW = ["uniform:1e-30:2e-30", "uniform:1e-20:2e-20", "normal"]
CONCAT_INPUTS = {"a": ((2, 3, 3, 2), "normal"), "b": ((2, 4, 3, 2), "normal"), "c": ((3, 3, 3, 2), "normal")}

CASES = [
    # InnerProduct: 4-D bottom flattened from axis 1, transpose, no bias, N-D with axis, a bottom of one item
    ip("ip", "num_output: 5", {"x": ((2, 3, 2, 2), "normal")}),
    ip("ip_transpose", "num_output: 4 transpose: true", {"x": ((2, 3, 2, 2), "normal")}),
    ip("ip_no_bias", "num_output: 3 bias_term: false", {"x": ((3, 7), "normal")}),
    ip("ip_axis2", "num_output: 3 axis: 2", {"x": ((2, 3, 4, 2), "normal")}),
    ip("ip_axis_neg_transpose", "num_output: 3 axis: -1 transpose: true bias_term: false",
       {"x": ((2, 3, 5), "normal")}),
    ip("ip_nobatch", "num_output: 4", {"x": ((1, 2, 3, 2), "normal")}),
    # Softmax along channels (default), along a spatial axis
    layer("softmax", "Softmax", inputs={"x": ((2, 5, 2, 3), "normal")}),
    layer("softmax_axis", "Softmax", "softmax_param { axis: -1 }", {"x": ((2, 3, 4), "normal")}),
    # Flatten: default, axis, end_axis, both
    layer("flatten", "Flatten"),
    layer("flatten_axis2", "Flatten", "flatten_param { axis: 2 }"),
    layer("flatten_end_axis", "Flatten", "flatten_param { end_axis: -2 }"),
    layer("flatten_start_end", "Flatten", "flatten_param { axis: 0 end_axis: -2 }"),
    # Reshape: 0 copies, -1 infers, axis / num_axes replace part of the shape, singleton axes inserted
    layer("reshape_flatten", "Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 1 dim: 1 } }"),
    layer("reshape_copy", "Reshape", "reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 } }"),
    layer("reshape_infer", "Reshape", "reshape_param { shape { dim: 0 dim: 3 dim: 10 dim: -1 } }"),
    layer("reshape_infer_axis", "Reshape", "reshape_param { axis: 1 shape { dim: 3 dim: 10 dim: -1 } }"),
    layer("reshape_singletons_start", "Reshape", "reshape_param { axis: 0 num_axes: 0 shape { dim: 1 dim: 1 } }"),
    layer("reshape_singletons_middle", "Reshape", "reshape_param { axis: 2 num_axes: 0 shape { dim: 1 dim: 1 } }"),
    layer("reshape_singletons_end", "Reshape", "reshape_param { axis: -1 num_axes: 0 shape { dim: 1 dim: 1 } }"),
    layer("reshape_flatten_middle", "Reshape", "reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }"),
    layer("reshape_forward", "Reshape", "reshape_param { shape { dim: 6 dim: 2 dim: 2 dim: 5 } }"),
    # Concat: channels (default), num, negative axis, legacy concat_dim, one bottom
    layer("concat_channels", "Concat", "", CONCAT_INPUTS, ("a", "b")),
    layer("concat_num", "Concat", "concat_param { axis: 0 }", CONCAT_INPUTS, ("a", "c")),
    layer("concat_neg_axis", "Concat", "concat_param { axis: -3 }", CONCAT_INPUTS, ("b", "a", "b")),
    layer("concat_dim", "Concat", "concat_param { concat_dim: 0 }", CONCAT_INPUTS, ("c", "a")),
    layer("concat_trivial", "Concat", "", CONCAT_INPUTS, ("a",)),
    # Slice: equal parts across num, slice points across channels, legacy slice_dim, one top
    layer("slice_num", "Slice", "slice_param { axis: 0 }", {"x": ((4, 3, 2, 2), "normal")}, tops=("p", "q")),
    layer("slice_channels", "Slice", "slice_param { slice_point: 1 slice_point: 4 }", {"x": ((2, 6, 2, 2), "normal")},
          tops=("p", "q", "r")),
    layer("slice_dim", "Slice", "slice_param { slice_dim: 2 slice_point: 1 }", {"x": ((2, 3, 3, 2), "normal")},
          tops=("p", "q")),
    layer("slice_neg_axis_equal", "Slice", "slice_param { axis: -1 }", {"x": ((2, 3, 6), "normal")},
          tops=("p", "q", "r")),
    layer("slice_trivial", "Slice", "", {"x": ((2, 3, 2, 2), "normal")}, tops=("p",)),
    # Split, Silence (a bottom's diff from Silence is 0: x's is the Softmax's alone)
    layer("split", "Split", "", {"x": ((2, 3, 2, 2), "normal")}, tops=("p", "q", "r")),
    Case("silence", 'layer { name: "softmax" type: "Softmax" bottom: "x" top: "y" }\n'
                    'layer { name: "silence" type: "Silence" bottom: "x" bottom: "z" }',
         {"x": ((2, 4, 3), "normal"), "z": ((3, 2), "normal")}),
    # Tile: across num, across channels (default axis), one tile, a negative axis
    layer("tile_num", "Tile", "tile_param { axis: 0 tiles: 3 }", {"x": ((2, 3, 2, 2), "normal")}),
    layer("tile_channels", "Tile", "tile_param { tiles: 3 }", {"x": ((2, 3, 2, 2), "normal")}),
    layer("tile_trivial", "Tile", "tile_param { tiles: 1 }", {"x": ((2, 3, 2, 2), "normal")}),
    layer("tile_neg_axis", "Tile", "tile_param { axis: -1 tiles: 2 }", {"x": ((2, 3, 4), "normal")}),
    # Eltwise: PROD (stable and top/bottom gradients), SUM (coefficients), MAX
    eltwise("eltwise_prod", "operation: PROD"),
    eltwise("eltwise_prod_unstable", "operation: PROD stable_prod_grad: false", kind="positive"),
    eltwise("eltwise_sum", "operation: SUM"),
    eltwise("eltwise_sum_coeff", "operation: SUM coeff: 1 coeff: -0.5 coeff: 2"),
    eltwise("eltwise_max", "operation: MAX", kind="spread:-3:3"),
    eltwise("eltwise_max_two", "operation: MAX", ("a", "b"), kind="spread:-3:3"),
    # ties: Caffe sends the gradient to bottom 1 on a tie of bottoms 0 and 1, to the earliest after that
    eltwise_on_parameters("eltwise_max_ties", "operation: MAX", ["int:0:3"] * 3),
    # top = a*b*c (about 1e-50) underflows to 0: the stable gradient to a is b*c, to b a*c; top/bottom gives 0
    eltwise_on_parameters("eltwise_prod_underflow_stable", "operation: PROD", UNDERFLOW),
    eltwise_on_parameters("eltwise_prod_underflow_unstable", "operation: PROD stable_prod_grad: false", UNDERFLOW),
    # Reduction: each operation, with coeff and axis; a scalar top (axis 0)
    reduction("reduction_sum", "SUM"),
    reduction("reduction_sum_coeff_axis1", "SUM", "coeff: 2.3 axis: 1"),
    reduction("reduction_mean", "MEAN"),
    reduction("reduction_mean_coeff_axis1", "MEAN", "coeff: 2.3 axis: 1"),
    reduction("reduction_asum_coeff", "ASUM", "coeff: -1.5"),
    reduction("reduction_asum_axis1", "ASUM", "axis: 1"),
    reduction("reduction_sumsq", "SUMSQ"),
    reduction("reduction_sumsq_coeff_axis1", "SUMSQ", "coeff: 2.3 axis: 1"),
    reduction("reduction_sum_neg_axis", "SUM", "axis: -1"),
    # ArgMax (no backward): per item, max values, top k, along an axis (negative too), and ties (larger index first)
    argmax("argmax", ""),
    argmax("argmax_max_val", "out_max_val: true"),
    argmax("argmax_top_k", "top_k: 4"),
    argmax("argmax_max_val_top_k", "out_max_val: true top_k: 4"),
    argmax("argmax_axis0", "axis: 0"),
    argmax("argmax_axis2_top_k", "axis: 2 top_k: 3"),
    argmax("argmax_axis_neg_max_val_top_k", "axis: -1 top_k: 2 out_max_val: true"),
    argmax("argmax_2d", "top_k: 2", {"x": ((3, 6), "spread:-3:3")}),
    argmax("argmax_ties", "out_max_val: true top_k: 3", {"x": ((2, 3, 4), "int:0:3")}),
    argmax("argmax_ties_axis", "axis: 1 top_k: 2", {"x": ((2, 5, 3), "int:0:2")}),
    # Embed: indices as floats, with and without bias; the gradient reaches the blobs only
    embed("embed", 6, 5, (2, 4)),
    embed("embed_no_bias", 3, 4, (5,), " bias_term: false"),
    # Filter: two blobs filtered by one selector; the tops' first dimension is the number selected
    Case("filter", parameter("p", (6, 3, 2)) + parameter("q", (6, 2))
         + 'layer { name: "filter" type: "Filter" bottom: "p" bottom: "q" bottom: "s" top: "fp" top: "fq" }\n'
         + sumsq_loss("fp") + sumsq_loss("fq"), {"s": ((6, 1, 1, 1), "binary")}, force_backward=False),
    # the tops' first dimension changes at each forward, and the layers after it follow (Caffe reshapes them)
    Case("filter_then_ip", parameter("p", (5, 2, 3))
         + 'layer { name: "filter" type: "Filter" bottom: "p" bottom: "s" top: "fp" }\n'
         + 'layer { name: "ip" type: "InnerProduct" bottom: "fp" top: "y" inner_product_param { num_output: 3 } }\n'
         + sumsq_loss("y"), {"s": ((5, 1), "binary")}, force_backward=False),
    Case("filter_data_and_labels",
         'layer { name: "filter" type: "Filter" bottom: "x" bottom: "label" bottom: "s" top: "fx" top: "flabel" }\n'
         'layer { name: "ip" type: "InnerProduct" bottom: "fx" top: "y" inner_product_param { num_output: 3 } }\n'
         'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "flabel" top: "loss" }',
         {"x": ((8, 4), "normal"), "label": ((8,), "labels:3"), "s": ((8, 1, 1, 1), "binary")}, force_backward=False),
    # BatchReindex: items picked (some twice, some never) by a 1-D index blob; repeated items' diffs add
    Case("batch_reindex", parameter("p", (5, 3, 2))
         + 'layer { name: "reindex" type: "BatchReindex" bottom: "p" bottom: "i" top: "y" }\n'
         + weighted_loss("y", "w"), {"i": ((7,), "int:0:5"), "w": ((7, 3, 2), "normal")}, force_backward=False),
    # Parameter: the blob is the top (its diff the top's)
    Case("parameter", parameter("p", (2, 3, 4))),
]
