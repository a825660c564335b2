"""Golden cases: vision layers, as Caffe's test_convolution_layer.cpp, test_pooling_layer.cpp and
test_lrn_layer.cpp vary them."""
from layer_goldens import Case

IMAGE = {"x": ((2, 4, 9, 8), "normal")}


def conv(name, param, inputs=IMAGE, **kw):
    return Case(name, f'layer {{ name: "{name}" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {param} }} }}',
                inputs, **kw)


CASES = [
    conv("conv_simple", "num_output: 6 kernel_size: 3 stride: 2"),
    conv("conv_group_pad", "num_output: 6 kernel_size: 3 pad: 1 group: 2"),
    conv("conv_dilated_rect", "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 dilation: 2 bias_term: false"),
    Case("pool_max", 'layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }',
         {"x": ((2, 3, 7, 8), "spread:-3:3")}),
    Case("pool_ave_pad", 'layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
         IMAGE),
    Case("lrn_across", 'layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 } }',
         {"x": ((2, 7, 3, 3), "normal")}),
    Case("lrn_within", 'layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }',
         {"x": ((2, 3, 5, 5), "normal")}),
]
