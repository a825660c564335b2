"""A hostile user's second pass over bad inputs (issue 18): what the five classes before did not cover.

Damaged files (a truncated LMDB, a database record that is no Datum, a truncated weights file or solver state, a
damaged .solverstate.rng, a binary file given as a prototxt), malformed nets (a syntax error, an unknown field, a
bottom no layer makes), a diverging run as parse_log and submit --status report it, logs that are no logs, and
md5 manifests with a wrong or malformed line. Each case runs the real tool in a subprocess on real files and
checks the exit code, that the message names the file or value, that there is no traceback, and that nothing
written before is lost.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest

from convnet_transfer.formats import protoio

from test_databases import make_images, write_list
from test_engine_solver import make_case
from test_fault_values import refused, snapshot, tool

NO_GLOG = "not a Caffe log"


def one_error_line(result, *names: str) -> str:
    """refused(...), and exactly one glog E line (caffe_torch's error) naming every one of `names`."""
    refused(result, *names)
    lines = [line for line in result.stderr.splitlines() if line.startswith("E")]
    assert len(lines) == 1 and all(name in lines[0] for name in names), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny net directory (tests/test_engine_solver.make_case) trained for 2 iterations: snap_iter_2.*."""
    case = make_case(tmp_path_factory.mktemp("trained") / "net", max_iter=2, snapshot=2)
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case)
    assert result.returncode == 0, result.stderr[-3000:]
    return case


@pytest.fixture
def net(trained, tmp_path) -> Path:
    """A fresh copy of the trained net directory, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "net"))


# ---------------------------------------------------------------- make_dbs: bad images, damaged databases

@pytest.fixture
def image_list(tmp_path) -> tuple[Path, list[str]]:
    """6 images under tmp_path/images and their list; returns (list, make_dbs' arguments without --out)."""
    items = make_images(tmp_path / "images", 6)
    listing = write_list(tmp_path / "files.txt", items)
    return listing, ["--list", listing, "--root", tmp_path / "images", "--size", "8x8", "--workers", "0",
                     "--no-progress"]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_make_dbs_names_a_missing_or_corrupt_image_and_skip_bad_reports_it(tmp_path, image_list, damage):
    listing, args = image_list
    if damage == "corrupt":
        (tmp_path / "images" / "bad.png").write_bytes(b"not a PNG")
    with listing.open("a") as f:
        f.write(f"{'bad.png' if damage == 'corrupt' else 'n00/gone.png'} 1\n")
    name = "bad.png" if damage == "corrupt" else "n00/gone.png"
    result = tool("make_dbs", *args, "--out", tmp_path / "db")
    # was "Fix or remove the image": removing it gives the same error, removing its line makes another list,
    # which the resume refuses
    assert "Put a readable image there and run the same command again" in refused(result, name, str(listing))
    assert not (tmp_path / "db").exists()
    done = tool("make_dbs", *args, "--out", tmp_path / "db", "--skip-bad")   # the same command resumes
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout + done.stderr
    assert name in (tmp_path / "db.skipped.txt").read_text()


def test_make_dbs_refuses_a_partial_database_it_did_not_start(tmp_path, image_list):
    _, args = image_list
    (tmp_path / "db.partial").mkdir()
    (tmp_path / "db.partial" / "data.mdb").write_bytes(np.random.default_rng(0).bytes(10000))
    before = snapshot(tmp_path)
    refused(tool("make_dbs", *args, "--out", tmp_path / "db"), f"{tmp_path / 'db.partial'}", "move or delete it")
    assert snapshot(tmp_path) == before


def test_make_dbs_refuses_a_finished_database_truncated_since(tmp_path, image_list):
    """Was: `6 records in db`, exit 0, for a database whose data.mdb a copy had cut short."""
    _, args = image_list
    assert tool("make_dbs", *args, "--out", tmp_path / "db").returncode == 0
    with (tmp_path / "db" / "data.mdb").open("r+b") as f:
        f.truncate(5000)
    before = snapshot(tmp_path)
    output = refused(tool("make_dbs", *args, "--out", tmp_path / "db"), str(tmp_path / "db"), "truncated")
    assert "delete it and run the same command again" in output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- caffe_torch: damaged databases, weights, states

@pytest.mark.slow
def test_caffe_torch_names_a_truncated_lmdb_instead_of_dying_of_sigbus(net):
    """Was: exit 135 (SIGBUS) without a word, when a page of the database lay past the end of the cut file."""
    for f in net.glob("snap_iter_2.*"):
        f.unlink()
    with (net / "train_lmdb" / "data.mdb").open("r+b") as f:
        f.truncate(5000)
    before = snapshot(net)
    for command in (["train", "-solver", "solver.prototxt"], ["time", "-model", "net.prototxt", "-iterations", "1"]):
        line = one_error_line(tool("caffe_torch", *command, cwd=net), "train_lmdb", "truncated")
        assert "re-create it (tools/make_dbs)" in line
    assert snapshot(net) == before


def _damage_record(db: Path, value: bytes) -> None:
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        key = list(txn.cursor().iternext(values=False))[3]
        txn.put(key, value)
    env.close()


@pytest.mark.slow
def test_caffe_torch_names_a_garbage_lmdb_and_a_record_that_is_no_datum_or_of_another_shape(net):
    from convnet_transfer.data import databases
    pristine = shutil.copytree(net / "train_lmdb", net.parent / "pristine_lmdb")
    cases = [("garbage", "MDB_INVALID"), ("not a Datum", "not a readable Datum"), ("shape", "(3, 5, 5)")]
    for damage, said in cases:
        shutil.rmtree(net / "train_lmdb")
        shutil.copytree(pristine, net / "train_lmdb")
        if damage == "garbage":
            (net / "train_lmdb" / "data.mdb").write_bytes(np.random.default_rng(1).bytes(12288))
        else:
            _damage_record(net / "train_lmdb", b"\xff\xff garbage" if damage == "not a Datum"
                           else databases.datum_bytes(np.zeros((3, 5, 5), np.uint8), 1))
        result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "snap_iter_2.caffemodel",
                      cwd=net)
        one_error_line(result, "train_lmdb", said)


@pytest.mark.slow
def test_caffe_torch_names_truncated_weights_solver_states_and_means(net):
    weights = (net / "snap_iter_2.caffemodel").read_bytes()
    (net / "cut.caffemodel").write_bytes(weights[:300])
    (net / "cut.solverstate").write_bytes((net / "snap_iter_2.solverstate").read_bytes()[:50])
    before = snapshot(net)
    one_error_line(tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "cut.caffemodel", cwd=net),
                   "cut.caffemodel", "not a binary NetParameter")
    one_error_line(tool("caffe_torch", "test", "-model", "net.prototxt", "-weights", "cut.caffemodel",
                        "-iterations", "1", cwd=net), "cut.caffemodel", "truncated")
    one_error_line(tool("caffe_torch", "train", "-solver", "solver.prototxt", "-snapshot", "cut.solverstate",
                        cwd=net), "cut.solverstate", "not a binary SolverState")
    assert snapshot(net) == before
    protoio.write_mean(net / "mean.binaryproto", np.ones((1, 4, 4), np.float32))   # another database's mean
    one_error_line(tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=net),
                   "mean.binaryproto", "(1, 4, 4)", "(3, 8, 8)")


@pytest.mark.slow
@pytest.mark.parametrize("rng", [b"garbage", b'{"iter": 2, "tor', b'{"iter": 2, "torch": "AAAA"}', b"[1, 2]",
                                 b"\xff\xfe"])
def test_caffe_torch_names_a_damaged_rng_side_file(net, rng):
    """Was: a json/KeyError/RuntimeError traceback from the resume (train.sh resumes from the newest state)."""
    (net / "snap_iter_2.solverstate.rng").write_bytes(rng)
    before = snapshot(net)
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-snapshot", "snap_iter_2.solverstate",
                  cwd=net)
    line = one_error_line(result, "snap_iter_2.solverstate.rng", "damaged")
    assert "delete it" in line
    assert snapshot(net) == before


@pytest.mark.slow
@pytest.mark.parametrize("iterations", ["0", "-5"])
def test_caffe_torch_test_and_time_refuse_fewer_than_one_iteration(net, iterations):
    """Was: a ZeroDivisionError (0) or KeyError (-5) traceback after the net was built (Caffe prints nan)."""
    for command in (["test", "-model", "net.prototxt", "-weights", "snap_iter_2.caffemodel"],
                    ["time", "-model", "net.prototxt"]):
        output = refused(tool("caffe_torch", *command, "-iterations", iterations, cwd=net),
                         f"-iterations {iterations}", "at least 1")
        assert len(output.splitlines()) == 1, output


# ---------------------------------------------------------------- malformed prototxts

MALFORMED = {
    "syntax": ('name: "tiny"', 'name: "tiny" {', "net.prototxt:1:14"),
    "unknown field": ('name: "tiny"', 'name: "tiny"\nfoo_field: 3', 'no field named "foo_field"'),
    "missing bottom": ('bottom: "pool1" top: "fc6"', 'bottom: "poolX" top: "fc6"', "Unknown bottom blob 'poolX'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(MALFORMED))
def test_caffe_torch_names_a_malformed_net_for_train_test_and_time(net, fault):
    old, new, said = MALFORMED[fault]
    text = (net / "net.prototxt").read_text()
    assert old in text
    (net / "net.prototxt").write_text(text.replace(old, new, 1))
    before = snapshot(net)
    for command in (["train", "-solver", "solver.prototxt"],
                    ["test", "-model", "net.prototxt", "-weights", "snap_iter_2.caffemodel", "-iterations", "1"],
                    ["time", "-model", "net.prototxt", "-iterations", "1"]):
        one_error_line(tool("caffe_torch", *command, cwd=net), said)
    assert snapshot(net) == before


@pytest.mark.slow
def test_a_binary_file_given_as_a_prototxt_is_named(net):
    """Was: a UnicodeDecodeError traceback (caffe_torch), `Error: 'utf-8' codec can't decode ...` naming no file
    (gen_nets --prototxt)."""
    shutil.copy(net / "snap_iter_2.caffemodel", net / "weights.prototxt")
    before = snapshot(net)
    one_error_line(tool("caffe_torch", "train", "-solver", "weights.prototxt", cwd=net), "weights.prototxt",
                   "not a text SolverParameter prototxt")
    one_error_line(tool("caffe_torch", "time", "-model", "weights.prototxt", cwd=net), "weights.prototxt",
                   "is it a binary file")
    refused(tool("gen_nets", "--prototxt", net / "weights.prototxt", "--transferable", "conv1,fc6", "--all",
                 "--out", net / "tree"), "weights.prototxt", "not a text NetParameter prototxt")
    assert snapshot(net) == before


def test_gen_nets_refuses_a_prototxt_with_a_bottom_no_layer_makes(tmp_path):
    """Was: 65 nets rendered, exit 0; Caffe then stops each at training time on `Unknown bottom blob`."""
    case = make_case(tmp_path / "case")
    text = (case / "net.prototxt").read_text()
    (case / "bad.prototxt").write_text(text.replace('bottom: "pool1" top: "fc6"', 'bottom: "poolX" top: "fc6"'))
    args = ["--transferable", "conv1,fc6", "--all", "--out", tmp_path / "tree"]
    refused(tool("gen_nets", "--prototxt", case / "bad.prototxt", *args), "bad.prototxt", "'fc6'", "'poolX'",
            "TRAIN", "Unknown bottom blob")
    assert not (tmp_path / "tree").exists()
    # a bottom made in one phase only is missing in the other
    test_only = text.replace('layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }',
                             'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
                             'layer { name: "side" type: "ReLU" bottom: "conv1" top: "side" include { phase: TEST } }\n'
                             'layer { name: "use" type: "ReLU" bottom: "side" top: "use" }')
    (case / "phase.prototxt").write_text(test_only)
    refused(tool("gen_nets", "--prototxt", case / "phase.prototxt", *args), "'use'", "'side'", "TRAIN")
    good = tool("gen_nets", "--prototxt", case / "net.prototxt", *args)   # the intact net renders
    assert good.returncode == 0, good.stderr


# ---------------------------------------------------------------- a diverging run, as the reports say it

@pytest.mark.slow
def test_a_diverged_run_is_named_diverged_by_parse_log(tmp_path):
    case = make_case(tmp_path / "net", base_lr=1e6, max_iter=20, snapshot=5)
    result = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case)
    assert result.returncode == 3, result.stderr[-3000:]
    line = one_error_line(result, "the loss is nan", "training diverged", "Lower base_lr")
    (case / "net.20261204-213348.log").write_text(result.stderr)
    # was: an `unreadable log line` warning about this very line, and the status `incomplete`
    parsed = tool("parse_log", case / "net.20261204-213348.log")
    assert parsed.returncode == 0 and "the loss diverged at iteration" in parsed.stdout, parsed.stdout
    assert "unreadable" not in parsed.stderr, parsed.stderr
    summary = tool("parse_log", case)
    assert summary.returncode == 0 and " diverged " in summary.stdout, summary.stdout + summary.stderr
    assert "unreadable" not in summary.stderr, summary.stderr
    assert line in (case / "net.20261204-213348.log").read_text()


# ---------------------------------------------------------------- logs that are no logs; trees with nothing to plot

def test_parse_log_refuses_a_file_that_is_no_caffe_log(tmp_path):
    """Was: warnings, then `no iterations` and exit 0, for a binary file, another program's text or an empty file."""
    (tmp_path / "binary.log").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "text.log").write_text("hello, this is no Caffe log\n")
    (tmp_path / "empty.log").write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.train").write_text("made before")
    before = snapshot(tmp_path)
    for name in ("binary.log", "text.log", "empty.log"):
        output = refused(tool("parse_log", tmp_path / name, "--out", tmp_path / "out"), name, NO_GLOG)
        assert output.count("Error:") == 1
    assert snapshot(tmp_path) == before


def test_parse_log_reads_a_log_cut_mid_line_and_warns(trained, tmp_path):
    text = tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "snap_iter_2.caffemodel",
                cwd=shutil.copytree(trained, tmp_path / "net")).stderr
    cut = tmp_path / "cut.log"
    cut.write_text(text[: text.rindex("Test net output #0") + 12])
    result = tool("parse_log", cut)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"{cut}:" in result.stderr and "ends mid-line" in result.stderr


def test_parse_log_and_plot_results_on_empty_and_garbage_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(tool("parse_log", tmp_path / "empty"), str(tmp_path / "empty"), "holds no Caffe log")
    refused(tool("plot_results", "--results", tmp_path / "empty", "--out", tmp_path / "fig"),
            str(tmp_path / "empty"), "holds no Caffe log")
    garbage = tmp_path / "garbage" / "net"
    garbage.mkdir(parents=True)
    (garbage / "x.log").write_bytes(np.random.default_rng(0).bytes(3000))
    refused(tool("plot_results", "--results", tmp_path / "garbage", "--out", tmp_path / "fig"),
            "nothing to plot")
    refused(tool("plot_results", "--results", garbage / "x.log", "--out", tmp_path / "fig"),
            "x.log", "not a summary that tools/parse_log wrote")
    assert not (tmp_path / "fig").exists()


def test_parse_log_takes_no_backup_file_for_a_log(trained, tmp_path):
    """`.o<job>` is a Slurm/SGE job's output; `solver.prototxt.orig`, `notes.old` are not logs (were counted,
    each with a `no Caffe (glog) lines` warning)."""
    net = Path(shutil.copytree(trained, tmp_path / "net"))
    (net / "net.20261204-213348.log").write_text(
        tool("caffe_torch", "train", "-solver", "solver.prototxt", "-weights", "snap_iter_2.caffemodel",
             cwd=net).stderr)
    (net / "solver.prototxt.orig").write_text((net / "solver.prototxt").read_text())
    (net / "notes.old").write_text("lr 0.05 diverged?\n")
    result = tool("parse_log", net)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert ".orig" not in result.stderr and "notes.old" not in result.stderr, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[-2:] == ["logs", "notes"] and row.split()[-1] == "1", result.stdout   # one log, no notes


# ---------------------------------------------------------------- gen_nets: no such net, a data root that is not there

def test_gen_nets_only_matching_nothing_and_damaged_nets_and_jobs_lists(tmp_path):
    refused(tool("gen_nets", "--only", "zzz*", "--out", tmp_path / "tree"), "'zzz*'", "gen_nets --list")
    assert not (tmp_path / "tree").exists()
    made = tool("gen_nets", "--only", "half0A", "--data", tmp_path / "nowhere", "--out", tmp_path / "tree",
                "--scale", "0.001")
    assert made.returncode == 0 and f"{tmp_path / 'nowhere'}/half0A_train" in made.stdout + made.stderr
    assert "make them with tools/make_dbs" in made.stdout + made.stderr
    # was: a traceback for JSON that is no list of nets; gen_nets rewrote the nets (other settings) before it
    # refused the damaged nets.json
    for text, said in [("not json {", "not valid JSON"), ('{"a": 1}', "not a list of nets"),
                       ("[1]", "not a list of nets")]:
        (tmp_path / "tree" / "nets.json").write_text(text)
        before = snapshot(tmp_path / "tree")
        refused(tool("gen_nets", "--only", "half0A", "--out", tmp_path / "tree", "--scale", "0.002"),
                "nets.json", said, "delete it")
        refused(tool("submit", "--status", tmp_path / "tree"), "nets.json", said)
        assert snapshot(tmp_path / "tree") == before
    (tmp_path / "tree" / "nets.json").unlink()
    assert tool("gen_nets", "--only", "half0A", "--out", tmp_path / "tree", "--scale", "0.001").returncode == 0
    (tmp_path / "tree" / "slurm").mkdir()
    (tmp_path / "tree" / "slurm" / "jobs.json").write_text('{"job_id": 1}')
    refused(tool("submit", "--status", tmp_path / "tree"), "jobs.json", "not the job list", "squeue")


# ---------------------------------------------------------------- md5 manifests

@pytest.fixture
def lists(tmp_path) -> list:
    (tmp_path / "train.txt").write_text("".join(f"c{i % 4}/{i}.png {i % 4}\n" for i in range(16)))
    (tmp_path / "val.txt").write_text("".join(f"v{i % 4}/{i}.png {i % 4}\n" for i in range(8)))
    return ["--train", tmp_path / "train.txt", "--val", tmp_path / "val.txt", "--n-classes", "4", "--seeds", "0",
            "--reduced", "none", "--no-progress"]


def test_make_splits_wrong_and_malformed_manifest(tmp_path, lists):
    assert tool("make_splits", *lists, "--out", tmp_path / "made").returncode == 0
    manifest = (tmp_path / "made" / "md5sums.txt").read_text()
    first_md5 = manifest.split()[0]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(manifest.replace(first_md5, "0" * 32, 1))
    refused(tool("make_splits", *lists, "--out", tmp_path / "out", "--manifest", wrong),
            "half0A_train/files.txt", first_md5, "0" * 32, "--accept-new")
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("garbage line\n" + manifest)
    refused(tool("make_splits", *lists, "--out", tmp_path / "out", "--manifest", malformed),
            f"{malformed}:1", "'garbage line'")
    assert not (tmp_path / "out").exists()


def test_run_experiment_names_a_malformed_md5sums_txt(tmp_path):
    """Was: a SplitError traceback from stage 1."""
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "md5sums.txt").write_text("junk\n")
    before = snapshot(tmp_path)
    result = tool("run_experiment", "--quick", "--out", tmp_path / "out")
    refused(result, f"{data / 'md5sums.txt'}:1", "'junk'", "mend that line")
    assert snapshot(tmp_path) == before
