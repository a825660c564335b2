"""Caffe's snapshot file names, the one rule every stage follows: `<prefix>_iter_<N>.caffemodel` (the weights)
and `<prefix>_iter_<N>.solverstate` (the solver's state) after N iterations; 2014's Caffe wrote the weights as
`<prefix>_iter_<N>`, without extension.

    snapshot_name(prefix, n, WEIGHTS)  the file name        snapshot_glob(prefix)  every snapshot of a prefix
    snapshot_iteration(name, STATE)    N of a file name     TEMPLATE               the rule for the templates
"""
from __future__ import annotations

import re

__all__ = ["INFIX", "WEIGHTS", "STATE", "TEMPLATE", "snapshot_name", "snapshot_glob", "snapshot_iteration"]

INFIX = "_iter_"
WEIGHTS = ".caffemodel"
STATE = ".solverstate"
TEMPLATE = {"infix": INFIX, "weights": WEIGHTS, "state": STATE}   # `snapshot` in templates (train.sh, job scripts)


def snapshot_name(prefix: str, iteration: int, extension: str = WEIGHTS) -> str:
    """The snapshot after `iteration` iterations: <prefix>_iter_<iteration><extension> ("" for 2014's weights)."""
    return f"{prefix}{INFIX}{iteration}{extension}"


def snapshot_glob(prefix: str = "*") -> str:
    """The glob of every snapshot file of `prefix` (weights, state, ours' .rng): <prefix>_iter_*."""
    return f"{prefix}{INFIX}*"


def snapshot_iteration(name: str, extension: str = STATE) -> int | None:
    """N of a snapshot file name <prefix>_iter_<N><extension>; None when `name` is not one."""
    m = re.search(re.escape(INFIX) + r"(\d+)" + re.escape(extension) + "$", name)
    return int(m.group(1)) if m else None
