"""Every layer type against real Caffe, case by case (tests/golden/layers/cases_<family>.py): forward tops,
bottom diffs, parameter diffs and updated statistics within each case's tolerance (1e-4 relative unless the case
says why not).

(a) Committed goldens (tests/golden/layers/<family>.npz, written by tests/golden/make_golden_layers.py with
    pycaffe) run without Caffe, on the CPU and, where torch sees a GPU, on CUDA (skipped otherwise, saying so).
(b) Live, where Caffe is built: the goldens are regenerated now and compared with the engine and with the
    committed files.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import layer_goldens  # noqa: E402

FAMILIES = layer_goldens.load_cases()
CASES = [(family, case) for family, cases in FAMILIES.items() for case in cases]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the layer goldens run on the CPU only here"))]


def _golden(folder: Path, family: str) -> dict:
    path = folder / f"{family}.npz"
    assert path.exists(), f"{path} missing: run tests/golden/make_golden_layers.py --family {family}"
    return dict(np.load(path))


def check_case(folder: Path, family: str, case, device: str = "cpu") -> dict:
    golden = layer_goldens.split_golden(_golden(folder, family), case.name)
    assert golden, f"{family}.npz has no case {case.name}: rerun make_golden_layers.py --family {family}"
    errors = layer_goldens.run_engine_case(case, golden, device)
    expected = [k for k in golden if k.split("/")[0] in ("blob", "inputdiff", "grad", "after")]
    assert sorted(errors) == sorted(expected)
    bad = {k: v for k, v in errors.items() if not v <= case.rtol}
    assert not bad, f"{case.name}: relative errors above {case.rtol}: {bad}"
    return errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}-{c.name}" for f, c in CASES])
def test_layer_matches_caffe_golden(family, case, device):
    errors = check_case(layer_goldens.LAYERS_DIR, family, case, device)
    assert any(k.startswith("blob/") for k in errors)


def test_every_golden_case_is_defined():
    """A golden array without its case (renamed or removed) is a stale file, not a silent pass."""
    for family, cases in FAMILIES.items():
        names = {c.name for c in cases}
        stored = {k.split("/")[0] for k in _golden(layer_goldens.LAYERS_DIR, family)}
        assert stored == names, f"{family}.npz differs from cases_{family}.py: {sorted(stored ^ names)}"


def test_layer_goldens_are_small():
    total = sum(p.stat().st_size for p in layer_goldens.LAYERS_DIR.glob("*.npz"))
    assert total < 2_000_000, f"per-layer goldens take {total} bytes; keep the cases small"


def test_live_regenerated_layer_goldens_match(real_caffe, tmp_path):
    env = real_caffe.env()
    env["GLOG_minloglevel"] = "2"
    result = subprocess.run([sys.executable, str(GOLDEN / "make_golden_layers.py"), "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for family, case in CASES:
        check_case(tmp_path, family, case)
    for family in FAMILIES:
        fresh, committed = _golden(tmp_path, family), _golden(layer_goldens.LAYERS_DIR, family)
        assert sorted(fresh) == sorted(committed), family
        for key in committed:
            if not key.endswith(("meta/prototxt", "meta/phase")):
                assert layer_goldens.relative_error(fresh[key], committed[key]) <= 1e-6, key


# Tested elsewhere: the data layers (tests/test_engine_datalayers.py, against pycaffe on files written there) and
# the Python layer (refused: one EngineError naming it, tests/test_engine_caffe_nets.py).
TESTED_ELSEWHERE = {"Data", "ImageData", "WindowData", "MemoryData", "HDF5Data", "HDF5Output", "Python"}


def test_every_layer_type_caffe_registers_runs_in_the_engine_and_has_goldens():
    """The issue's 'every layer type BVLC master registers': each one the engine runs has per-layer goldens."""
    import re
    from convnet_transfer.formats.protoio import CAFFE_LAYER_TYPES
    from convnet_transfer.training.engine.layers import LAYERS

    assert not set(CAFFE_LAYER_TYPES) - set(LAYERS) - {"Python", "Data", "ImageData", "WindowData"}
    covered = {t for _, case in CASES for t in re.findall(r'type: "(\w+)"', case.prototxt())}
    assert not set(CAFFE_LAYER_TYPES) - covered - TESTED_ELSEWHERE


def test_the_layer_types_caffe_registers_are_the_ones_we_list(real_caffe):
    from convnet_transfer.formats.protoio import CAFFE_LAYER_TYPES
    assert set(real_caffe.import_pycaffe().layer_type_list()) == set(CAFFE_LAYER_TYPES)


FILLER_CASES = [(family, case) for family, case in CASES if case.params == "filler"]


@pytest.mark.parametrize("family,case", FILLER_CASES, ids=[f"{f}-{c.name}" for f, c in FILLER_CASES])
def test_fillers_without_random_draws_equal_caffes(family, case):
    """Cases with params "filler" use only fillers without random draws (constant, bilinear, ...): the engine's
    own filled blobs equal the ones Caffe filled."""
    from convnet_transfer.formats.protoio import parse_text, pb
    from convnet_transfer.training.engine import Net

    golden = layer_goldens.split_golden(_golden(layer_goldens.LAYERS_DIR, family), case.name)
    net = Net(parse_text(case.prototxt(), pb.NetParameter()), case.phase, seed=0)
    params = [k for k in golden if k.startswith("param/")]
    assert params
    for key in params:
        _, layer, i = key.split("/")
        ours = net.layer(layer).blobs[int(i)].detach().numpy()
        assert layer_goldens.relative_error(ours, golden[key]) <= 1e-7, key
