#!/usr/bin/env python
"""Write the per-layer goldens with REAL Caffe (pycaffe, CPU): tests/golden/layers/<family>.npz, one per
tests/golden/layers/cases_<family>.py (see layer_goldens.py for what a golden holds).

    .venv/bin/python tests/golden/make_golden_layers.py [--family F] [--out DIR]

Needs a real Caffe build (tools/install_caffe). Caffe is deterministic with a fixed seed: rerunning writes the
same arrays.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import layer_goldens  # noqa: E402
from make_golden import load_caffe  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", help="only this family (cases_<family>.py)")
    parser.add_argument("--out", default=str(layer_goldens.LAYERS_DIR), help="folder for <family>.npz")
    args = parser.parse_args(argv)
    caffe = load_caffe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for family, cases in layer_goldens.load_cases(args.family).items():
        arrays = {}
        with tempfile.TemporaryDirectory() as tmp:
            for case in cases:
                golden = layer_goldens.run_caffe_case(caffe, case, Path(tmp))
                arrays.update({f"{case.name}/{k}": v for k, v in golden.items()})
        path = out / f"{family}.npz"
        np.savez_compressed(path, **arrays)
        print(f"{path}  {len(cases)} cases  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.exit(main())
