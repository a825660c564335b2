"""`pip install .` (not editable) ships what the code needs at run time: templates, class lists, the schema."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_plain_install_renders_nets_and_reads_class_lists(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    package = target / "convnet_transfer"
    for needed in ("templates/train.sh.j2", "templates/current", "templates/2014", "templates/slurm",
                   "ilsvrc12/synsets.txt", "ilsvrc12/natural_synsets.txt", "ilsvrc12/md5sums_2014.txt",
                   "formats/proto/caffe.proto", "formats/caffe_pb2.py", "nets/architectures/caffenet.py"):
        assert (package / needed).exists(), f"{needed} is not installed"
    # run from outside the checkout, importing the installed copy only
    script = (
        "import convnet_transfer, sys\n"
        f"assert convnet_transfer.__file__.startswith({str(target)!r}), convnet_transfer.__file__\n"
        "from convnet_transfer.nets import catalog, netgen\n"
        "from convnet_transfer.data import splits\n"
        "from convnet_transfer.resources import templates_dir, ilsvrc12_dir\n"
        f"assert str(templates_dir()).startswith({str(target)!r})\n"
        "natural, manmade = splits.imagenet_groups()['natman']\n"
        "assert (len(natural), len(manmade)) == (449, 551)\n"
        "netgen.render_experiment(catalog.paper_catalog(), 'out', 'data', only='half0A,transfer0A0B_1_3')\n"
        "import pathlib; assert pathlib.Path('out/transfer0A0B_1_3/train.sh').is_file()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**env, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr[-3000:]
