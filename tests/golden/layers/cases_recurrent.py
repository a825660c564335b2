"""Golden cases: RNN, LSTM and LSTMUnit, as Caffe's test_rnn_layer.cpp and test_lstm_layer.cpp vary them (one and
several time steps, cont with resets, a static input, gradients to x and x_static) and with expose_hidden (the
initial state as bottoms, the final state as tops: cont 1 at t = 0 so that the given state counts)."""
from layer_goldens import Case

H = 3          # num_output: small, the goldens stay small
T, N = 3, 2


def recurrent(name, type_, inputs, expose_hidden=False):
    bottoms = " ".join(f'bottom: "{b}"' for b in inputs)
    tops = ' top: "hT"' + (' top: "cT"' if type_ == "LSTM" else "") if expose_hidden else ""
    param = f"recurrent_param {{ num_output: {H}{' expose_hidden: true' if expose_hidden else ''} }}"
    return Case(name, f'layer {{ name: "{name}" type: "{type_}" {bottoms} top: "y"{tops} {param} }}', inputs)


def sequence(t=T, n=N, features=(3, 2), cont=None, static=False, hidden=0):
    """Bottoms x (t, n, *features), cont (drawn as `cont`, default resets), [x_static (n, 2, 3)], [`hidden`
    state blobs (1, n, H)]."""
    inputs = {"x": ((t, n) + features, "uniform:-1:1"), "cont": ((t, n), cont or f"cont:{t}")}
    if static:
        inputs["x_static"] = ((n, 2, 3), "uniform:-1:1")
    for name in ("h0", "c0")[:hidden]:
        inputs[name] = ((1, n, H), "normal")
    return inputs


def unit(name, cont, n=3):
    inputs = {"c_prev": ((1, n, H), "uniform:-1:1"), "gates": ((1, n, 4 * H), "uniform:-1:1"), "cont": ((1, n), cont)}
    layer = (f'layer {{ name: "{name}" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" '
             f'top: "c" top: "h" }}')
    return Case(name, layer, inputs)


CASES = [
    recurrent("rnn_t1", "RNN", sequence(t=1, n=3)),
    recurrent("rnn", "RNN", sequence()),
    recurrent("rnn_features_flat", "RNN", sequence(t=4, features=(5,))),
    recurrent("rnn_static", "RNN", sequence(static=True)),
    recurrent("rnn_expose_hidden", "RNN", sequence(cont="binary", hidden=1), expose_hidden=True),
    recurrent("rnn_static_expose_hidden", "RNN", sequence(cont="int:1:2", static=True, hidden=1), expose_hidden=True),
    recurrent("lstm_t1", "LSTM", sequence(t=1, n=3)),
    recurrent("lstm", "LSTM", sequence()),
    recurrent("lstm_features_flat", "LSTM", sequence(t=4, features=(5,))),
    recurrent("lstm_static", "LSTM", sequence(static=True)),
    recurrent("lstm_cont_fractional", "LSTM", sequence(cont="uniform:0:1")),
    recurrent("lstm_expose_hidden", "LSTM", sequence(cont="binary", hidden=2), expose_hidden=True),
    recurrent("lstm_static_expose_hidden", "LSTM", sequence(cont="int:1:2", static=True, hidden=2),
              expose_hidden=True),
    unit("lstm_unit_cont0", "int:0:1"),
    unit("lstm_unit_cont_mixed", "binary"),
    unit("lstm_unit_cont_fractional", "uniform:0:1"),
]
