"""Caffe's weight fillers (include/caffe/filler.hpp), drawing from a torch.Generator.

The distributions and their parameters are Caffe's; the random streams are torch's (Caffe's boost mt19937 draws
cannot be replayed), so a net seeded the same way gets the same weights every time, on every device (fillers
always draw on the CPU), but not Caffe's numbers.

    constant            value
    gaussian            mean, std; sparse=k keeps each weight with probability k / num_outputs (shape[0])
    uniform             min, max
    xavier              uniform(-sqrt(3/n), sqrt(3/n)),  n from variance_norm: FAN_IN, FAN_OUT, AVERAGE
    msra                gaussian(0, sqrt(2/n)),          n likewise
    positive_unitball   uniform(0, 1), each row (per shape[0]) divided by its sum
    bilinear            a 4-D square kernel of bilinear upsampling weights (for Deconvolution; no random draw)
"""
from __future__ import annotations

import math

import torch

from convnet_transfer.formats.protoio import pb
from .errors import EngineError

__all__ = ["fill", "FILLERS"]


def _fan(shape: tuple[int, ...], variance_norm: int) -> float:
    count = math.prod(shape)
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 else count
    if variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if variance_norm == pb.FillerParameter.FAN_OUT:
        return fan_out
    return fan_in


def _constant(shape, param, gen):
    return torch.full(shape, float(param.value), dtype=torch.float32)


def _gaussian(shape, param, gen):
    data = torch.empty(shape, dtype=torch.float32).normal_(float(param.mean), float(param.std), generator=gen)
    if param.sparse >= 0:
        if len(shape) < 1:
            raise EngineError("gaussian filler with `sparse` needs a blob with at least one axis")
        num_outputs = shape[0]
        keep = float(param.sparse) / num_outputs
        mask = torch.empty(shape, dtype=torch.float32).bernoulli_(min(max(keep, 0.0), 1.0), generator=gen)
        data *= mask
    return data


def _uniform(shape, param, gen):
    return torch.empty(shape, dtype=torch.float32).uniform_(float(param.min), float(param.max), generator=gen)


def _xavier(shape, param, gen):
    scale = math.sqrt(3.0 / _fan(shape, param.variance_norm))
    return torch.empty(shape, dtype=torch.float32).uniform_(-scale, scale, generator=gen)


def _msra(shape, param, gen):
    std = math.sqrt(2.0 / _fan(shape, param.variance_norm))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=gen)


def _positive_unitball(shape, param, gen):
    data = torch.empty(shape, dtype=torch.float32).uniform_(0.0, 1.0, generator=gen)
    rows = data.reshape(shape[0], -1)
    rows /= rows.sum(dim=1, keepdim=True)
    return data


def _bilinear(shape, param, gen):
    """BilinearFiller: w[..., y, x] = (1 - |x/f - c|)(1 - |y/f - c|), f = ceil(k/2), c = (k - 1) / (2f)."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise EngineError(f"the bilinear filler needs a 4-D blob with a square kernel, got shape {shape}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    ramp = 1.0 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
    return (ramp[:, None] * ramp[None, :]).to(torch.float32).expand(shape).contiguous()


FILLERS = {
    "constant": _constant,
    "gaussian": _gaussian,
    "uniform": _uniform,
    "xavier": _xavier,
    "msra": _msra,
    "positive_unitball": _positive_unitball,
    "bilinear": _bilinear,
}


def fill(shape: tuple[int, ...], param: pb.FillerParameter, generator: torch.Generator | None,
         where: str = "") -> torch.Tensor:
    """A new float32 CPU tensor of `shape` filled as Caffe's filler `param` describes."""
    filler = FILLERS.get(param.type)
    if filler is None:
        raise EngineError(f"{where}: filler type '{param.type}' is not supported "
                          f"(supported: {', '.join(sorted(FILLERS))})")
    if param.sparse != -1 and param.type != "gaussian":
        raise EngineError(f"{where}: Sparsity not supported by the {param.type} filler (only gaussian has `sparse`)")
    return filler(tuple(int(d) for d in shape), param, generator)
