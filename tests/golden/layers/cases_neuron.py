"""Golden cases: neuron layers (one bottom, one top of its shape), with the parameter variants of Caffe's
test_neuron_layer.cpp and test_power_layer.cpp."""
from layer_goldens import Case

SHAPE = (2, 3, 4, 5)
X = {"x": (SHAPE, "normal")}
POSITIVE = {"x": (SHAPE, "positive")}
WIDE = {"x": (SHAPE, "uniform:-60:60")}                 # past BNLL's and softplus's thresholds (50, 20)
BOUNDS = {"x": ((1, 121), "spread:-3:3")}               # holds -1 and 2 exactly: Clip's gradient at its bounds


def neuron(name, type_, param="", inputs=X, in_place=False, **kw):
    top = "x" if in_place else "y"
    return Case(name, f'layer {{ name: "{name}" type: "{type_}" bottom: "x" top: "{top}" {param} }}', inputs, **kw)


def power(name, power_, scale, shift, inputs=X, **kw):
    return neuron(name, "Power", f"power_param {{ power: {power_} scale: {scale} shift: {shift} }}", inputs, **kw)


def exp_log(type_, base, scale, shift, inputs=X):
    name = f"{type_.lower()}_base{base}_scale{scale}_shift{shift}".replace("-", "m")
    return neuron(name, type_, f"{type_.lower()}_param {{ base: {base} scale: {scale} shift: {shift} }}", inputs)


# PReLU in place after an InnerProduct (Caffe's TestPReLUInPlace): the slope gradient needs the bottom as it was
IP_PRELU = ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 3 } }\n'
            'layer { name: "prelu" type: "PReLU" bottom: "h" top: "h" }')

CASES = [
    neuron("relu", "ReLU"),
    neuron("relu_leaky", "ReLU", "relu_param { negative_slope: 0.01 }"),
    neuron("relu_in_place", "ReLU", in_place=True),
    neuron("sigmoid", "Sigmoid"),
    neuron("tanh", "TanH"),
    neuron("absval", "AbsVal"),
    neuron("bnll", "BNLL"),
    neuron("bnll_wide", "BNLL", inputs=WIDE),
    neuron("elu", "ELU", "elu_param { alpha: 0.5 }"),
    neuron("elu_default", "ELU"),
    neuron("elu_as_relu", "ELU", "elu_param { alpha: 0 }"),
    neuron("elu_in_place", "ELU", in_place=True),
    neuron("prelu", "PReLU"),
    neuron("prelu_channel_shared", "PReLU", "prelu_param { channel_shared: true }"),
    neuron("prelu_default_filler", "PReLU", params="filler"),
    neuron("prelu_shared_filler", "PReLU", 'prelu_param { channel_shared: true filler { type: "constant" '
                                           'value: -0.3 } }', params="filler"),
    Case("prelu_in_place", IP_PRELU, X),
    neuron("swish", "Swish"),
    neuron("swish_beta", "Swish", "swish_param { beta: 1.5 }"),
    neuron("swish_as_linear", "Swish", "swish_param { beta: 0 }"),
    neuron("clip", "Clip", "clip_param { min: -1 max: 2 }", BOUNDS),
    neuron("clip_in_place", "Clip", "clip_param { min: -1 max: 2 }", BOUNDS, in_place=True),
    # Caffe's Threshold has no Backward (NOT_IMPLEMENTED aborts): forward only
    neuron("threshold", "Threshold", force_backward=False),
    neuron("threshold_half", "Threshold", "threshold_param { threshold: 0.5 }", force_backward=False),
    exp_log("Exp", -1, 1, 0), exp_log("Exp", -1, 1, 1), exp_log("Exp", 2, 1, 0),
    exp_log("Exp", 2, 1, 1), exp_log("Exp", 2, 3, 0), exp_log("Exp", 2, 3, 1),
    exp_log("Log", -1, 1, 0, POSITIVE), exp_log("Log", 2, 1, 0, POSITIVE), exp_log("Log", 2, 1, 1, POSITIVE),
    exp_log("Log", 2, 3, 0, POSITIVE), exp_log("Log", 2, 3, 1, POSITIVE),
    power("power", 0.37, 0.83, -2.4, {"x": (SHAPE, "uniform:3.0:6.0")}),   # shift + scale x > 0: no NaN
    power("power_shift_zero", 0.37, 0.83, 0.0, POSITIVE),
    power("power_zero", 0.0, 0.83, -2.4),
    power("power_one", 1.0, 0.83, -2.4),
    power("power_two", 2.0, 0.34, -2.4),
    power("power_two_scale_083", 2.0, 0.83, -2.4),
    power("power_square", 2.0, 0.5, 0.1),
    power("power_scale_zero", 2.0, 0.0, 1.5),
    power("power_and_scale_zero", 0.0, 0.0, 1.5),
    # in place, Caffe's Backward reads the overwritten bottom (the top) where it reads the bottom
    neuron("relu_negative_slope_in_place", "ReLU", "relu_param { negative_slope: -0.5 }", in_place=True),
    neuron("elu_negative_alpha_in_place", "ELU", "elu_param { alpha: -0.5 }", in_place=True),
    neuron("bnll_in_place", "BNLL", in_place=True),
    neuron("sigmoid_in_place", "Sigmoid", in_place=True),
    neuron("exp_in_place", "Exp", "exp_param { base: 2 scale: 3 shift: 1 }", in_place=True),
    neuron("swish_in_place", "Swish", "swish_param { beta: 1.5 }", in_place=True),
    neuron("prelu_direct_in_place", "PReLU", in_place=True),
    neuron("dropout_test", "Dropout", "dropout_param { dropout_ratio: 0.5 }", phase="TEST"),
    neuron("dropout_test_three_quarters", "Dropout", "dropout_param { dropout_ratio: 0.75 }", phase="TEST"),
]
