"""Golden cases: neuron layers (one bottom, one top of its shape), as Caffe's test_neuron_layer.cpp varies them."""
from layer_goldens import Case

X = {"x": ((2, 3, 4, 5), "normal")}


def neuron(name, type_, param="", inputs=X, in_place=False, **kw):
    top = "x" if in_place else "y"
    return Case(name, f'layer {{ name: "{name}" type: "{type_}" bottom: "x" top: "{top}" {param} }}', inputs, **kw)


CASES = [
    neuron("relu", "ReLU"),
    neuron("relu_leaky", "ReLU", "relu_param { negative_slope: 0.01 }"),
    neuron("relu_in_place", "ReLU", in_place=True),
    neuron("sigmoid", "Sigmoid"),
    neuron("tanh", "TanH"),
    neuron("absval", "AbsVal"),
    neuron("power", "Power", "power_param { power: 0.37 scale: 0.83 shift: -2.4 }", {"x": ((2, 3, 4, 5), "uniform:3.0:6.0")}),
    neuron("power_square", "Power", "power_param { power: 2 scale: 0.5 shift: 0.1 }"),
    neuron("dropout_test", "Dropout", "dropout_param { dropout_ratio: 0.5 }", phase="TEST"),
]
