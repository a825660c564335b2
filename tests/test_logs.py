"""convnet_transfer.results.logs: Caffe logs of every era -> tables; stitching restarted runs; the results summary.

Synthetic logs are written here line by line in each era's exact format; the 2014 release's logs are read and
checked against values read by hand (zcat | grep) from the files.
"""
import datetime as dt
import gzip
import json
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from convnet_transfer.results import logs
from convnet_transfer.training.engine import glog as engine_glog

pytestmark = pytest.mark.filterwarnings("ignore::convnet_transfer.results.logs.LogWarning")

T0 = dt.datetime(2026, 3, 1, 10, 0, 0)


def line(t: dt.datetime, message: str, where: str = "solver.cpp:239", severity: str = "I") -> str:
    return f"{severity}{t:%m%d %H:%M:%S}.{t.microsecond:06d} 12345 {where}] {message}"


def current_log(iters, t0=T0, *, display=20, test_interval=100, lr=0.01, test_nets=2, loss0=7.0, acc0=0.1,
                tick=1.0, final=True):
    """A log as current Caffe writes it: train outputs with loss weights, two test nets with two outputs."""
    out, t = [line(t0, "Solving CaffeNet", "solver.cpp:289")], t0
    for it in iters:
        t += dt.timedelta(seconds=tick)
        if it % test_interval == 0:
            for k in range(test_nets):
                out.append(line(t, f"Iteration {it}, Testing net (#{k})", "solver.cpp:347"))
                out.append(line(t, f"    Test net output #0: accuracy = {acc0 + it / 1e4 + k / 100:g}", "solver.cpp:414"))
                out.append(line(t, f"    Test net output #1: loss = {loss0 - it / 1e3:g} (* 1 = {loss0 - it / 1e3:g} loss)",
                                "solver.cpp:414"))
        if it % display == 0 and (it < iters[-1] or not final):
            out.append(line(t, f"Iteration {it} (2.5 iter/s, 8s/{display} iters), loss = {loss0 - it / 1e3:g}"))
            out.append(line(t, f"    Train net output #0: loss = {loss0 - it / 1e3 + 0.5:g} (* 1 = {loss0 - it / 1e3 + 0.5:g} loss)",
                            "solver.cpp:258"))
            out.append(line(t, f"    Train net output #1: top5 = {it / 1e4:g}", "solver.cpp:258"))
            out.append(line(t, f"Iteration {it}, lr = {lr:g}", "sgd_solver.cpp:112"))
    if final:
        it = iters[-1]
        out.append(line(t, f"Iteration {it}, loss = {loss0 - it / 1e3:g}", "solver.cpp:327"))
        out.append(line(t, "Optimization Done.", "solver.cpp:332"))
    return "\n".join(out) + "\n"


def log_2014(iters, t0=T0, *, display=20, test_interval=1000, lr=0.01, acc0=0.1):
    out, t = [], t0
    for it in iters:
        t += dt.timedelta(seconds=35)
        if it % display == 0:
            out.append(line(t, f"Iteration {it}, lr = {lr:g}", "solver.cpp:217"))
            out.append(line(t, f"Iteration {it}, loss = {7 - it / 1e4:g}", "solver.cpp:74"))
        if it % test_interval == 0:
            out.append(line(t, f"Iteration {it}, Testing net", "solver.cpp:96"))
            t += dt.timedelta(seconds=130)
            out.append(line(t, f"Test score #0: {acc0 + it / 1e6:g}", "solver.cpp:123"))
            out.append(line(t, f"Test score #1: {5 - it / 1e5:g}", "solver.cpp:123"))
    return "\n".join(out) + "\n"


def record_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, logs.LogWarning)]


# ---------------------------------------------------------------------------------------------- one file

def test_current_format_two_test_nets(tmp_path):
    path = tmp_path / "net.20260301-100000.log"
    path.write_text("noise before the run\n" + current_log(range(0, 301, 20)) + "a shell line at the end\n")
    log, warned = record_warnings(logs.parse_log, path)
    assert warned == []
    assert log.train.columns == ["NumIters", "Seconds", "LearningRate", "loss", "top5"]
    assert sorted(log.tests) == [0, 1]
    assert log.tests[0].columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    test0, test1 = log.tests[0], log.tests[1]
    assert list(test0["NumIters"]) == [0, 100, 200, 300]
    assert test0["accuracy"][1] == pytest.approx(0.11) and test1["accuracy"][1] == pytest.approx(0.12)
    assert test0["loss"][3] == pytest.approx(7 - 0.3)
    # the Train net output named loss replaces the Iteration line's smoothed loss; the final line has only that
    train = dict(zip(log.train["NumIters"], log.train["loss"]))
    assert train[40] == pytest.approx(7 - 0.04 + 0.5) and train[300] == pytest.approx(7 - 0.3)
    assert np.isnan(log.train["top5"][-1]) and log.train["top5"][2] == pytest.approx(0.004)
    assert (log.train["LearningRate"] == 0.01).all() and (test0["LearningRate"] == 0.01).all()
    assert log.train["Seconds"][0] == pytest.approx(1.0)       # from the first glog line (Solving)
    assert (np.diff(log.train["Seconds"]) > 0).all()
    assert (log.first_iter, log.last_iter) == (0, 300)
    assert log.start == T0


def test_learning_rate_is_the_one_printed_for_that_iteration(tmp_path):
    text = current_log(range(0, 101, 20), lr=0.01, final=False) + \
        current_log(range(120, 201, 20), T0 + dt.timedelta(minutes=5), lr=0.001, final=False).split("\n", 1)[1]
    path = tmp_path / "lr.log"
    path.write_text(text)
    log = logs.parse_log(path)
    lr = dict(zip(log.train["NumIters"], log.train["LearningRate"]))
    assert lr[100] == 0.01 and lr[120] == 0.001 and lr[200] == 0.001
    test_lr = dict(zip(log.test["NumIters"], log.test["LearningRate"]))
    assert test_lr[0] == 0.01 and test_lr[200] == 0.001


def test_2014_format_and_gzip(tmp_path):
    text = log_2014(range(20, 3001, 20), dt.datetime(2014, 4, 3, 7, 0, 0))
    plain, packed = tmp_path / "140403_063910_half0A.o1", tmp_path / "140403_063910_half0A.o2.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = logs.parse_log(plain), logs.parse_log(packed)
    assert a.train.columns == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert a.test.columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert list(a.test["NumIters"]) == [1000, 2000, 3000]
    assert a.test["accuracy"][-1] == pytest.approx(0.103) and a.test["loss"][-1] == pytest.approx(4.97)
    assert np.array_equal(a.train.data, b.train.data) and np.array_equal(a.test.data, b.test.data)
    assert a.start == dt.datetime(2014, 4, 3, 7, 0, 35)   # the year from the 2014 file name's stamp
    assert b.job == 2


def test_engine_glog_lines_are_read(tmp_path):
    """Lines made by the engine's own glog writer (tools/caffe_torch) read like Caffe's."""
    now = T0.timestamp()
    text = "\n".join([
        engine_glog.line("I", "solver.cpp:239", "Iteration 20 (3.1 iter/s, 6.4s/20 iters), loss = 6.9", now),
        engine_glog.line("I", "solver.cpp:258", "    Train net output #0: loss = 6.9 (* 1 = 6.9 loss)", now),
        engine_glog.line("I", "sgd_solver.cpp:112", "Iteration 20, lr = 0.01", now),
        engine_glog.line("I", "solver.cpp:347", "Iteration 40, Testing net (#0)", now + 5),
        engine_glog.line("I", "solver.cpp:414", "    Test net output #0: accuracy = 0.25", now + 6),
        engine_glog.line("W", "solver.cpp:460", "a warning line", now + 7),
    ]) + "\n"
    path = tmp_path / "half0A.20260301-100000.log"
    path.write_text(text)
    log = logs.parse_log(path)
    assert log.test.last("accuracy") == (40, 0.25)
    assert log.test["Seconds"][0] == pytest.approx(6.0)
    assert log.train.last("loss") == (20, 6.9)


def test_year_rollover(tmp_path):
    t0 = dt.datetime(2025, 12, 31, 23, 59, 0)
    path = tmp_path / "net.20251231-235900.log"
    path.write_text(log_2014(range(20, 2001, 20), t0))
    log = logs.parse_log(path)
    seconds = log.train["Seconds"]
    assert (np.diff(seconds) > 0).all()
    assert seconds[-1] == pytest.approx(35 * 99 + 130)   # from the first line: 99 displays and one test pass
    assert log.start.year == 2025 and log.end.year == 2026


def test_glog_lines_with_the_year_read_like_the_classic_ones(tmp_path):
    # glog >= 0.6 (Caffe built on current Debian) writes `I20261124 18:51:57.1 ...`; the year in the line wins
    # over any guess from the file's name or time
    classic = current_log(range(0, 501, 20), dt.datetime(2023, 12, 31, 23, 59, 50))
    with_year = "".join(ln[0] + "2023" + ln[1:] if ln[:1] in "IWEF" and ln[1:2].isdigit() else ln
                        for ln in classic.splitlines(keepends=True))
    assert with_year.startswith("I20231231 23:59:50")
    (tmp_path / "a.log").write_text(classic)
    (tmp_path / "b.log").write_text(with_year)
    a, b = logs.parse_log(tmp_path / "a.log"), logs.parse_log(tmp_path / "b.log")
    assert len(a.train["NumIters"]) > 10 and not b.warnings
    for column in a.train.columns:
        np.testing.assert_array_equal(a.train[column], b.train[column])
    assert b.start == dt.datetime(2023, 12, 31, 23, 59, 50) and b.end.year == 2024


def test_real_caffe_training_log_is_read(real_caffe, tmp_path):
    from test_engine_solver import make_case

    case = make_case(tmp_path / "net", max_iter=10, snapshot=0)
    proc = real_caffe.run("caffe", "train", "-solver", "solver.prototxt", cwd=case, check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (case / "net.20261124-000000.log").write_text(proc.stderr)
    log = logs.parse_log(case / "net.20261124-000000.log")
    assert not log.warnings, log.warnings
    assert list(log.train["NumIters"]) == [0, 5, 10]
    assert log.train["LearningRate"][0] == pytest.approx(0.05)
    test = log.tests[0]
    assert list(test["NumIters"]) == [0, 10] and 0 <= test["accuracy"][-1] <= 1


# ---------------------------------------------------------------------------------------------- bad input

def test_malformed_lines_are_warned_with_file_and_line(tmp_path):
    good = log_2014(range(20, 2001, 20)).splitlines()
    bad = list(good)
    assert "loss = " in bad[5]
    bad[5] = bad[5].replace("loss = ", "loss = 6.x")                       # not a number
    bad[10] = bad[10] + bad[11]                                            # two lines glued together
    bad.insert(20, "I0301 10:20:00.000000 12345 solver.cpp:74] Iteration 400, loss")   # cut short
    bad.insert(30, "I1345 10:20:00.000000 12345 solver.cpp:74] Iteration 590, loss = 5")  # no such day
    path = tmp_path / "bad.log"
    path.write_text("\n".join(bad) + "\n")
    log, warned = record_warnings(logs.parse_log, path)
    assert any(f"{path}:6:" in w for w in warned), warned
    assert any(f"{path}:11:" in w for w in warned), warned
    assert any(f"{path}:21:" in w for w in warned), warned
    assert any(f"{path}:31: no such date" in w for w in warned), warned
    assert list(log.test["NumIters"]) == [1000, 2000]        # the rest is read
    assert len(log.train) >= 95


def test_truncated_empty_and_foreign_files(tmp_path):
    text = log_2014(range(20, 2001, 20))
    truncated = tmp_path / "t.log"
    truncated.write_text(text[:-9])                         # ends mid-line
    log, warned = record_warnings(logs.parse_log, truncated)
    n_lines = text.count("\n")
    assert any(f"{truncated}:{n_lines}:" in w and "incomplete" in w for w in warned), warned
    assert log.test.last("accuracy") == (2000, pytest.approx(0.102))
    assert log.last_iter == 2000

    cut_gzip = tmp_path / "cut.log.gz"
    cut_gzip.write_bytes(gzip.compress(text.encode())[:-300])
    log, warned = record_warnings(logs.parse_log, cut_gzip)
    assert any(str(cut_gzip) in w and "truncated" in w for w in warned), warned
    assert len(log.train) > 50

    empty = tmp_path / "empty.o5.gz"
    empty.write_bytes(gzip.compress(b""))
    log, warned = record_warnings(logs.parse_log, empty)
    assert warned == [f"{empty}: empty log (no lines)"]
    assert len(log.train) == 0 and log.first_iter is None and math.isnan(log.test.last("accuracy")[1])

    foreign = tmp_path / "notes.log"
    foreign.write_text("just some text\nnothing from Caffe\n")
    log, warned = record_warnings(logs.parse_log, foreign)
    assert warned and "no Caffe" in warned[0]

    started = tmp_path / "started.log"                      # starts in the middle of a test pass
    started.write_text("I0301 10:00:00.000000 1 solver.cpp:123] Test score #0: 0.5\n" + text)
    log, warned = record_warnings(logs.parse_log, started)
    assert any(f"{started}:1:" in w for w in warned), warned
    assert log.test.last("accuracy")[0] == 2000


# ---------------------------------------------------------------------------------------------- restarts

def test_restarts_are_stitched_newest_wins_and_gaps_reported(tmp_path):
    net = tmp_path / "transfer0A0B_1_3"
    net.mkdir()
    t1, t2, t3 = T0, T0 + dt.timedelta(hours=2), T0 + dt.timedelta(hours=5)
    # run 1: 0..1000; run 2 restarts from the snapshot at 800 (overlap 820..1000) up to 1500;
    # run 3 starts at 2020: iterations 1500..2020 missing (a log lost)
    (net / "transfer0A0B_1_3.20260301-100000.log").write_text(
        current_log(range(0, 1001, 20), t1, acc0=0.1, final=False))
    (net / "transfer0A0B_1_3.20260301-120000.log.gz").write_bytes(gzip.compress(
        current_log(range(820, 1501, 20), t2, acc0=0.3, final=False).encode()))
    (net / "transfer0A0B_1_3.20260301-150000.log").write_text(
        current_log(range(2020, 2501, 20), t3, acc0=0.5))
    (net / "transfer0A0B_1_3.20260301-160000.log").write_text("")   # a run that printed nothing
    (net / "solver.prototxt").write_text("max_iter: 3000\nbase_lr: 0.01\n")
    stitched, warned = record_warnings(logs.parse_net_dir, net)
    assert [p.rsplit("/", 1)[-1] for p in (log.path for log in stitched.logs)][:3] == [
        "transfer0A0B_1_3.20260301-100000.log", "transfer0A0B_1_3.20260301-120000.log.gz",
        "transfer0A0B_1_3.20260301-150000.log"]
    test = dict(zip(stitched.test["NumIters"], stitched.test["accuracy"]))
    assert test[800] == pytest.approx(0.1 + 0.08)        # only run 1 has it
    assert test[900] == pytest.approx(0.3 + 0.09)        # both runs: the newer one
    assert test[2100] == pytest.approx(0.5 + 0.21)
    assert 1600 not in test
    assert len(stitched.overlaps) == 1 and "820" in stitched.overlaps[0]
    assert len(stitched.gaps) == 1 and "1500..2020" in stitched.gaps[0]
    assert any("1500..2020" in w for w in warned) and any("empty log" in w for w in warned)
    seconds = stitched.test["Seconds"]
    assert seconds[-1] > 5 * 3600                         # on the timeline of the first run
    summary = logs.summarize_net(stitched)
    assert (summary.kind, summary.split, summary.n, summary.base) == ("transfer", "half0B", 3, "half0A")
    assert summary.final_iter == 2500 and summary.max_iter == 3000 and summary.status == "incomplete"
    assert summary.final_test_iter == 2500 and summary.final_accuracy == pytest.approx(0.75)
    assert summary.n_logs == 4 and summary.gaps == 1 and summary.overlaps == 1


def test_net_info_names():
    assert logs.net_info("transfer-ft2B2A_1_5") == {"kind": "transfer", "split": "half2A", "n": 5,
                                                      "fine_tuned": True, "base": "half2B"}
    assert logs.net_info("transfer1A1A_1_2")["kind"] == "selffer"
    assert logs.net_info("transfernatmanAB_1_4")["split"] == "halfnatmanB"
    assert logs.net_info("half3B")["kind"] == "base"
    assert logs.net_info("nolearn_1_6")["n"] == 6
    assert logs.net_info("reduced-0250")["kind"] == "reduced"
    assert logs.net_info("netbase")["kind"] == "whole"
    assert logs.net_info("transfer7A7B_1_2")["base"] == "half7A"      # a split the paper did not have
    assert logs.net_info("something-else")["kind"] is None
    nets_json = {"mine": {"name": "mine", "kind": "base", "split": "half0A", "n": None, "depends_on": None}}
    assert logs.net_info("mine", nets_json)["kind"] == "base"


def test_cli_tree_tables_and_summary(tmp_path):
    from convnet_transfer.cli.parse_log import main
    tree = tmp_path / "results"
    for name, acc in (("half0A", 0.2), ("transfer0A0B_1_1", 0.3)):
        (tree / name).mkdir(parents=True)
        (tree / name / f"{name}.20260301-100000.log").write_text(current_log(range(0, 201, 20), acc0=acc))
    (tree / "half0B").mkdir()
    (tree / "half0B" / "solver.prototxt").write_text("max_iter: 200\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(tree), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "half0B" in result.output and "no logs" in result.output
    table = logs.Table.read_csv(out / "half0A.test")
    assert table.columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert table.last("accuracy") == (200, pytest.approx(0.22))
    assert (out / "half0A.test1").exists() and (out / "half0A.train").read_text().startswith(
        "NumIters,Seconds,LearningRate,loss,top5\n0,")
    summary = json.loads((out / "summary.json").read_text())
    by_net = {r["net"]: r for r in summary}
    assert by_net["transfer0A0B_1_1"]["final_accuracy"] == pytest.approx(0.32)
    assert by_net["half0B"]["final_accuracy"] is None and by_net["half0B"]["status"] == "no logs"
    assert [r.net for r in logs.read_summary(out / "summary.csv")] == [r["net"] for r in summary]

    empty = tmp_path / "empty"
    (empty / "not_a_net").mkdir(parents=True)
    result = CliRunner().invoke(main, [str(empty)])
    assert result.exit_code == 1 and f"{empty}: holds no Caffe log" in result.output, result.output


# ---------------------------------------------------------------------------------------------- 2014 release

# read by hand: zcat <file> | grep -A2 "Iteration N, Testing net"
HAND_READ = {
    # net: (final iteration, final Test score #0, files)
    "half0A": (450000, 0.614559, 4),
    "transfer0A0A_1_1": (450000, 0.615399, 4),
    "transfer3A3B_1_7": (450000, 0.54556, 1),
    "reduced-0250": (200000, 0.38332, 4),
    "nolearn_1_3": (450000, 0.00092, 3),
    "transfer-ft0A0B_1_7": (450000, 0.645719, 6),
    "transfernatmanBA_1_1": (450000, 0.656619, 2),
    "netbase": (450000, 0.575179, 1),
}


@pytest.mark.parametrize("name", sorted(HAND_READ))
def test_reference_final_accuracy(reference, name):
    final_iter, accuracy, n_files = HAND_READ[name]
    net = logs.parse_net_dir(reference / "results" / name, jobs=1) if n_files < 3 else \
        logs.parse_net_dir(reference / "results" / name)
    assert len(net.logs) == n_files
    assert net.test.last("accuracy") == (final_iter, accuracy)
    assert net.last_iter == final_iter


def test_reference_stitching(reference):
    """half0A: job 227963 reached 286180, job 239566 resumed from the snapshot at 280000; two jobs logged nothing.
    transfer0A0A_1_1: job 240759 starts at 50020 though job 240408 stopped at 37700 (a missing log);
    job 245451 resumed at 420020 before 424860. netbase: one concatenated log, its newer run written first."""
    half0A, warned = record_warnings(logs.parse_net_dir, reference / "results" / "half0A")
    assert [log.job for log in half0A.logs] == [227963, 239566, 298235, 298236]
    test = dict(zip(half0A.test["NumIters"], half0A.test["accuracy"]))
    assert test[282000] == 0.61284                    # job 239566's value (job 227963 logged 0.61368)
    assert test[1000] == 0.0389203 and test[450000] == 0.614559
    train = dict(zip(half0A.train["NumIters"], half0A.train["loss"]))
    assert train[286180] == 0.590935                  # job 239566's (job 227963 logged 0.549417)
    assert train[300000] == 0.50041
    assert len(half0A.overlaps) == 1 and "280020" in half0A.overlaps[0] and half0A.gaps == []
    assert sum("empty log" in w for w in warned) == 2

    t = logs.parse_net_dir(reference / "results" / "transfer0A0A_1_1")
    assert len(t.gaps) == 1 and "37700..50020" in t.gaps[0]
    test = dict(zip(t.test["NumIters"], t.test["accuracy"]))
    assert test[421000] == 0.61478                    # job 245451, not job 240759's 0.615079
    assert 40000 not in test

    netbase = logs.parse_net_dir(reference / "results" / "netbase", jobs=1)
    test = dict(zip(netbase.test["NumIters"], netbase.test["accuracy"]))
    assert test[236000] == 0.570259                   # the resumed run of 12 March, not the one of 11 March
    assert len(netbase.overlaps) == 1 and "several runs" in netbase.overlaps[0]
    assert (np.diff(netbase.test["NumIters"]) > 0).all()


@pytest.mark.slow
def test_reference_tree_every_net_with_logs_has_results(reference):
    rows = logs.summarize_tree(reference / "results")
    assert len(rows) == 170
    with_logs = [r for r in rows if r.status != "no logs"]
    assert len(with_logs) == 148
    for r in with_logs:
        assert r.final_iter is not None and r.final_iter >= 200000, r
        assert 0 < r.final_accuracy < 1 and r.final_test_iter == r.final_iter, r
        assert r.kind is not None and r.train_hours > 0, r
    assert {r.net for r in rows if r.status == "no logs"} >= {"transfer-ft0B0A_1_1", "transfer-ft1B1A_1_7"}
    by_net = {r.net: r for r in rows}
    for name, (final_iter, accuracy, n_files) in HAND_READ.items():
        assert (by_net[name].final_iter, by_net[name].final_accuracy, by_net[name].n_logs) == \
            (final_iter, accuracy, n_files)


def test_corrupted_logs_never_crash(tmp_path):
    """Random damage (bytes flipped, lines cut or glued, garbage inserted) gives warnings, never an exception."""
    rng = np.random.default_rng(0)
    text = (log_2014(range(20, 1001, 20)) + current_log(range(1000, 1201, 20), T0 + dt.timedelta(hours=1))).encode()
    for trial in range(40):
        data = bytearray(text)
        for _ in range(rng.integers(1, 6)):
            pos = int(rng.integers(0, len(data)))
            action = rng.integers(0, 4)
            if action == 0:
                data[pos] = int(rng.integers(0, 256))
            elif action == 1:
                del data[pos:pos + int(rng.integers(1, 80))]
            elif action == 2:
                data[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8))
            else:
                data = data[:pos]
        path = tmp_path / f"damaged{trial}.log"
        path.write_bytes(bytes(data))
        log, _ = record_warnings(logs.parse_log, path)
        for table in (log.train, *log.tests.values()):
            assert table.columns[:3] == ["NumIters", "Seconds", "LearningRate"]
            assert not (table.data[:, 0] < 0).any()
