"""Golden cases: the Net's own semantics (Caffe's net.cpp, insert_splits.cpp), as test_net.cpp exercises them:
parameters shared by name (one blob, the gradients of its layers summed), `loss_weight` on tops of layers that are
not losses (also a top consumed by another layer, Caffe refuses one overwritten in place later: tests/test_engine_net_semantics.py), and propagate_down (with
force_backward, which overrides it, and without)."""
from layer_goldens import Case

V = ((4, 5), "normal")


def ip(name, bottom, top, n=3, params="", extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {params} '
            f'inner_product_param {{ num_output: {n} }} {extra} }}\n')


def conv(name, bottom, top, params=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" {params} '
            f'convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 }} }}\n')


SHARED = 'param { name: "w" } param { name: "b" }'

CASES = [
    # test_net.cpp's shared-weights nets: two layers on two inputs, one weight blob and one bias blob
    Case("share_two_inputs", ip("ip1", "x", "y1", params=SHARED) + ip("ip2", "z", "y2", params=SHARED),
         {"x": V, "z": V}),
    # the same layer applied twice in a chain (an unrolled recurrence)
    Case("share_chain_conv", conv("conv1", "x", "h", SHARED) + conv("conv2", "h", "y", SHARED),
         {"x": ((2, 3, 5, 5), "normal")}),
    # multipliers given by the sharer only, the owner's weight shared PERMISSIVE (same shape), bias unshared
    Case("share_multipliers_permissive",
         ip("ip1", "x", "y1", params='param { name: "w" } param { lr_mult: 2 }')
         + ip("ip2", "x", "y2", params='param { name: "w" lr_mult: 1 decay_mult: 0 share_mode: PERMISSIVE }'),
         {"x": V}),
    # a ReLU top as a loss (weight 0.5) and a net output of the same layer tree without one
    Case("loss_weight_relu", ip("ip", "x", "h") + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "y" loss_weight: 0.5 }',
         {"x": V}),
    # a loss top that another layer reads (Caffe inserts a Split carrying the loss)
    Case("loss_weight_consumed", ip("ip1", "x", "h", extra="loss_weight: 2") + ip("ip2", "h", "y", n=2),
         {"x": V}),
    # loss weights on several tops of one layer
    Case("loss_weight_split_tops", 'layer { name: "split" type: "Split" bottom: "x" top: "a" top: "b" '
         'loss_weight: 1 loss_weight: 0.25 }\n', {"x": V}),
    # force_backward overrides propagate_down: false (Net::Init): both bottoms still get their diffs
    Case("propagate_down_forced", 'layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "z" top: "y" '
         'propagate_down: true propagate_down: false }\n', {"x": V, "z": V}),
    # without force_backward: ip1 is below a bottom that does not propagate, so it gets no gradient
    Case("propagate_down_stops", ip("ip1", "x", "h") + ip("ip2", "x", "g")
         + 'layer { name: "sum" type: "Eltwise" bottom: "h" bottom: "g" top: "y" propagate_down: false '
           'propagate_down: true loss_weight: 1 }\n', {"x": V}, force_backward=False),
    # without force_backward: a layer that no loss depends on gets no gradient
    Case("no_loss_no_backward", ip("ip1", "x", "h", extra="loss_weight: 1") + ip("ip2", "x", "g")
         + 'layer { name: "silence" type: "Silence" bottom: "g" }\n', {"x": V}, force_backward=False),
]
