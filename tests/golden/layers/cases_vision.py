"""Golden cases: vision layers, as Caffe's test_convolution_layer.cpp, test_deconvolution_layer.cpp,
test_pooling_layer.cpp, test_lrn_layer.cpp, test_crop_layer.cpp, test_spp_layer.cpp and test_im2col_layer.cpp
vary them. (STOCHASTIC pooling is Caffe GPU code only, NOT_IMPLEMENTED on the CPU that writes these goldens: it is
tested against a port of Caffe's kernels in tests/test_engine_vision.py.)"""
from layer_goldens import Case

IMAGE = {"x": ((2, 4, 7, 6), "normal")}
SMALL = {"x": ((2, 3, 6, 5), "normal")}
TWO = {"x": ((2, 3, 6, 5), "normal"), "x2": ((2, 3, 6, 5), "normal")}
VOLUME = {"x": ((2, 2, 5, 4, 3), "normal")}
SPREAD = {"x": ((2, 3, 7, 8), "spread:-3:3")}


def layer(name, type_, param, inputs, bottoms=("x",), tops=("y",), **kw):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    top = " ".join(f'top: "{t}"' for t in tops)
    return Case(name, f'layer {{ name: "{name}" type: "{type_}" {bottom} {top} {param} }}', inputs, **kw)


def conv(name, param, inputs=IMAGE, type_="Convolution", **kw):
    return layer(name, type_, f"convolution_param {{ {param} }}", inputs, **kw)


def deconv(name, param, inputs=SMALL, **kw):
    return conv(name, param, inputs, "Deconvolution", **kw)


def pool(name, param, inputs=SPREAD, **kw):
    return layer(name, "Pooling", f"pooling_param {{ {param} }}", inputs, **kw)


def lrn(name, param, inputs={"x": ((2, 7, 3, 3), "normal")}):
    return layer(name, "LRN", f"lrn_param {{ {param} }}", inputs)


def crop(name, param, data, reference):
    return layer(name, "Crop", f"crop_param {{ {param} }}", {"x": (data, "normal"), "ref": (reference, "normal")},
                 bottoms=("x", "ref"))


def spp(name, param, inputs={"x": ((2, 3, 9, 8), "spread:-3:3")}):
    return layer(name, "SPP", f"spp_param {{ {param} }}", inputs)


def im2col(name, param, inputs=SMALL):
    return layer(name, "Im2col", f"convolution_param {{ {param} }}", inputs)


CONVOLUTION = [
    conv("conv_simple", "num_output: 6 kernel_size: 3 stride: 2"),
    conv("conv_group_pad", "num_output: 4 kernel_size: 3 pad: 1 group: 2"),
    conv("conv_dilated_rect", "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 dilation: 2 bias_term: false"),
    conv("conv_two_bottoms", "num_output: 4 kernel_size: 3 stride: 2", TWO, bottoms=("x", "x2"), tops=("y", "y2")),
    conv("conv_pad_stride_hw", "num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1", SMALL),
    conv("conv_per_axis_lists", "num_output: 4 kernel_size: 3 kernel_size: 2 pad: 2 pad: 1 stride: 1 stride: 2 "
         "dilation: 2 dilation: 1", SMALL),
    conv("conv_1x1", "num_output: 4 kernel_size: 1", SMALL),
    conv("conv_group_3", "num_output: 3 kernel_size: 3 stride: 2 group: 3", SMALL),
    conv("conv_force_nd", "num_output: 4 kernel_size: 3 pad: 1 stride: 2 force_nd_im2col: true", SMALL),
    conv("conv_0d_axis3", "num_output: 3 axis: 3", {"x": ((2, 3, 4, 5), "normal")}),
    conv("conv_1d", "num_output: 4 kernel_size: 3 pad: 1 stride: 2", {"x": ((2, 3, 9), "normal")}),
    conv("conv_axis2_batch_axes", "num_output: 4 kernel_size: 3 axis: 2", {"x": ((2, 2, 3, 5, 4), "normal")}),
    conv("conv_input_shorter_than_kernel", "num_output: 2 kernel_size: 3 stride: 2 pad_h: 0 pad_w: 1",
         {"x": ((2, 3, 2, 5), "normal")}),
    conv("conv_3d", "num_output: 4 kernel_size: 3 stride: 2", VOLUME),
    conv("conv_3d_dilated_group", "num_output: 4 kernel_size: 2 kernel_size: 2 kernel_size: 1 dilation: 2 pad: 1 "
         "group: 2", {"x": ((2, 2, 3, 4, 3), "normal")}),
]

DECONVOLUTION = [
    deconv("deconv_two_bottoms", "num_output: 4 kernel_size: 3 stride: 2",
           {"x": ((2, 3, 3, 2), "normal"), "x2": ((2, 3, 3, 2), "normal")}, bottoms=("x", "x2"),
           tops=("y", "y2")),
    deconv("deconv_group_pad", "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", {"x": ((2, 4, 4, 3), "normal")}),
    deconv("deconv_dilated_rect_nobias", "num_output: 3 kernel_h: 3 kernel_w: 2 dilation: 2 bias_term: false"),
    deconv("deconv_pad_stride_hw", "num_output: 2 kernel_size: 4 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 3",
           {"x": ((2, 3, 4, 3), "normal")}),
    deconv("deconv_3d", "num_output: 2 kernel_size: 2 stride: 2", {"x": ((2, 3, 3, 2, 3), "normal")}),
]

POOLING = [
    pool("pool_max", "pool: MAX kernel_size: 3 stride: 2"),
    pool("pool_ave_pad", "pool: AVE kernel_size: 3 stride: 2 pad: 1", IMAGE),
    pool("pool_max_top_mask", "pool: MAX kernel_size: 3 stride: 2", tops=("y", "mask")),
    pool("pool_max_padded_large", "pool: MAX kernel_size: 3 stride: 2 pad: 2", {"x": ((2, 3, 3, 3), "spread:-3:3")}),
    pool("pool_max_pad_rect_mask", "pool: MAX kernel_h: 3 kernel_w: 4 stride: 2 pad: 1", tops=("y", "mask")),
    pool("pool_max_hw", "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1", tops=("y", "mask")),
    pool("pool_ave_stride1_pad", "pool: AVE kernel_size: 3 stride: 1 pad: 1", {"x": ((2, 3, 3, 3), "normal")}),
    pool("pool_ave_padded_rect", "pool: AVE kernel_h: 4 kernel_w: 3 stride: 2 pad: 2", SMALL),
    pool("pool_global_max", "pool: MAX global_pooling: true", tops=("y", "mask")),
    pool("pool_global_ave", "pool: AVE global_pooling: true", SMALL),
    pool("pool_floor_max", "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", tops=("y", "mask")),
    pool("pool_floor_ave_pad", "pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", SMALL),
    pool("pool_ave_window_outside", "pool: AVE kernel_size: 1 stride: 3", {"x": ((2, 2, 5, 7), "normal")}),
]

LRN = [
    lrn("lrn_across", "local_size: 5 alpha: 0.5 beta: 0.75"),
    lrn("lrn_across_large_region", "local_size: 15 alpha: 0.5 beta: 0.75"),
    lrn("lrn_across_k", "local_size: 3 alpha: 0.3 beta: 0.6 k: 2.5"),
    lrn("lrn_within", "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL", {"x": ((2, 3, 5, 5), "normal")}),
    lrn("lrn_within_5", "local_size: 5 alpha: 0.3 beta: 0.6 norm_region: WITHIN_CHANNEL", {"x": ((2, 2, 6, 5), "normal")}),
]

CROP = [
    crop("crop_default_axis", "", (2, 4, 5, 4), (2, 3, 4, 2)),
    crop("crop_all_offsets", "axis: 0 offset: 0 offset: 1 offset: 1 offset: 2", (2, 4, 5, 4), (2, 3, 4, 2)),
    crop("crop_hw_offsets", "axis: 2 offset: 1 offset: 2", (2, 3, 5, 4), (1, 1, 4, 2)),
    crop("crop_5d_one_offset", "axis: 2 offset: 1", (2, 3, 3, 4, 4), (1, 1, 2, 3, 3)),
    crop("crop_negative_axis", "axis: -1 offset: 1", (2, 3, 4, 5), (1, 1, 1, 3)),
]

SPP = [
    spp("spp_max_3", "pyramid_height: 3 pool: MAX"),
    spp("spp_ave_3", "pyramid_height: 3 pool: AVE"),
    spp("spp_max_1", "pyramid_height: 1", {"x": ((2, 3, 7, 7), "spread:-3:3")}),
    spp("spp_ave_2_square", "pyramid_height: 2 pool: AVE", {"x": ((2, 3, 7, 7), "normal")}),
]

IM2COL = [
    im2col("im2col_simple", "kernel_size: 3 stride: 2"),
    im2col("im2col_dilated", "kernel_size: 3 stride: 2 dilation: 2 pad: 1", {"x": ((2, 2, 8, 7), "normal")}),
    im2col("im2col_force_nd", "kernel_size: 3 stride: 2 pad: 1 force_nd_im2col: true"),
    im2col("im2col_dilated_force_nd", "kernel_size: 3 stride: 2 dilation: 2 force_nd_im2col: true",
           {"x": ((2, 2, 8, 7), "normal")}),
    im2col("im2col_rect", "kernel_h: 5 kernel_w: 3 stride: 2"),
    im2col("im2col_input_shorter_than_kernel", "kernel_size: 3 dilation: 2 stride: 4", {"x": ((2, 2, 4, 6), "normal")}),
    im2col("im2col_3d", "kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 stride: 1 pad: 1 pad: 0 pad: 1",
           {"x": ((1, 2, 4, 4, 3), "normal")}),
]

CASES = CONVOLUTION + DECONVOLUTION + POOLING + LRN + CROP + SPP + IM2COL

# Caffe's deterministic fillers, drawn by Caffe itself (params "filler"): bilinear upsampling weights (FCN's
# Deconvolution), constant bias
FILLERS = [
    Case("deconv_bilinear_filler", 'layer { name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param '
         '{ num_output: 3 group: 3 kernel_size: 4 stride: 2 pad: 1 weight_filler { type: "bilinear" } '
         'bias_filler { type: "constant" value: 0.5 } } }', {"x": ((1, 3, 4, 5), "normal")}, params="filler"),
]
CASES += FILLERS
