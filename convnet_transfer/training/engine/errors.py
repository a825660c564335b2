"""The engine's one error type: what is wrong, where (file, layer, field), and what to do."""
from __future__ import annotations

__all__ = ["EngineError"]


class EngineError(ValueError):
    """A net, solver or weight file the engine cannot run as Caffe would.

    Raised for unknown layer types, fields set to values the engine does not implement, shape mismatches when
    copying weights, and malformed legacy (V0/V1) definitions. The message names the layer and field.
    """
