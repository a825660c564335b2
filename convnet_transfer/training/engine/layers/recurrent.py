"""RNN, LSTM and LSTMUnit with Caffe's semantics (recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp,
lstm_unit_layer.cpp), computed by a loop over the time steps instead of Caffe's unrolled net.

RNN and LSTM take x (T, N, ...), cont (T, N), an optional static input x_static (N, ...) and, with
recurrent_param.expose_hidden, the initial state (RNN: h0; LSTM: h0, c0; each (1, N, num_output)); their tops are
the outputs (T, N, num_output) and, with expose_hidden, the final state (RNN: hT; LSTM: hT, cT). With H =
num_output, at each step t (cont_t multiplies the previous hidden state: 0 starts a new sequence):

    RNN   h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h + W_xh_static x_static);  o_t = tanh(W_ho h_t + b_o)
    LSTM  gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c + W_xc_static x_static;  (c_t, h_t) = LSTMUnit

LSTMUnit (bottoms c_prev (1, N, H), gates (1, N, 4H) in the order i, f, o, g, cont (1, N); tops c, h):
i, o = sigmoid, g = tanh of their gate inputs, f = 0 where cont is 0 else cont sigmoid(x_f); c = f c_prev + i g;
h = o tanh(c). No clipping (Caffe's LSTM has none).

Caffe's semantics kept:
- Parameter blobs in the order the unrolled net's parameters appear: RNN W_xh (H x D), b_h (H), [W_xh_static
  (H x D_static)], W_hh (H x H), W_ho (H x H), b_o (H); LSTM W_xc (4H x D), b_c (4H), [W_xc_static (4H x
  D_static)], W_hc (4H x H). D is the product of x's axes after the second (an InnerProduct with axis 2).
- Without expose_hidden, a forward starts from the final state of the previous forward (zeros at first): Caffe
  copies h_T (and c_T) into h_0 (c_0), data only, so no gradient crosses forwards. Kept in a buffer with Caffe's
  Blob behaviour when N changes: a larger batch starts from zeros, a smaller one from the first values.
- With expose_hidden, Caffe shares only the data of the state bottoms and tops with the unrolled net: no gradient
  reaches h0/c0, and the diffs of hT/cT are not used. Same here.
- No gradient reaches cont (Caffe: "Cannot backpropagate to sequence indicators").
- The forget gate's gradient is f (1 - f), as LSTMUnit's Backward writes it (the derivative of its forward only for
  cont 0 or 1).
- recurrent_param.debug_info is accepted: in Caffe it only logs the unrolled net.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import EngineError
from .base import Layer, register


class CaffeForgetGate(torch.autograd.Function):
    """f = 0 where cont == 0, else cont * sigmoid(x); backward: grad * f * (1 - f) (LSTMUnit's Backward_cpu)."""

    @staticmethod
    def forward(ctx, x, cont):
        f = (cont * torch.sigmoid(x)).masked_fill(cont == 0, 0.0)
        ctx.save_for_backward(f)
        return f

    @staticmethod
    def backward(ctx, grad):
        f, = ctx.saved_tensors
        return grad * f * (1 - f), None


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's LSTMUnit: (c, h) from c_prev (1, N, H), gates (1, N, 4H) as i, f, o, g, and cont (1, N)."""
    i, f, o, g = gates.chunk(4, dim=2)
    f = CaffeForgetGate.apply(f, cont.detach().unsqueeze(2))
    c = f * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


@register
class LSTMUnitLayer(Layer):
    type_name = "LSTMUnit"
    n_bottoms = (3, 3)
    n_tops = (2, 2)

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        n = c_prev[1] if len(c_prev) > 1 else None
        for i, (shape, axes) in enumerate(zip((c_prev, gates, cont), (3, 3, 2))):
            if len(shape) != axes or shape[0] != 1 or shape[1] != n:
                raise EngineError(f"{self.where}: bottom[{i}] must have shape (1, N{', ...' if axes == 3 else ''}) "
                                  f"with {axes} axes and N = {n}, got {shape}")
        if gates[2] != 4 * c_prev[2]:
            raise EngineError(f"{self.where}: bottom[1] (the gates) must have 4 x {c_prev[2]} channels, "
                              f"got {gates[2]}")
        self.top_shapes = [c_prev, c_prev]

    def forward(self, c_prev, gates, cont):
        return list(lstm_unit(c_prev, gates, cont))


class RecurrentLayer(Layer):
    """What RNN and LSTM share (Caffe's RecurrentLayer): the bottoms and tops, the input transforms, the state."""
    allowed = {"recurrent_param": {"num_output", "weight_filler", "bias_filler", "debug_info", "expose_hidden"}}
    n_bottoms = (2, 5)
    n_tops = (1, 3)
    n_states = 1       # recurrent state blobs: h (RNN); h, c (LSTM)
    n_gates = 1        # the input transforms' width is n_gates * num_output

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.recurrent_param
        shapes = [tuple(s) for s in bottom_shapes]
        self.expose_hidden = p.expose_hidden
        exposed = self.n_states if p.expose_hidden else 0
        self._check_counts(len(shapes), len(lp.top), exposed)
        self.static_input = len(shapes) > 2 + exposed
        self.hidden = int(p.num_output)
        if self.hidden <= 0:
            raise EngineError(f"{self.where}: recurrent_param.num_output must be positive")
        x, cont = shapes[0], shapes[1]
        self.T, n = self._check_sequence(x, cont)
        state = (1, n, self.hidden)
        first_state = 2 + self.static_input
        for j, shape in enumerate(shapes[first_state:], first_state):
            if shape != state:
                raise EngineError(f"{self.where}: shape mismatch - the initial state bottom[{j}] must have shape "
                                  f"{state}, got {shape}")
        width = self.n_gates * self.hidden
        self.add_blob((width, math.prod(x[2:])), p.weight_filler)
        self.add_blob((width,), p.bias_filler)
        if self.static_input:
            self._check_static(shapes[2], n)
            self.add_blob((width, math.prod(shapes[2][1:])), p.weight_filler)
        self.add_blob((width, self.hidden), p.weight_filler)
        self.top_shapes = [(self.T, n, self.hidden)] + [state] * exposed
        self.register_buffer("memory", torch.zeros(self.n_states, 0), persistent=False)

    def _check_counts(self, n_bottoms: int, n_tops: int, exposed: int) -> None:
        """Caffe's MinBottomBlobs (2, + the state blobs with expose_hidden), MaxBottomBlobs (+1: x_static) and
        ExactNumTopBlobs (1, + the state blobs with expose_hidden)."""
        if not 2 + exposed <= n_bottoms <= 3 + exposed:
            raise EngineError(f"{self.where}: takes {2 + exposed} or {3 + exposed} bottoms (x, cont, [x_static]"
                              f"{', the initial state' if exposed else ''}), got {n_bottoms}")
        if n_tops != 1 + exposed:
            raise EngineError(f"{self.where}: makes {1 + exposed} top(s), got {n_tops} "
                              f"(recurrent_param.expose_hidden is {'on' if exposed else 'off'})")

    def _check_sequence(self, x: tuple, cont: tuple) -> tuple[int, int]:
        """(T, N) from x (T, N, ...) and cont (T, N), with Caffe's checks."""
        if len(x) < 2:
            raise EngineError(f"{self.where}: bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...)")
        if len(x) < 3:
            raise EngineError(f"{self.where}: bottom[0] needs a third axis (its features): Caffe's input "
                              f"transform is an InnerProduct with axis 2")
        if len(cont) != 2:
            raise EngineError(f"{self.where}: bottom[1] must have exactly 2 axes -- (#timesteps, #streams)")
        if cont != x[:2]:
            raise EngineError(f"{self.where}: bottom[1] (cont) has shape {cont}, x has (#timesteps, #streams) "
                              f"{x[:2]}")
        return x[0], x[1]

    def _check_static(self, shape: tuple, n: int) -> None:
        if len(shape) < 2 or shape[0] != n:
            raise EngineError(f"{self.where}: bottom[2] (x_static) must have shape (N = {n}, ...) with at least "
                              f"2 axes, got {shape}")

    def forward(self, x, cont, *rest):
        if x.shape[0] != self.T:
            raise EngineError(f"{self.where}: input number of timesteps changed ({self.T} to {x.shape[0]})")
        static, given = (rest[0], rest[1:]) if self.static_input else (None, rest)
        inputs = F.linear(x.flatten(2), self.blobs[0], self.blobs[1])
        if static is not None:
            inputs = inputs + F.linear(static.flatten(1), self.blobs[2]).unsqueeze(0)
        cont = cont.detach()
        states = [s.detach() for s in given] if self.expose_hidden else self._carried(x)
        outputs, states = self.unroll(inputs, cont, states)
        if self.expose_hidden:
            return [outputs] + [s.detach() for s in states]
        self._keep(states)
        return [outputs]

    def _carried(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The initial state without expose_hidden: the last forward's final state, read as Caffe's reshaped h_0
        blob holds it (zeros where the batch grew past its capacity)."""
        count = x.shape[1] * self.hidden
        if self.memory.shape[1] < count:
            self.memory = x.new_zeros((self.n_states, count))
        return [self.memory[i, :count].view(1, x.shape[1], self.hidden) for i in range(self.n_states)]

    def _keep(self, states: list[torch.Tensor]) -> None:
        memory = self.memory.clone()
        memory[:, :states[0].numel()] = torch.stack([s.detach().reshape(-1) for s in states])
        self.memory = memory

    def recurrent_weight(self) -> torch.Tensor:
        return self.blobs[3 if self.static_input else 2]

    def unroll(self, inputs, cont, states):
        """(outputs, final states) from the input transforms (T, N, width), cont (T, N) and the initial states."""
        raise NotImplementedError


@register
class RNNLayer(RecurrentLayer):
    type_name = "RNN"

    def __init__(self, lp, bottom_shapes, ctx):
        super().__init__(lp, bottom_shapes, ctx)
        p = lp.recurrent_param
        self.add_blob((self.hidden, self.hidden), p.weight_filler)    # W_ho
        self.add_blob((self.hidden,), p.bias_filler)                  # b_o

    def unroll(self, inputs, cont, states):
        h, = states
        w_hh = self.recurrent_weight()
        hidden = []
        for t in range(inputs.shape[0]):
            h = torch.tanh(F.linear(h * cont[t].view(1, -1, 1), w_hh) + inputs[t:t + 1])
            hidden.append(h)
        return torch.tanh(F.linear(torch.cat(hidden), self.blobs[-2], self.blobs[-1])), [h]


@register
class LSTMLayer(RecurrentLayer):
    type_name = "LSTM"
    n_states = 2
    n_gates = 4

    def unroll(self, inputs, cont, states):
        h, c = states
        w_hc = self.recurrent_weight()
        hidden = []
        for t in range(inputs.shape[0]):
            gates = F.linear(h * cont[t].view(1, -1, 1), w_hc) + inputs[t:t + 1]
            c, h = lstm_unit(c, gates, cont[t:t + 1])
            hidden.append(h)
        return torch.cat(hidden), [h, c]
