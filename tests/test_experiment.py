"""tools/run_experiment --quick end to end on the real Fashion-MNIST (Debian's dataset-fashion-mnist) with our
engine: every stage's outputs, a re-run that retrains nothing, a half-written database redone, and a run killed
mid-training that, run again, resumes the stopped nets and ends with the same results."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet_transfer.data import databases, datasets, splits
from convnet_transfer import experiment
from convnet_transfer.results import logs

REPO = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, str(REPO / "tools" / "run_experiment")]
QUICK = experiment.settings_for(quick=True)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (datasets.FASHION_MNIST_ROOT / "train-labels-idx1-ubyte.gz").exists(),
                       reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"),
    pytest.mark.skipif(subprocess.run(["which", "make", "flock"], capture_output=True).returncode != 0,
                       reason="GNU make and flock are needed for the local runner"),
]


def run_tool(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(TOOL + ["--quick", "--no-progress", "--out", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, env=_env())


def _env() -> dict:
    env = dict(os.environ, CONVNET_TRANSFER_NO_VENV="1")
    env.pop("CAFFE", None)
    return env


def log_files(nets_dir: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.glob("*.log")) for d in nets_dir.iterdir() if d.is_dir()}


def accuracies(out: Path) -> dict[str, float]:
    return {r.net: r.final_accuracy for r in logs.summarize_tree(out / "nets")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment") / "quick"
    result = run_tool(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_lists_and_manifest(quick_run):
    out, _ = quick_run
    data = out / "data"
    manifest = splits.read_manifest(data / "md5sums.txt")
    expected = {f"{s}_{phase}/files.txt" for s in ("whole", "half0A", "half0B", "halfnatmanA", "halfnatmanB")
                for phase in ("train", "valid")}
    assert set(manifest) == expected
    for name, md5 in manifest.items():
        assert hashlib.md5((data / name).read_bytes()).hexdigest() == md5, name
    # the halves: 5 classes each, disjoint, labels renumbered 0..4; the dissimilar halves as the adapter says
    a = {int(line.split()[0]) for line in (data / "half0A_train/idxmap.txt").read_text().splitlines()}
    b = {int(line.split()[0]) for line in (data / "half0B_train/idxmap.txt").read_text().splitlines()}
    assert len(a) == len(b) == 5 and not a & b
    natural, _ = datasets.FashionMNIST().dissimilar_groups["natman"]
    assert {int(line.split()[0]) for line in (data / "halfnatmanA_train/idxmap.txt").read_text().splitlines()} \
        == set(natural)
    whole = splits.read_list(data / "whole_train/files.txt")
    assert len(whole) == 10 * QUICK.per_class


def test_databases_hold_the_images(quick_run):
    out, _ = quick_run
    fashion = datasets.FashionMNIST()
    for split in ("half0A_train", "half0A_valid", "half0B_train", "half0B_valid"):
        folder = out / "data" / split
        assert databases.is_complete(folder / "lmdb"), split
        items = splits.read_list(folder / "files.txt")
        reader = databases.open_reader(folder / "lmdb")
        assert len(reader) == len(items)
        key, value = next(iter(reader))
        index, name = key.decode().split("_", 1)
        image, label = databases.decode_datum(value)
        assert (name, label) in items and int(index) == 0
        assert image.shape == (1, 28, 28) and np.array_equal(image[0], fashion.image(name))
    mean = databases.protoio.read_mean(out / "data" / "half0A_train" / "mean.binaryproto")
    assert mean.shape == (1, 28, 28) and 20 < mean.mean() < 120


def test_every_net_trained_logged_and_plotted(quick_run):
    out, result = quick_run
    names = experiment.net_catalog(QUICK).names
    assert len(names) == 16
    nets_json = {e["name"] for e in json.loads((out / "nets" / "nets.json").read_text())}
    assert nets_json == set(names)
    for name in names:
        assert (out / "nets" / name / f"snapshot_iter_{QUICK.max_iter}.caffemodel").is_file(), name
    rows = {r.net: r for r in logs.summarize_tree(out / "nets")}
    assert set(rows) == set(names)
    for row in rows.values():
        assert row.status == "complete" and row.final_iter == QUICK.max_iter, row
        assert 0.0 <= row.final_accuracy <= 1.0, row
    assert rows["half0A"].final_accuracy > 0.4          # 5 classes: chance is 0.2
    figure = out / "results" / "fig2_transfer.png"
    assert figure.stat().st_size > 20_000
    with Image.open(figure) as im:
        assert im.size[0] > 600 and im.size[1] > 300
    table = (out / "results" / "fig2_transfer.txt").read_text()
    for series in ("baseB", "BnB", "AnB"):
        assert sum(line.split()[0] == series for line in table.splitlines()[2:]) == (1 if series == "baseB" else 7)
    assert table in result.stdout and f"Figure: {figure}" in result.stdout
    paired = (out / "results" / "fig2_paired.txt").read_text()
    assert paired in result.stdout and "relative AnB" in paired
    assert "The README's figure" not in result.stdout          # only the default run redraws plots/
    assert "Does transfer AnB fall with n?" in result.stdout and "Paper:" in result.stdout
    assert "4. Does transfer between dissimilar halves" not in result.stdout    # not trained without --natman
    assert not (out / "results" / "fig3_natman_random.png").exists()


def test_rerun_redoes_nothing(quick_run):
    out, first = quick_run
    before = log_files(out / "nets")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*") if p.is_file()}
    result = run_tool(out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert log_files(out / "nets") == before                      # no net trained again
    assert "training 0 of 16 nets" in result.stderr
    assert "10 match their published md5" in result.stderr       # the first run's manifest, checked
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps    # lists and databases untouched
    assert (out / "results" / "fig2_transfer.txt").read_text() in first.stdout


def test_changed_lists_are_refused(quick_run, tmp_path):
    out, _ = quick_run
    data = tmp_path / "data"
    data.mkdir()
    manifest = (out / "data" / "md5sums.txt").read_text()
    (data / "md5sums.txt").write_text(manifest.replace(manifest[:32], "0" * 32, 1))
    with pytest.raises(experiment.ExperimentError, match="made from other images or settings"):
        experiment.make_lists(datasets.FashionMNIST(), data, QUICK, progress=False)


def test_half_written_database_is_redone(quick_run, tmp_path):
    out, _ = quick_run
    data = tmp_path / "data"
    experiment.make_lists(datasets.FashionMNIST(), data, QUICK, progress=False)
    split = ["half0A_valid"]
    experiment.make_databases(datasets.FashionMNIST(), data, split, QUICK, progress=False)
    db = data / "half0A_valid" / "lmdb"
    keys = list(databases.open_reader(db).keys())
    (db / databases.MARKER).unlink()                           # as if killed before the marker was written
    (data / "half0A_valid" / "lmdb.partial").mkdir()           # and a leftover of a killed writer
    assert not databases.is_complete(db)
    experiment.make_databases(datasets.FashionMNIST(), data, split, QUICK, progress=False)
    assert databases.is_complete(db) and list(databases.open_reader(db).keys()) == keys
    assert not (data / "half0A_valid" / "lmdb.partial").exists()
    # the same records as the full run's database of that split
    assert keys == list(databases.open_reader(out / "data" / "half0A_valid" / "lmdb").keys())


def test_killed_run_resumes_to_the_same_results(quick_run, tmp_path):
    out_full, _ = quick_run
    out = tmp_path / "killed"
    proc = subprocess.Popen(TOOL + ["--quick", "--no-progress", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    nets = out / "nets"

    def some_transfer_nets_done():
        done = [p for p in nets.glob("transfer*/snapshot_iter_*.caffemodel")]
        return len({p.parent for p in done}) >= 2

    deadline = time.monotonic() + 300
    while not some_transfer_nets_done() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)                      # as `kill` on the job: the runner stops the nets
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]              # 128 + SIGTERM
    finished = {d.name for d in nets.iterdir() if d.is_dir()
                and (d / f"snapshot_iter_{QUICK.max_iter}.caffemodel").exists()}
    assert 0 < len(finished) < 16, finished
    before = log_files(nets)
    snapshotted = {d.name for d in nets.iterdir() if d.is_dir() and d.name not in finished
                   and any(d.glob("snapshot_iter_*.solverstate"))}

    result = run_tool(out)
    assert result.returncode == 0, result.stderr[-3000:]
    after = log_files(nets)
    for name in finished:                                       # finished nets: not trained again
        assert after[name] == before[name], name
    resumed = [n for n in after if n not in finished and before.get(n)]
    assert resumed, "no net was stopped mid-training"
    for name in resumed:                                        # stopped nets: a second log
        assert len(after[name]) == len(before[name]) + 1, name
    for name in snapshotted:                                    # ... that went on from its newest snapshot
        assert "Restoring previous solver status" in (nets / name / after[name][-1]).read_text(), name
    # every net has a fixed random seed and the engine resumes exactly: the same accuracies as the full run
    assert accuracies(out) == accuracies(out_full)


def test_real_caffe_trains_the_same_nets(real_caffe, quick_run, tmp_path):
    """--engine caffe: the same lists, databases and prototxts, trained by real Caffe; its logs parse the same."""
    out_full, _ = quick_run
    out = tmp_path / "caffe"
    result = run_tool(out, "--engine", "caffe")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with engine caffe" in result.stderr
    for name in experiment.net_catalog(QUICK).names:          # the runner's line: `<net>: <command> >> <log>`
        command = re.search(rf"^{name}: (\S+) train -solver", result.stderr, re.M)
        assert command and command.group(1).endswith("/bin/caffe"), (name, result.stderr[-2000:])
        assert "Optimization Done." in next((out / "nets" / name).glob("*.log")).read_text(), name
    assert (out / "data" / "md5sums.txt").read_text() == (out_full / "data" / "md5sums.txt").read_text()
    for name in ("half0A", "transfer0A0B_1_3"):
        for f in ("train.prototxt", "solver.prototxt"):
            assert (out / "nets" / name / f).read_text() == (out_full / "nets" / name / f).read_text()
    rows = logs.summarize_tree(out / "nets")
    assert len(rows) == 16 and all(r.status == "complete" for r in rows)
    assert {r.net: r.final_accuracy for r in rows}["half0A"] > 0.4      # learnt (5 classes: chance 0.2)


def _entries(series_values: dict[str, dict[int, list[float]]], relative: bool) -> list[dict]:
    table = []
    for series, by_n in series_values.items():
        for n, values in by_n.items():
            table.append({"series": ("relative " if relative else "") + series, "x": n, "mean": np.mean(values),
                          "std": np.std(values), "min": min(values), "max": max(values), "count": len(values)})
    return table


def test_a_run_that_cannot_go_on_stops_before_anything_is_made(tmp_path):
    """Real Caffe asked for and not found, a GPU that PyTorch here does not see (one past the devices there
    are), or more reduced-data images per class than a class has: a clear error (exit 1) before anything is
    written, not a traceback after the lists and databases."""
    import torch
    absent = str(torch.cuda.device_count())
    cases = [(["--engine", "caffe"], {"CAFFE_ROOT": str(tmp_path / "no-caffe")},
              f"real Caffe was asked for but no caffe binary under {tmp_path / 'no-caffe'}"),
             (["--gpu", absent], {}, f"GPU {absent} asked for, but PyTorch here"),
             (["--reduced", "5,151"], {}, "--reduced 151: the smallest class of fashion-mnist has 150 train images "
                                          "with --per-class; ask for at most 150 per class")]
    for args, env, message in cases:
        out = tmp_path / "out"
        result = subprocess.run(TOOL + ["--quick", "--no-progress", "--out", str(out), *args], capture_output=True,
                                text=True, timeout=300, env=dict(_env(), **env))
        assert result.returncode == 1 and f"Error: {message}" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and not out.exists()
    for option, value, least in (("--seeds", "-1", 0), ("--seeds", ",", 0), ("--reduced", "0", 1),
                                 ("--reduced", "2,x", 1)):
        out = tmp_path / "out"
        result = subprocess.run(TOOL + ["--quick", "--out", str(out), option, value], capture_output=True, text=True,
                                timeout=300, env=_env())
        assert result.returncode == 2 and (f"Invalid value for {option}: '{value}': expected comma-separated "
                                           f"integers of at least {least}") in result.stderr, result.stderr[-2000:]
        assert not out.exists()


def test_findings_judge_differences_by_the_split_to_split_spread():
    # two splits whose paired differences disagree by 2 points (std 0.01): a 0.5-point BnB dip is no finding,
    # a 6-point AnB fall is; AnB+ beats the base nets but not the BnB+ control
    raw = {"baseB": {0: [0.70, 0.90]},
           "AnB": {n: [0.70 - 0.01 * n, 0.90 - 0.01 * n] for n in range(1, 8)},
           "BnB": {n: [0.70 - 0.005 * (n == 4), 0.90 - 0.005 * (n == 4)] for n in range(1, 8)},
           "AnB+": {n: [0.73, 0.93] for n in range(1, 8)}, "BnB+": {n: [0.74, 0.94] for n in range(1, 8)}}
    paired = _entries({s: {n: [v[0] - 0.70 + 0.01, v[1] - 0.90 - 0.01] for n, v in by_n.items()}
                       for s, by_n in raw.items() if s != "baseB"}, relative=True)
    assert experiment.split_spread(paired) == pytest.approx(0.01)
    text = experiment.findings(_entries(raw, relative=False), paired)
    assert "1. Does transfer AnB fall with n? Yes: AnB is 79.0% at n=1 and 73.0% at n=7 (-6.0 points)" in text
    assert "2. Does selffer BnB dip in the middle? Barely: within the split-to-split spread (1.0 points)" in text
    assert "3. Does fine-tuned transfer AnB+ beat the base nets? Yes" in text
    assert "transfer itself adds -1.0 points (No)" in text and "not trained to convergence" in text
    # one split: no spread, said so
    one = {s: {n: v[:1] for n, v in by_n.items()} for s, by_n in raw.items()}
    text = experiment.findings(_entries(one, relative=False), [])
    assert "1. Does transfer AnB fall with n? Yes, on one split (no spread to judge it by)" in text
    assert experiment.findings([], []).startswith("No results to compare yet")
    # the dissimilar halves (Figure 3): their transfer nets fall 15 points at n = 7, random halves' 6
    dissimilar = _entries({"natman": {n: [-0.02 * n - 0.01, -0.02 * n + 0.01] for n in range(1, 8)},
                           "AnB": {n: [v[0] - 0.70, v[1] - 0.90] for n, v in raw["AnB"].items()}}, relative=True)
    text = experiment.findings(_entries(raw, relative=False), paired, dissimilar)
    assert ("4. Does transfer between dissimilar halves lose more than between random halves? Yes: at n=7 the "
            "frozen transfer nets between the dissimilar halves are -14.0 points from the base nets of their target "
            "halves, those between random halves -7.0 points. Paper (natural/man-made): -25.1 points against -8.3 "
            "points") in text
    closer = [dict(e, mean=e["mean"] - 0.065) if e["series"] == "relative AnB" else e for e in dissimilar]
    assert "halves? Barely: within the split-to-split spread (1.0 points)" in experiment.findings(
        _entries(raw, relative=False), paired, closer)
    assert "5. Do transferred features" not in text                  # no random-filter nets
    # random frozen filters: 5 points below the whole-set net at n = 1, 10 at n = 2, ...; AnB: -1, -2, ... -7
    random_filters = _entries({"random": {n: [-0.05 * n] for n in range(1, 8)}}, relative=True)
    text = experiment.findings(_entries(raw, relative=False), paired, dissimilar + random_filters)
    assert ("5. Do transferred features beat random ones? Yes: with its first n layers random and frozen, the "
            "whole-set net is -5.0 points at n=1, -10.0 points at n=2, -15.0 points at n=3 from the whole-set net; "
            "frozen transferred layers (AnB) -1.0 points, -2.0 points, -3.0 points from their base nets (+16.0 "
            "points on average over n=1..7). Paper: -8.4 points, -17.3 points, -57.4 points against +0.3 points, "
            "-0.1 points, -0.6 points") in text


def test_figure_3_and_reduced_data_nets(tmp_path):
    """--natman --random-filters --reduced: the dissimilar halves' base nets and the frozen transfer nets between
    them (AB and BA), the whole-set net with n random frozen layers, and the whole-set net on fewer images train
    too; the results add the Figure 3 analogue and the reduced-data curve (figures and tables), and a fourth and
    a fifth finding taken from Figure 3's table."""
    out = tmp_path / "fig3"
    result = run_tool(out, "--natman", "--random-filters", "--reduced", "5,50")
    assert result.returncode == 0, result.stderr[-3000:]
    settings = experiment.settings_for(quick=True, natman=True, random_filters=True, reduced=(5, 50))
    names = experiment.net_catalog(settings).names
    assert len(names) == 16 + 16 + 8 + 2 and {"transfernatmanBA_1_7", "netbase", "nolearn_1_7", "reduced-0050"} \
        <= set(names)
    assert all((out / "nets" / name / f"snapshot_iter_{QUICK.max_iter}.caffemodel").is_file() for name in names)
    assert len(splits.read_list(out / "data" / "reduced0005_train" / "files.txt")) == 5 * 10
    figure = out / "results" / "fig3_natman_random.png"
    for path in (figure, out / "results" / "reduced.png"):
        with Image.open(path) as im:
            assert im.size[0] > 600 and im.size[1] > 400
    reduced = (out / "results" / "reduced.txt").read_text()
    assert [line.split()[:2] for line in reduced.splitlines()[2:]] == [["reduced", "5"], ["reduced", "50"]]
    assert reduced in result.stdout and f"Reduced data: {out / 'results' / 'reduced.png'}" in result.stdout
    table = (out / "results" / "fig3_natman_random.txt").read_text()
    assert table in result.stdout and f"Figure 3: {figure}" in result.stdout
    rows = [line.split() for line in table.splitlines()[2:]]
    natman = {int(r[2]): float(r[3]) for r in rows if r[:2] == ["relative", "natman"]}
    random_halves = {int(r[2]): float(r[3]) for r in rows if r[:2] == ["relative", "AnB"]}
    assert sorted(natman) == sorted(random_halves) == list(range(1, 8))
    assert all(r[-1] == "2" for r in rows if r[:2] == ["relative", "natman"])     # AB and BA
    line = next(x for x in result.stdout.splitlines() if x.startswith("4. Does transfer between dissimilar"))
    assert (f"between the dissimilar halves are {100 * natman[7]:+.1f} points from the base nets of their target "
            f"halves, those between random halves {100 * random_halves[7]:+.1f} points") in line
    assert line in (out / "results" / "findings.txt").read_text()
    random_filters = {int(r[2]): float(r[3]) for r in rows if r[:2] == ["relative", "random"]}
    whole = float(next(r[2] for r in rows if r[:2] == ["random", "0"]))
    assert sorted(random_filters) == list(range(1, 8))
    assert whole == pytest.approx(accuracies(out)["netbase"], abs=1e-4)        # n = 0: the whole-set net
    line = next(x for x in result.stdout.splitlines() if x.startswith("5. Do transferred features beat random"))
    assert f"the whole-set net is {100 * random_filters[1]:+.1f} points at n=1" in line


def test_own_image_folder_through_lists_and_databases(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c, name in enumerate(("ant", "bee", "cow", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(5):
            size = (40, 30) if i % 2 else (32, 32)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
        Image.fromarray(np.full((32, 32), 7 * c, np.uint8), "L").save(root / name / "grey.png")
    data = datasets.open_dataset("folder", root=root)
    settings = experiment.Settings(seeds=(0,))
    report = experiment.make_lists(data, tmp_path / "data", settings, progress=False)
    assert set(report.md5) == {f"{s}_{p}/files.txt" for s in ("whole", "half0A", "half0B") for p in ("train", "valid")}
    experiment.make_databases(data, tmp_path / "data", ["half0A_train", "whole_valid"], settings, progress=False)
    for split in ("half0A_train", "whole_valid"):
        items = splits.read_list(tmp_path / "data" / split / "files.txt")
        records = list(databases.open_reader(tmp_path / "data" / split / "lmdb"))
        assert len(records) == len(items)
        for key, value in records:
            name = key.decode().split("_", 1)[1]
            image, label = databases.decode_datum(value)
            assert (name, label) in items and image.shape == (3, 32, 32)    # colour, resized to 32x32
            if name.endswith("grey.png"):
                assert (image == image[0]).all()                              # grey repeated in B, G, R
            elif Image.open(root / name).size == (32, 32):                   # not resized: the exact BGR pixels
                assert np.array_equal(image, np.asarray(Image.open(root / name))[:, :, ::-1].transpose(2, 0, 1))
