"""Bad values are refused (or warned about) through the real command lines, never taken silently (issue 18, class 5).

Each case runs the real tool in a subprocess on real files written here, and checks the exit code, that the one
message names the file or value, that there is no traceback, and that nothing written before is lost.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


def tool(name: str, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def refused(result: subprocess.CompletedProcess, *names: str) -> str:
    """The run failed with one clear message naming every one of `names`, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for name in names:
        assert name in output, output
    return output


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), 7 * i % 256, np.uint8)).save(folder / name)


# ---------------------------------------------------------------- image lists: one reader, one set of rules

@pytest.mark.parametrize("lines, where, value", [
    ("a/0.png 0\na/1.png -1\n", ":2", "'-1'"),
    ("a/0.png 0\na/1.png 99999999999\n", ":2", "99999999999"),
    ("a/0.png 0\na/1.png 1\na/0.png 1\n", ":3", "'a/0.png' is listed twice"),
    ("\n\n", "", "no images listed"),
    ("a/0.png 0\na/1.png ²\n", ":2", "'²'"),
])
def test_make_dbs_refuses_what_make_splits_refuses(tmp_path, lines, where, value):
    write_images(tmp_path / "images", ["a/0.png", "a/1.png"])
    listing = tmp_path / "files.txt"
    listing.write_text(lines)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("made before")
    before = snapshot(tmp_path)
    made = tool("make_dbs", "--list", listing, "--root", tmp_path / "images", "--out", tmp_path / "out" / "db",
                "--size", "6x6", "--workers", "0", "--no-progress")
    refused(made, f"{listing}{where}", value)
    assert snapshot(tmp_path) == before                       # no database, no .partial, nothing lost
    split = tool("make_splits", "--train", listing, "--n-classes", "2", "--out", tmp_path / "out",
                 "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(split, f"{listing}{where}", value)
    assert snapshot(tmp_path) == before


def test_int32_label_named_even_within_n_classes(tmp_path):
    """A label past int32 is named even when --n-classes would allow it (the Datum could not hold it)."""
    listing = tmp_path / "train.txt"
    listing.write_text("a.png 0\nb.png 1\nc.png 2147483648\n")
    result = tool("make_splits", "--train", listing, "--n-classes", str(2**31), "--out", tmp_path / "data",
                  "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(result, f"{listing}:3", "2147483648", "int32")
    assert not (tmp_path / "data").exists()
    result = tool("make_splits", "--train", listing, "--n-classes", str(2**31 + 1), "--out", tmp_path / "data",
                  "--seeds", "none", "--reduced", "none", "--no-progress")
    refused(result, "n_classes = 2147483649", "int32")
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- caffe_torch: weights that fill nothing, base_lr < 0

@pytest.mark.slow
def test_weights_that_fill_no_layer_train_from_scratch_with_a_loud_warning(tmp_path):
    """Caffe's CopyTrainedLayersFrom copies layers by name and ignores the rest without a word; we keep that
    (exit 0, the net trains) but log a glog WARNING naming the file and how many layers were copied."""
    from convnet_transfer import protoio
    from convnet_transfer.protoio import pb
    from test_engine_solver import make_case

    case = make_case(tmp_path / "net", max_iter=2, snapshot=2)
    (case / "empty.caffemodel").write_bytes(b"")
    foreign = pb.NetParameter(name="another")
    foreign.layer.add(name="conv_other", type="Convolution").blobs.append(
        protoio.array_to_blob(np.ones((4, 3, 3, 3), np.float32)))
    protoio.write_binary(case / "foreign.caffemodel", foreign)
    for weights in ("empty.caffemodel", "foreign.caffemodel"):
        before = (case / weights).read_bytes()
        result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", weights, cwd=case)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        warning = [line for line in result.stderr.splitlines() if line.startswith("W") and weights in line]
        assert len(warning) == 1 and "NONE of the 3 layers with weights" in warning[0], result.stderr[-3000:]
        assert "Optimization Done." in result.stderr and (case / weights).read_bytes() == before
        scored = tool("caffe_torch", "test", "-model", "net.prototxt", "-weights", weights, "-iterations", "1",
                      cwd=case)
        assert scored.returncode == 0 and "NONE of the 3 layers with weights" in scored.stderr, scored.stderr[-3000:]
    # the net's own snapshot fills every layer: said as an INFO line, no warning
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "snap_iter_2.caffemodel", cwd=case)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Copied 3 of the 3 layers with weights of net tiny from snap_iter_2.caffemodel" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("W")]


@pytest.mark.slow
def test_negative_base_lr_warns(tmp_path):
    from test_engine_solver import make_case

    case = make_case(tmp_path / "net", base_lr=-0.01, max_iter=2, snapshot=0)
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("W") and "base_lr" in line]
    assert len(warning) == 1 and "solver.prototxt" in warning[0] and "-0.01" in warning[0], result.stderr[-3000:]


# ---------------------------------------------------------------- run_experiment: too few classes for two halves

def image_folder(root: Path, classes: list[str], per_class: int = 5) -> Path:
    write_images(root, [f"{c}/{i}.png" for c in classes for i in range(per_class)])
    return root


def test_folder_of_three_classes_is_refused_before_anything_is_made(tmp_path):
    """3 classes make halves of 1 and 2 classes: a 1-class half reports 100% whatever the net learned."""
    root = image_folder(tmp_path / "images", ["ant", "bee", "cat"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = tool("run_experiment", "--quick", "--dataset", "folder", "--dataset-root", root, "--out", out,
                  "--jobs", "1", "--no-progress")
    message = refused(result, str(root), "3 classes", "at least 4 classes")
    assert result.returncode == 1 and "[1/5]" not in message
    assert snapshot(tmp_path) == before


def test_four_classes_make_halves_of_two(tmp_path):
    from convnet_transfer import datasets, experiment, splits

    data = datasets.open_dataset("folder", root=image_folder(tmp_path / "images", ["ant", "bee", "cat", "dog"]))
    settings = experiment.settings_for(quick=True, per_class=None)
    experiment.make_lists(data, tmp_path / "data", settings, progress=False)
    for half in ("half0A", "half0B"):
        labels = {label for _, label in splits.read_list(tmp_path / "data" / f"{half}_train" / "files.txt")}
        assert labels == {0, 1}
