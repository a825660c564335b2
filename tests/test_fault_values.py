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
        Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)).save(folder / name)


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
