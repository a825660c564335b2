"""gen_nets against real Caffe (fixture `real_caffe`; skips locally until tools/install_caffe has built it,
fails in CI when it is missing):

- Caffe's own `upgrade_net_proto_text` of every 2014 reference net gives our current-format net;
- Caffe constructs every generated net, TRAIN and TEST, in both formats (pycaffe, on a one-image LMDB).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

from convnet_transfer.nets import netgen
from convnet_transfer.formats import protoio
from convnet_transfer.nets.catalog import paper_catalog, transfer_catalog
from convnet_transfer.formats.protoio import pb

pytestmark = pytest.mark.slow


def without_data_paths(net: pb.NetParameter) -> pb.NetParameter:
    for layer in net.layer:
        layer.data_param.ClearField("source")
        layer.data_param.ClearField("backend")
        layer.transform_param.ClearField("mean_file")
    return net


def test_caffe_upgrade_of_the_2014_nets_is_our_current_format(real_caffe, reference, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        netgen.render_experiment(None, "results", "ilsvrc12/data")
    upgraded = {}                   # the reference files repeat: upgrade each distinct one once
    problems = []
    for ref_dir in sorted((reference / "results").iterdir()):
        for name in ("imagenet_train.prototxt", "imagenet_val.prototxt", "imagenet_solver.prototxt"):
            source = ref_dir / name
            key = hashlib.md5(source.read_bytes()).hexdigest()
            if key not in upgraded:
                out = tmp_path / "upgraded" / f"{key}.prototxt"
                out.parent.mkdir(exist_ok=True)
                tool = "upgrade_solver_proto_text" if "solver" in name else "upgrade_net_proto_text"
                real_caffe.run(tool, source, out)
                read = protoio.read_solver if "solver" in name else protoio.read_net
                upgraded[key] = read(out)
            theirs = upgraded[key]
            ours_path = tmp_path / "results" / ref_dir.name / name
            if "solver" in name:
                ours = protoio.read_solver(ours_path)
            else:
                theirs, ours = without_data_paths(type(theirs).FromString(theirs.SerializeToString())), \
                    without_data_paths(protoio.read_net(ours_path))
            if ours != theirs:
                problems.append(f"{ref_dir.name}/{name}")
    assert not problems, f"{len(problems)} files differ from Caffe's upgrade: {problems[:10]}"


def one_image_lmdb(path: Path, shape) -> None:
    """An LMDB holding one Datum of `shape` (C, H, W), label 0: enough for a Data layer to shape its tops."""
    env = lmdb.open(str(path), map_size=1 << 24)
    datum = pb.Datum(channels=shape[0], height=shape[1], width=shape[2], label=0,
                     data=np.zeros(shape, np.uint8).tobytes())
    with env.begin(write=True) as txn:
        txn.put(b"00000000", datum.SerializeToString())
    env.close()


def fake_data_root(root: Path, catalog, shape) -> Path:
    """<root>/data/<split>_train|_valid/lmdb (one shared one-image LMDB) and mean.binaryproto."""
    shared = root / "one_image_lmdb"
    one_image_lmdb(shared, shape)
    data = root / "data"
    for net in catalog:
        for folder in (f"{net.split}_train", f"{net.val_split}_valid"):
            (data / folder).mkdir(parents=True, exist_ok=True)
            if not (data / folder / "lmdb").exists():
                (data / folder / "lmdb").symlink_to(shared)
                protoio.write_mean(data / folder / "mean.binaryproto", np.zeros(shape, np.float32))
    return data


CONSTRUCT = r"""
import json, os, sys
import caffe
caffe.set_mode_cpu()
for job in json.load(sys.stdin):
    os.chdir(job["dir"])
    phase = caffe.TRAIN if job["phase"] == "train" else caffe.TEST
    net = caffe.Net(job["file"], phase)
    print(json.dumps({"file": job["file"], "dir": job["dir"], "params": list(net.params.keys()),
                      "shapes": {k: list(v.data.shape) for k, v in net.blobs.items()}}), flush=True)
    del net
"""


def construct_all(real_caffe, out: Path, files) -> list[dict]:
    """Construct each distinct net file (comments aside) with pycaffe, in one process; returns what it saw."""
    jobs, seen = [], set()
    for net_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for name, phase in files:
            text = "\n".join(line for line in (net_dir / name).read_text().splitlines() if not line.startswith("#"))
            if text not in seen:
                seen.add(text)
                jobs.append({"dir": str(net_dir), "file": name, "phase": phase})
    env = real_caffe.env()
    env["GLOG_minloglevel"] = "2"
    proc = subprocess.run([sys.executable, "-c", CONSTRUCT], input=json.dumps(jobs), env=env, capture_output=True,
                          text=True, timeout=1800)
    done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        failed = jobs[len(done)]
        pytest.fail(f"Caffe could not construct {failed['dir']}/{failed['file']} ({failed['phase']}):\n"
                    f"{proc.stderr[-3000:]}")
    assert len(done) == len(jobs)
    return done


@pytest.mark.parametrize("fmt", ["current", "2014"])
def test_caffe_constructs_every_net(real_caffe, tmp_path, fmt):
    catalog = paper_catalog()
    backend = "lmdb" if fmt == "current" else "leveldb"
    data = fake_data_root(tmp_path, catalog, (3, 256, 256))
    if backend == "leveldb":            # the 2014 format reads LevelDB: the same image in a LevelDB
        _leveldb_copies(data)
    netgen.render_experiment(catalog, tmp_path / "gen", data, format=fmt, batch_size=1, mode="cpu")
    done = construct_all(real_caffe, tmp_path / "gen", [("imagenet_train.prototxt", "train"),
                                                         ("imagenet_val.prototxt", "test")])
    # distinct train nets: base (= whole, reduced) + 7 frozen + 7 fine-tuned transfer + 7 nolearn (+ the 2014
    # netbase with padding layers); distinct val nets: base + 7 renamed (+ netbase)
    trains = [seen for seen in done if seen["file"].endswith("train.prototxt")]
    assert (len(trains), len(done) - len(trains)) == ((22, 8) if fmt == "current" else (23, 9))
    for seen in done:
        assert seen["shapes"]["data"] == [1, 3, 227, 227]
        fc8 = "fc8" if "fc8" in seen["shapes"] else "fc8-new"
        assert seen["shapes"][fc8] == [1, 1000]
        if seen["file"].endswith("train.prototxt"):
            assert len(seen["params"]) == 8


def _leveldb_copies(data: Path) -> None:
    import plyvel
    shared = data.parent / "one_image_leveldb"
    db = plyvel.DB(str(shared), create_if_missing=True)
    env = lmdb.open(str(data.parent / "one_image_lmdb"), readonly=True)
    with env.begin() as txn:
        for key, value in txn.cursor():
            db.put(key, value)
    db.close()
    for folder in data.iterdir():
        if not (folder / "leveldb").exists():
            (folder / "leveldb").symlink_to(shared)


def test_caffe_constructs_the_small_nets(real_caffe, tmp_path):
    catalog = transfer_catalog(splits=("0",), pairs=("AA", "AB"), fine_tuned=True, natman=False, nolearn=True,
                               reduced=(), whole=True)
    data = fake_data_root(tmp_path, catalog, (1, 28, 28))
    netgen.render_experiment(catalog, tmp_path / "gen", data, arch="caffenet_small", n_classes=10)
    done = construct_all(real_caffe, tmp_path / "gen", [("train.prototxt", "train"), ("val.prototxt", "test")])
    for seen in done:
        assert seen["shapes"]["data"] == [64 if seen["file"] == "train.prototxt" else 100, 1, 28, 28]
        assert seen["shapes"]["pool5"][1:] == [64, 3, 3]
