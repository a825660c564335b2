"""Net architectures as data, one file per family, found by name in a registry (as timm does).

    from convnet_transfer.nets import architectures
    arch = architectures.get("caffenet_small", n_classes=10)

Each family module defines a function decorated with `@register` that returns an `Architecture`
(see spec.py). Keyword arguments given to `get` replace the architecture's fields (n_classes,
crop_size, batch_size, ...). A net of your own, from a current-format prototxt: `spec.from_prototxt`.
"""
from __future__ import annotations

import difflib
from typing import Callable

from .spec import Architecture, Layer, from_prototxt

__all__ = ["Architecture", "Layer", "register", "get", "names", "from_prototxt"]

_REGISTRY: dict[str, Callable[[], Architecture]] = {}


def register(fn: Callable[[], Architecture]) -> Callable[[], Architecture]:
    _REGISTRY[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str | Architecture, **changes) -> Architecture:
    """The registered architecture `name` (an Architecture passes through), with `changes` applied."""
    if isinstance(name, Architecture):
        arch = name
    else:
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, names(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise KeyError(f"unknown architecture {name!r}{hint}; known: {', '.join(names())}")
        arch = _REGISTRY[name]()
    changes = {k: v for k, v in changes.items() if v is not None}
    return (arch.replace(**changes) if changes else arch).check()


from . import caffenet, caffenet_small, resnet_small  # noqa: E402,F401  (register the families)
