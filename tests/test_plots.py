"""convnet_transfer.results.plots: the paper's figures and the tables behind them.

On the 2014 release's logs the tables must show the paper's findings (Figure 2: AnB falls with n, BnB dips in the
middle layers, AnB+ stays above the base nets; Figure 3: natural/man-made transfer falls faster than the random
splits, random frozen filters collapse from n = 3). On synthetic rows the tables are checked number by number.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convnet_transfer.results import logs, plots

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore::convnet_transfer.results.logs.LogWarning")


def row(net, accuracy, **kw):
    info = logs.net_info(net)
    values = dict(net=net, kind=info["kind"], split=info["split"], n=info["n"], fine_tuned=info["fine_tuned"],
                  base=info["base"], status="complete", n_logs=1, final_iter=1000, max_iter=1000,
                  final_test_iter=1000, final_accuracy=accuracy, best_accuracy=accuracy + 0.01, best_iter=900,
                  final_test_loss=1.0, train_hours=1.0, elapsed_hours=1.0, gaps=0, overlaps=0, warnings=0)
    values.update(kw)
    return logs.NetSummary(**values)


def synthetic_rows(shift=0.0):
    rows = [row("half0A", 0.60 + shift), row("half0B", 0.62 + shift), row("netbase", 0.57 + shift),
            row("halfnatmanA", 0.65 + shift), row("halfnatmanB", 0.53 + shift)]
    for n in range(1, 8):
        rows += [row(f"transfer0A0B_1_{n}", 0.62 - 0.01 * n + shift), row(f"transfer0B0A_1_{n}", 0.60 - 0.01 * n + shift),
                 row(f"transfer0A0A_1_{n}", 0.60 - 0.001 * n + shift),
                 row(f"transfer-ft0A0B_1_{n}", 0.63 + shift), row(f"transfernatmanAB_1_{n}", 0.53 - 0.02 * n + shift),
                 row(f"transfernatmanBA_1_{n}", 0.65 - 0.02 * n + shift), row(f"nolearn_1_{n}", 0.5 / n + shift)]
    rows += [row(f"reduced-{c:04d}", min(0.55, c / 1000) + shift) for c in (1, 10, 100, 1300)]
    rows.append(row("transfer-ft0B0A_1_1", math.nan, status="no logs", final_iter=None, n_logs=0))
    return rows


def entry(table, series, x):
    found = [e for e in table if e["series"] == series and e["x"] == x]
    assert len(found) == 1, (series, x, table)
    return found[0]


def test_tables_on_synthetic_rows():
    rows = synthetic_rows()
    fig2 = plots.figure_table(rows, "fig2_transfer")
    base = entry(fig2, "baseB", 0)
    assert (base["mean"], base["min"], base["max"], base["count"]) == (pytest.approx(0.61), 0.60, 0.62, 2)
    anb = entry(fig2, "AnB", 3)
    assert anb["mean"] == pytest.approx(0.58) and anb["count"] == 2 and anb["std"] == pytest.approx(0.01)
    assert entry(fig2, "BnB", 2)["count"] == 1 and entry(fig2, "AnB+", 7)["mean"] == pytest.approx(0.63)
    assert not [e for e in fig2 if e["series"] == "BnB+"]            # the net without logs is no point

    fig3 = plots.figure_table(rows, "fig3_natman_random")
    assert entry(fig3, "natman natural", 0)["mean"] == pytest.approx(0.65)      # the target's base net
    assert entry(fig3, "natman man-made", 2)["mean"] == pytest.approx(0.49)
    # relative: each net minus the base net of its target half (AnB on half0B - half0B, on half0A - half0A)
    assert entry(fig3, "relative AnB", 1)["mean"] == pytest.approx(((0.61 - 0.62) + (0.59 - 0.60)) / 2)
    assert entry(fig3, "relative natman", 7)["mean"] == pytest.approx(((0.39 - 0.53) + (0.51 - 0.65)) / 2)
    assert entry(fig3, "relative random", 5)["mean"] == pytest.approx(0.1 - 0.57)
    assert entry(fig3, "random", 0)["mean"] == pytest.approx(0.57)

    # Figure 2 paired: each net minus the base net of its target half
    paired = plots.figure_table(rows, "fig2_paired")
    assert {e["series"] for e in paired} == {"relative BnB", "relative AnB", "relative AnB+"}
    assert entry(paired, "relative BnB", 4)["mean"] == pytest.approx(-0.004)        # 0A0A_1_4 - half0A
    assert entry(paired, "relative AnB+", 2)["mean"] == pytest.approx(0.63 - 0.62)   # ft0A0B_1_2 - half0B
    assert entry(paired, "relative AnB", 1)["std"] == pytest.approx(0.0)             # both splits' AnB: -0.01

    reduced = plots.figure_table(rows, "reduced")
    assert [e["x"] for e in reduced] == [1, 10, 100, 1300]
    assert entry(reduced, "reduced", 1300)["mean"] == pytest.approx(0.55)


def test_reference_differences_in_table():
    table = plots.figure_table(synthetic_rows(0.01), "fig2_transfer", reference=synthetic_rows())
    for e in table:
        assert e["diff"] == pytest.approx(0.01) and e["ref_count"] == e["count"]
    text = plots.format_table(table, "title")
    assert text.splitlines()[1].split() == ["series", "n", "mean", "std", "min", "max", "count", "ref_mean",
                                            "ref_count", "diff"]


def test_series_styles_read_in_greyscale():
    """No two series of a figure share both marker and line style, and fine-tuned ones carry a '+'."""
    fig2 = [plots.STYLE[s] for s in ("baseB", "BnB", "BnB+", "AnB", "AnB+")]
    assert len({(marker, style, plus) for _, marker, _, _, style, plus in fig2}) == 5
    assert len({style for *_, style, _ in fig2[1:]}) == 4              # the four mean lines differ
    assert plots.STYLE["BnB+"][5] and plots.STYLE["AnB+"][5]


def test_plot_all_writes_figures_and_tables(tmp_path):
    rows = synthetic_rows()
    echoed = []
    written = plots.plot_all(rows, tmp_path, reference=synthetic_rows(-0.02), formats=("png", "pdf"),
                             prefix="x_", echo=echoed.append)
    names = sorted(p.name for p in written)
    for figure in ("fig2_transfer", "fig3_natman_random", "reduced"):
        for suffix in (".png", ".pdf", ".txt", ".csv"):
            assert f"x_{figure}{suffix}" in names
    assert "x_fig2_paired.txt" in names and "x_fig2_paired.png" not in names   # a table: the lower panel
    with Image.open(tmp_path / "x_fig2_transfer.png") as image:
        assert image.width > 500 and image.height > 300
    assert (tmp_path / "x_fig2_transfer.pdf").read_bytes().startswith(b"%PDF")
    assert "Figure 2" in echoed[0] and "diff" in echoed[0]
    assert (tmp_path / "x_reduced.csv").read_text().startswith("series,x,mean,std,min,max,count,ref_mean")


def test_cli_from_summary_json_and_training_curves(tmp_path):
    from convnet_transfer.cli.plot_results import main

    def current_log(acc0):
        lines = []
        for it in range(0, 401, 20):
            stamp = f"I0301 10:{it // 20:02d}:00.000000 1 solver.cpp:239]"
            lines.append(f"{stamp} Iteration {it} (1 iter/s, 20s/20 iters), loss = {7 - it / 100:g}")
            lines.append(f"{stamp} Iteration {it}, lr = 0.01")
            if it % 100 == 0:
                lines.append(f"{stamp} Iteration {it}, Testing net (#0)")
                lines.append(f"{stamp}     Test net output #0: accuracy = {acc0 + it / 1e4:g}")
        return "\n".join(lines) + "\n"

    tree = tmp_path / "results"
    for name, acc in (("half0A", 0.2), ("transfer0A0B_1_1", 0.3), ("transfer0A0B_1_4", 0.25)):
        (tree / name).mkdir(parents=True)
        (tree / name / f"{name}.20260301-100000.log").write_text(current_log(acc))
    summary = tmp_path / "summary.json"
    logs.write_summary(logs.summarize_tree(tree, jobs=1), tmp_path)
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["--results", str(summary), "--out", str(out), "--format", "png"])
    assert result.exit_code == 0, result.output
    assert (out / "fig2_transfer.png").exists() and not (out / "fig2_transfer.pdf").exists()
    assert not (out / "reduced.png").exists()                       # no reduced nets: no figure
    assert json.loads(summary.read_text())[0]["net"] == "half0A"

    result = CliRunner().invoke(main, ["--results", str(tree), "--out", str(out), "--format", "png", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "training_curves.png").exists()
    assert "baseB" in result.output and "0.2400" in result.output    # the table: half0A's last accuracy

    # nothing to plot: an error naming the tree, not a traceback or an empty figure
    untrained = tmp_path / "untrained"
    (untrained / "half0A").mkdir(parents=True)
    (untrained / "half0A" / "solver.prototxt").write_text("max_iter: 200\n")
    (untrained / "half0A" / "half0A.20260301-100000.log").write_text("I0301 10:00:00.000000 1 caffe.cpp:1] Use CPU.\n")
    result = CliRunner().invoke(main, ["--results", str(untrained), "--out", str(out)])
    assert result.exit_code == 1 and f"{untrained}: none of its 1 nets has a test accuracy" in result.output
    result = CliRunner().invoke(main, ["--results", str(untrained / "half0A" / "x"), "--out", str(out)])
    assert result.exit_code == 2                                     # click: no such path
    (tmp_path / "no_nets").mkdir()
    result = CliRunner().invoke(main, ["--results", str(tmp_path / "no_nets"), "--out", str(out)])
    assert result.exit_code == 1 and "holds no Caffe log" in result.output


@pytest.fixture(scope="module")
def reference_rows(reference):
    return logs.summarize_tree(reference / "results")


@pytest.mark.slow
def test_reference_figure_2_findings(reference_rows):
    table = plots.figure_table(reference_rows, "fig2_transfer")
    mean = {(e["series"], e["x"]): e["mean"] for e in table}
    count = {(e["series"], e["x"]): e["count"] for e in table}
    base = mean[("baseB", 0)]
    assert count[("baseB", 0)] == 8 and 0.62 < base < 0.63
    # AnB: no loss at n = 1, falling with n to about -8 points at n = 7
    anb = [mean[("AnB", n)] for n in range(1, 8)]
    assert abs(anb[0] - base) < 0.006 and anb[6] < anb[0] - 0.07 and anb[6] < anb[3] < anb[0]
    assert all(count[("AnB", n)] == 8 for n in range(1, 8))
    # BnB: dips in the middle layers (n = 4, 5), recovers at 6, 7 (fragile co-adaptation)
    bnb = {n: mean[("BnB", n)] for n in range(1, 8)}
    assert bnb[4] < bnb[1] - 0.015 and bnb[5] < bnb[7] - 0.02 and min(bnb, key=bnb.get) == 5
    assert abs(bnb[7] - base) < 0.005
    # AnB+: fine-tuned transfer nets beat the base nets at every n (the generalization boost)
    assert all(mean[("AnB+", n)] > base for n in range(1, 8))
    assert np.mean([mean[("AnB+", n)] for n in range(1, 8)]) > base + 0.01
    # BnB+: fine-tuned selffer nets keep the base nets' accuracy
    assert all(abs(mean[("BnB+", n)] - base) < 0.01 for n in range(1, 8))


@pytest.mark.slow
def test_paper_constants_are_the_2014_logs(reference_rows):
    """experiment.PAPER_FIG2 and PAPER_FIG3, the paper's numbers the Fashion-MNIST findings are set against, are
    what the 2014 logs give, to the 4 digits they carry."""
    from convnet_transfer import experiment

    for constants, figure in ((experiment.PAPER_FIG2, "fig2_transfer"), (experiment.PAPER_FIG3, "fig3_natman_random")):
        mean = {(e["series"], e["x"]): e["mean"] for e in plots.figure_table(reference_rows, figure)}
        for series, by_n in constants.items():
            for n, value in by_n.items():
                assert round(mean[(series, n)], 4) == value, (figure, series, n)


@pytest.mark.slow
def test_reference_figure_3_and_reduced_findings(reference_rows, tmp_path):
    table = plots.figure_table(reference_rows, "fig3_natman_random")
    mean = {(e["series"], e["x"]): e["mean"] for e in table}
    assert mean[("natman natural", 0)] == pytest.approx(0.653059)    # halfnatmanA
    assert mean[("natman man-made", 0)] == pytest.approx(0.53518)    # halfnatmanB
    # transfer between dissimilar halves loses more than between random halves, the more so the higher n
    for n in range(3, 8):
        assert mean[("relative natman", n)] < mean[("relative AnB", n)] - 0.02
    assert mean[("relative natman", 7)] == pytest.approx(-0.251, abs=0.005)
    assert mean[("relative AnB", 7)] == pytest.approx(-0.083, abs=0.003)
    # random frozen filters: usable at n = 1, 2, chance level from n = 3
    assert mean[("relative random", 1)] == pytest.approx(-0.084, abs=0.003)
    assert all(mean[("random", n)] < 0.06 for n in range(3, 8))
    reduced = {e["x"]: e["mean"] for e in plots.figure_table(reference_rows, "reduced")}
    assert sorted(reduced) == [1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000, 1300]
    assert reduced[100] < 0.01 < 0.3 < reduced[250] and reduced[1300] == pytest.approx(0.5516, abs=1e-4)
    written = plots.plot_all(reference_rows, tmp_path, formats=("png",), echo=lambda text: None)
    assert {p.name for p in written} >= {"fig2_transfer.png", "fig3_natman_random.png", "reduced.png"}
    for table in ("fig2_transfer", "fig2_paired", "fig3_natman_random", "reduced"):   # the README's, committed
        for suffix in (".txt", ".csv"):
            committed = ROOT / "plots" / f"reference_{table}{suffix}"
            assert (tmp_path / f"{table}{suffix}").read_text() == committed.read_text(), committed


@pytest.mark.slow
def test_findings_in_plain_words_on_the_2014_logs(reference_rows):
    from convnet_transfer import experiment

    table = plots.figure_table(reference_rows, "fig2_transfer")
    paired = plots.figure_table(reference_rows, "fig2_paired")
    assert experiment.split_spread(paired) == pytest.approx(0.0017, abs=0.0003)   # 8 nets per point: tight
    text = experiment.findings(table, paired).splitlines()
    assert text[2].startswith("1. Does transfer AnB fall with n? Yes: AnB is 62.7% at n=1 and 54.2% at n=7")
    assert text[3].startswith("2. Does selffer BnB dip in the middle? Yes: its lowest middle value is 59.3% at n=5")
    assert text[4].startswith("3. Does fine-tuned transfer AnB+ beat the base nets? Yes: AnB+ averages 64.1%")
    assert "transfer itself adds +1.5 points (Yes)" in text[4] and "not trained to convergence" not in text[4]
    dissimilar = plots.figure_table(reference_rows, "fig3_natman_random")
    text = experiment.findings(table, paired, dissimilar).splitlines()
    assert text[5].startswith("4. Does transfer between dissimilar halves lose more than between random halves? "
                              "Yes: at n=7 the frozen transfer nets between the dissimilar halves are -25.1 points "
                              "from the base nets of their target halves, those between random halves -8.3 points.")
    assert text[6].startswith("5. Do transferred features beat random ones? Yes: with its first n layers random and "
                              "frozen, the whole-set net is -8.4 points at n=1, -17.3 points at n=2, -57.4 points at "
                              "n=3 from the whole-set net; frozen transferred layers (AnB) +0.3 points, -0.1 points, "
                              "-0.6 points from their base nets")
