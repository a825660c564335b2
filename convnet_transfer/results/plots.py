"""The paper's figures from a results tree (or its summary.json): Figure 2, Figure 3, the reduced-data curve,
training curves; each with the table of the numbers behind it.

    load_results(path)                      results tree / summary.json / summary.csv -> list[NetSummary]
    figure_table(rows, figure, reference)   per series and n: mean, std, min, max, count (and diff to reference);
                                            figure: a key of FIGURES (fig2_transfer, fig2_paired, ...)
    plot_transfer(rows, out, ...)           Figure 2: top-1 accuracy against n for baseB, BnB, BnB+, AnB, AnB+,
                                            and below, paired: each net minus the base net of its target half
    plot_natman_random(rows, out, ...)      Figure 3: natural/man-made transfer, random frozen filters, relative
    plot_reduced(rows, out, ...)            top-1 accuracy against training images per class
    plot_training_curves(nets, out)         train loss and test accuracy against iterations, several nets
    plot_all(rows, out_dir, ...)            all of them, PNG and/or PDF, with <figure>.txt / .csv tables

Figures use markers and line styles (not colour alone) so that they read in greyscale.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import logs  # noqa: E402

__all__ = ["load_results", "series_of", "figure_table", "format_table", "plot_transfer", "plot_natman_random",
           "plot_reduced", "plot_training_curves", "plot_all", "choose_curve_nets", "write_table", "FIGURES"]

# series: label in the paper's words, marker, face colour, edge colour, line style of the mean, "+" overlay
STYLE = {
    "baseB": ("baseB", "o", "none", "black", (0, (1, 3)), False),
    "BnB": ("selffer BnB", "o", "#1f4fbf", "#0b2a6f", "-", False),
    "BnB+": ("selffer BnB$^+$", "o", "#a9c1f0", "#0b2a6f", ":", True),
    "AnB": ("transfer AnB", "D", "#d7301f", "#67000d", "--", False),
    "AnB+": ("transfer AnB$^+$", "D", "#f7b6a8", "#67000d", "-.", True),
    "natman": ("transfer AnB, natural/man-made", "h", "#f08c00", "#7a3e00", "-", False),
    "random": ("random features", "v", "#b5b81a", "#4d4f00", "-.", False),
    "reduced": ("whole-set net, reduced data", "o", "#1f4fbf", "#0b2a6f", "-", False),
}
FIGURES = {"fig2_transfer": ("baseB", "BnB", "BnB+", "AnB", "AnB+"),
           "fig3_natman_random": ("natman man-made", "natman natural", "random", "relative AnB",
                                  "relative natman", "relative random"),
           "reduced": ("reduced",),
           # Figure 2 paired: each net minus the base net of its target half (split-to-split differences cancel)
           "fig2_paired": ("relative BnB", "relative BnB+", "relative AnB", "relative AnB+")}


def load_results(path: str | os.PathLike, jobs: int | None = None) -> list[logs.NetSummary]:
    """A results tree (parsed now), or a summary.json / summary.csv written by tools/parse_log."""
    path = Path(path)
    if path.is_file():
        return logs.read_summary(path)
    return logs.summarize_tree(path, jobs=jobs, progress=True)


def _value(row: logs.NetSummary, metric: str) -> float:
    return row.best_accuracy if metric == "best" else row.final_accuracy


def series_of(row: logs.NetSummary) -> str | None:
    """The series of Figure 2/3 a net belongs to: baseB, BnB, BnB+, AnB, AnB+, natman, random, reduced,
    whole, natman-base (None when none)."""
    natman = "natman" in (row.split or "")
    if row.kind == "base":
        return "natman-base" if natman else "baseB"
    if row.kind in ("selffer", "transfer"):
        if natman:
            return "natman" if row.kind == "transfer" and not row.fine_tuned else None
        return ("BnB" if row.kind == "selffer" else "AnB") + ("+" if row.fine_tuned else "")
    return {"nolearn": "random", "reduced": "reduced", "whole": "whole"}.get(row.kind or "")


def _reduced_count(row: logs.NetSummary) -> int | None:
    m = re.search(r"(\d+)$", row.net)
    return int(m.group(1)) if m else row.n


@dataclass
class Point:
    series: str
    x: float
    value: float
    net: str


def _points(rows: list[logs.NetSummary], metric: str) -> list[Point]:
    """Every net with a value as a point of its series; x = n (0 for base nets), images per class for reduced.
    Figure 3's derived series: natman by target half, and accuracies relative to the target's base net."""
    ok = [r for r in rows if not math.isnan(_value(r, metric))]
    points = []
    bases_of_target = {}                 # split -> its base net's accuracy
    whole = [_value(r, metric) for r in ok if series_of(r) == "whole"]
    for r in ok:
        s = series_of(r)
        if s in ("baseB", "natman-base"):
            bases_of_target[r.split] = _value(r, metric)
    for r in ok:
        s, v = series_of(r), _value(r, metric)
        if s is None:
            continue
        if s == "baseB":
            points.append(Point("baseB", 0, v, r.net))
        elif s in ("BnB", "BnB+", "AnB", "AnB+") and r.n is not None:
            points.append(Point(s, r.n, v, r.net))
            if r.split in bases_of_target:       # paired: minus the base net of the same target half
                points.append(Point(f"relative {s}", r.n, v - bases_of_target[r.split], r.net))
        elif s == "natman-base":
            target = "natural" if r.split.endswith("A") else "man-made"
            points.append(Point(f"natman {target}", 0, v, r.net))
        elif s == "natman" and r.n is not None:
            target = "natural" if r.split.endswith("A") else "man-made"
            points.append(Point(f"natman {target}", r.n, v, r.net))
            if r.split in bases_of_target:
                points.append(Point("relative natman", r.n, v - bases_of_target[r.split], r.net))
        elif s == "random" and r.n is not None:
            points.append(Point("random", r.n, v, r.net))
            if whole:
                points.append(Point("relative random", r.n, v - whole[0], r.net))
        elif s == "whole":
            points.append(Point("random", 0, v, r.net))
        elif s == "reduced":
            count = _reduced_count(r)
            if count:
                points.append(Point("reduced", count, v, r.net))
    return points


def figure_table(rows: list[logs.NetSummary], figure: str, reference: list[logs.NetSummary] | None = None,
                 metric: str = "final") -> list[dict]:
    """The numbers behind a figure: per series and x (n, or images per class), mean, std, min, max, count of
    the nets' top-1 accuracies; with a reference, its mean and the difference (ours - reference)."""
    wanted = FIGURES[figure]

    def stats(points):
        groups = defaultdict(list)
        for p in points:
            if p.series in wanted:
                groups[(p.series, p.x)].append(p.value)
        return groups

    ours = stats(_points(rows, metric))
    ref = stats(_points(reference, metric)) if reference is not None else {}
    table = []
    for key in sorted(set(ours) | set(ref), key=lambda k: (wanted.index(k[0]), k[1])):
        values = np.array(ours.get(key, []), dtype=float)
        entry = {"series": key[0], "x": int(key[1]) if float(key[1]).is_integer() else key[1],
                 "mean": float(values.mean()) if len(values) else math.nan,
                 "std": float(values.std()) if len(values) else math.nan,
                 "min": float(values.min()) if len(values) else math.nan,
                 "max": float(values.max()) if len(values) else math.nan,
                 "count": int(len(values))}
        if reference is not None:
            r = np.array(ref.get(key, []), dtype=float)
            entry["ref_mean"] = float(r.mean()) if len(r) else math.nan
            entry["ref_count"] = int(len(r))
            entry["diff"] = entry["mean"] - entry["ref_mean"]
        table.append(entry)
    return table


def format_table(table: list[dict], title: str) -> str:
    """Aligned text: one line per series and x."""
    if not table:
        return f"{title}\n  (no nets with results)\n"
    cols = list(table[0])
    head = {"series": f"{'series':18s}", "x": f"{'n':>5s}"}
    lines = [title, "  ".join(head.get(c, f"{c:>9s}") for c in cols)]
    for e in table:
        cells = []
        for c in cols:
            v = e[c]
            if c == "series":
                cells.append(f"{v:18s}")
            elif c == "x":
                cells.append(f"{v!s:>5s}")
            elif isinstance(v, int):
                cells.append(f"{v:>9d}")
            else:
                cells.append(f"{'-':>9s}" if math.isnan(v) else f"{v:>9.4f}")
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def write_table(table: list[dict], title: str, stem: Path) -> str:
    text = format_table(table, title)
    stem.with_suffix(".txt").write_text(text)
    if table:
        with open(stem.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return text


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None} if fmt == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _scatter(ax, series: str, xs, ys, label=None, size=55, alpha=1.0):
    _, marker, face, edge, _, plus = STYLE[series]
    ax.scatter(xs, ys, marker=marker, s=size, facecolors=face, edgecolors=edge, linewidths=1.1, label=label,
               zorder=3, alpha=alpha)
    if plus:
        ax.scatter(xs, ys, marker="+", s=size * 0.45, color=edge, linewidths=1.0, zorder=4, alpha=alpha)


def _legend_handle(series: str):
    """(handle, label) for a legend: marker and mean line style, with the "+" of fine-tuned series."""
    from matplotlib.lines import Line2D
    label, marker, face, edge, style, plus = STYLE[series]
    handle = Line2D([], [], marker=marker, markersize=8, markerfacecolor=face, markeredgecolor=edge,
                    color=edge, linestyle=style)
    if plus:
        handle = (handle, Line2D([], [], marker="+", markersize=6, color=edge, linestyle="none"))
    return handle, label


_OFFSETS = {"baseB": 0.0, "BnB": -0.27, "BnB+": -0.09, "AnB": 0.09, "AnB+": 0.27}


def _mean_line(ax, points, series, off, style_series=None, **style):
    xs = sorted({p.x for p in points if p.series == series})
    means = [np.mean([p.value for p in points if p.series == series and p.x == x]) for x in xs]
    if xs:
        ax.plot([x + off for x in xs], means, linestyle=STYLE[style_series or series][4], **style)


def plot_transfer(rows, out_stem: str | os.PathLike, reference=None, metric: str = "final",
                  formats=("png", "pdf"), title: str = "Transfer and selffer nets on random A/B splits (Figure 2)"
                  ) -> list[Path]:
    """Figure 2. Top: every net a point (top-1 accuracy against the layer n at which it was chopped), means as
    lines. Bottom (paired): each net minus the base net of its target half, so that halves of unequal difficulty
    do not hide the effect of n."""
    points = _points(rows, metric)
    fig, (ax, ax_rel) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True, height_ratios=(1.6, 1),
                                     gridspec_kw={"hspace": 0.08})
    handles = []
    for series, off in _OFFSETS.items():
        ps = [p for p in points if p.series == series]
        if not ps:
            continue
        _scatter(ax, series, [p.x + off for p in ps], [p.value for p in ps])
        _, _, _, edge, style, _ = STYLE[series]
        if series == "baseB":
            ax.hlines(np.mean([p.value for p in ps]), -0.35, 7.4, colors="black", linestyles=style, linewidth=0.8,
                      zorder=1)
        else:
            _mean_line(ax, points, series, off, color=edge, linewidth=1.4, zorder=2)
            rel = [p for p in points if p.series == f"relative {series}"]
            _scatter(ax_rel, series, [p.x + off for p in rel], [p.value for p in rel], size=25, alpha=0.45)
            _mean_line(ax_rel, points, f"relative {series}", off, series, color=edge, linewidth=1.4, zorder=2)
        handles.append(_legend_handle(series))
    if reference is not None:
        rpoints = _points(reference, metric)
        for series, off in _OFFSETS.items():
            _mean_line(ax, rpoints, series, off, color="0.6", linewidth=1.0, marker="_", markersize=10, zorder=1)
            _mean_line(ax_rel, rpoints, f"relative {series}", off, series, color="0.6", linewidth=1.0, zorder=1)
        from matplotlib.lines import Line2D
        handles.append((Line2D([], [], color="0.6", marker="_"), "2014 reference: means"))
    ax_rel.axhline(0, color="black", linestyle=STYLE["baseB"][4], linewidth=0.8, zorder=1)
    ax.set_xlim(-0.4, 7.45)
    ax_rel.set_xticks(range(8))
    ax_rel.set_xlabel("Layer $n$ at which network is chopped and retrained")
    ax.set_ylabel("Top-1 accuracy (higher is better)")
    ax_rel.set_ylabel("Minus the base net\nof the same half")
    for a in (ax, ax_rel):
        a.grid(axis="y", color="0.9", linewidth=0.6)
    ax.legend([h for h, _ in handles], [label for _, label in handles], loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=9, framealpha=0.95, borderaxespad=0)
    ax.set_title(title)
    return _save(fig, Path(out_stem), formats)


def _curve_means(points, series):
    """(xs, the mean at each x) of a series, None without points; a relative series starts at (0, 0.0)."""
    xs = sorted({p.x for p in points if p.series == series})
    if not xs:
        return None
    means = [np.mean([p.value for p in points if p.series == series and p.x == x]) for x in xs]
    if series.startswith("relative"):                   # relative to the base net: 0 at n = 0
        xs, means = [0] + xs, [0.0] + means
    return xs, means


def _curve(ax, points, series, label=None, style_of=None):
    got = _curve_means(points, series)
    if got is None:
        return None
    xs, means = got
    label_, marker, face, edge, style, _ = STYLE[style_of or series]
    ax.plot(xs, means, linestyle=style, color=edge, marker=marker, markerfacecolor=face, markeredgecolor=edge,
            markersize=8, label=label or label_, zorder=3)
    return xs, means


def plot_natman_random(rows, out_stem: str | os.PathLike, reference=None, metric: str = "final",
                       formats=("png", "pdf"), halves: tuple[str, str] = ("natural", "man-made"),
                       title: str | None = None) -> list[Path]:
    """Figure 3: top left, transfer between the natural and man-made halves (n = 0: the target's base net);
    top right, random frozen first layers (n = 0: the whole-set net); bottom, all relative to their base net,
    with the random-split AnB curve for comparison. `halves`: what to call the dissimilar halves A and B in the
    legend (another dataset's analogue of natural and man-made); `title`: above the figure."""
    points = _points(rows, metric)
    the_papers = halves == ("natural", "man-made")
    fig = plt.figure(figsize=(9, 7.4 if title else 7))
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.5), hspace=0.35, wspace=0.25)
    ax_nm, ax_rand, ax_rel = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    _natman_panel(ax_nm, points, halves, the_papers)
    _random_panel(ax_rand, points)
    if title:
        fig.suptitle(title, fontsize=10)
    for ax in (ax_nm, ax_rand):
        ax.set_xticks(range(8))
        ax.set_xlim(-0.3, 7.3)
        ax.grid(axis="y", color="0.9", linewidth=0.6)
    _relative_panel(ax_rel, points, None if reference is None else _points(reference, metric), the_papers)
    return _save(fig, Path(out_stem), formats)


def _base_marker(ax, y) -> None:
    """The open circle at n = 0: the reference (base net) a curve starts from."""
    ax.scatter([0], [y], marker="o", s=60, facecolors="white", edgecolors="black", zorder=4)


def _natman_panel(ax, points, halves, the_papers: bool) -> None:
    """Figure 3, top left: a transfer curve per target half of the dissimilar split."""
    for target, name, style in (("natural", halves[0], "-"), ("man-made", halves[1], "--")):
        got = _curve(ax, points, f"natman {target}", style_of="natman", label=f"target: {name}")
        if got:
            ax.lines[-1].set_linestyle(style)
            _base_marker(ax, got[1][0])
    ax.set_title("Man-made/Natural split" if the_papers else "Dissimilar halves")
    ax.set_ylabel("Top-1 accuracy")
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")


def _random_panel(ax, points) -> None:
    """Figure 3, top right: random frozen first layers (n = 0: the whole-set net)."""
    got = _curve(ax, points, "random")
    if got and got[0][0] == 0:
        _base_marker(ax, got[1][0])
    if not got:
        ax.text(0.5, 0.5, "no random-filter nets\nin these results", transform=ax.transAxes,
                ha="center", va="center", color="0.5")
    ax.set_title("Random, untrained filters")


def _relative_panel(ax, points, rpoints, the_papers: bool) -> None:
    """Figure 3, bottom: every curve relative to its base net; the reference's means (`rpoints`) in grey."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="black", linestyle="none",
                      markersize=8, label="reference (base net)")]
    for series, style_of, label in (("relative AnB", "AnB", "mean AnB, random splits"),
                                    ("relative natman", "natman",
                                     f"mean AnB, {'m/n split' if the_papers else 'dissimilar halves'}"),
                                    ("relative random", "random", "random features")):
        if _curve(ax, points, series, style_of=style_of, label=label):
            handles.append(ax.lines[-1])
    if rpoints is not None:
        for series, style_of in (("relative AnB", "AnB"), ("relative natman", "natman"),
                                 ("relative random", "random")):
            xs = sorted({p.x for p in rpoints if p.series == series})
            means = [np.mean([p.value for p in rpoints if p.series == series and p.x == x]) for x in xs]
            if xs:
                ax.plot([0] + xs, [0.0] + means, color="0.6", linestyle=STYLE[style_of][4], linewidth=1.0, zorder=1)
        handles.append(Line2D([], [], color="0.6", label="2014 reference"))
    _base_marker(ax, 0)
    ax.set_xticks(range(8))
    ax.set_xlim(-0.2, 7.3)
    means = [m for series in ("relative AnB", "relative natman")
             for m in (_curve_means(points, series) or ([], []))[1]]
    ax.set_ylim(min(-0.3, min(means, default=0) - 0.02), max(0.03, max(means, default=0) + 0.02))
    ax.axhline(0, color="0.8", linewidth=0.6, zorder=0)
    ax.set_xlabel("Layer $n$ at which network is chopped and retrained")
    ax.set_ylabel("Relative top-1 accuracy (higher is better)")
    ax.legend(handles=handles, loc="lower left", fontsize=9, framealpha=0.95)


def plot_reduced(rows, out_stem: str | os.PathLike, reference=None, metric: str = "final",
                 formats=("png", "pdf"), title: str | None = None) -> list[Path]:
    """Top-1 accuracy of the whole-set net against the training images per class (linear and log axes)."""
    points = sorted((p for p in _points(rows, metric) if p.series == "reduced"), key=lambda p: p.x)
    fig, (ax_lin, ax_log) = plt.subplots(2, 1, figsize=(7, 7))
    rpoints = sorted((p for p in _points(reference, metric) if p.series == "reduced"), key=lambda p: p.x) \
        if reference is not None else []
    for ax, log in ((ax_lin, False), (ax_log, True)):
        if rpoints:
            ax.plot([p.x for p in rpoints], [p.value for p in rpoints], color="0.6", linestyle="--", marker="s",
                    markerfacecolor="white", markeredgecolor="0.5", label="2014 reference")
        ax.plot([p.x for p in points], [p.value for p in points], color="#0b2a6f", marker="o",
                markerfacecolor="#1f4fbf", markersize=8, label="top-1 accuracy")
        ax.set_ylabel("Top-1 accuracy")
        ax.grid(color="0.9", linewidth=0.6)
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("Number of examples per class (log)")
        else:
            ax.set_xlabel("Number of examples per class (linear)")
        if rpoints:
            ax.legend(fontsize=9, loc="lower right")
    if title:
        ax_lin.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out_stem), formats)


_CURVE_STYLES = [("-", "o"), ("--", "s"), ("-.", "D"), (":", "^"), ((0, (5, 1, 1, 1, 1, 1)), "v"),
                 ((0, (8, 2)), "P")]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window // 2, values[0]), values, np.full(window - 1 - window // 2, values[-1])])
    return np.convolve(padded, kernel, mode="valid")


def choose_curve_nets(rows: list[logs.NetSummary], limit: int = 5) -> list[str]:
    """A base net and transfer nets built on it (AnB at n = 1, 4, 7 and the deepest AnB+), those with logs."""
    have = [r for r in rows if r.final_iter is not None]
    base = next((r for r in have if series_of(r) == "baseB"), None)
    if base is None:
        return [r.net for r in have[:limit]]
    chosen = [base.net]
    anb = sorted((r for r in have if series_of(r) == "AnB" and r.base == base.net), key=lambda r: r.n or 0)
    wanted_n = {1, 4, 7} if len(anb) > 3 else {r.n for r in anb}
    chosen += [r.net for r in anb if r.n in wanted_n]
    ft = sorted((r for r in have if series_of(r) == "AnB+" and r.base == base.net), key=lambda r: r.n or 0)
    chosen += [r.net for r in ft[-1:]]
    return chosen[:limit]


def _curve_label(name: str) -> str:
    info = logs.net_info(name)
    kind, n, ft = info["kind"], info["n"], info["fine_tuned"]
    if kind == "base":
        return f"{name} (base net)"
    if kind in ("selffer", "transfer"):
        return f"{name} ({'BnB' if kind == 'selffer' else 'AnB'}{'+' if ft else ''}, n = {n})"
    return name


def plot_training_curves(nets: dict[str, "logs.NetLog"], out_stem: str | os.PathLike,
                         formats=("png", "pdf"), smooth: int = 50, max_points: int = 1500) -> list[Path]:
    """Train loss (moving mean over `smooth` displayed iterations) and top-1 test accuracy against iterations."""
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for k, (name, net) in enumerate(nets.items()):
        style, marker = _CURVE_STYLES[k % len(_CURVE_STYLES)]
        color = plt.get_cmap("tab10")(k % 10)
        label = _curve_label(name)
        if len(net.train) and "loss" in net.train.columns:
            its, loss = net.train["NumIters"], net.train["loss"]
            ok = ~np.isnan(loss)
            step = max(1, int(ok.sum()) // max_points)
            ax_loss.plot(its[ok][::step], _smooth(loss[ok], smooth)[::step], linestyle=style, color=color, linewidth=1.2,
                         marker=marker, markevery=max(1, int(ok.sum()) // step // 8), markersize=6, label=label)
        acc = logs.accuracy_column(net.test)
        if acc:
            its, values = net.test["NumIters"], net.test[acc]
            ok = ~np.isnan(values)
            ax_acc.plot(its[ok], values[ok], linestyle=style, color=color, linewidth=1.2, marker=marker,
                        markevery=max(1, int(ok.sum()) // 8), markersize=6, label=label)
    ax_loss.set_ylabel(f"Training loss (mean of {smooth} displays)" if smooth > 1 else "Training loss")
    ax_acc.set_ylabel("Top-1 test accuracy")
    ax_acc.set_xlabel("Iteration")
    for ax in (ax_loss, ax_acc):
        ax.grid(color="0.9", linewidth=0.6)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, Path(out_stem), formats)


_TITLES = {"fig2_transfer": "Figure 2: top-1 accuracy by series and n (x = layer n; 0 = base net)",
           "fig3_natman_random": "Figure 3: natural/man-made transfer, random features, relative accuracy "
                                 "(x = layer n; relative = net - its target's base net)",
           "reduced": "Reduced data: top-1 accuracy (x = images per class)",
           "fig2_paired": "Figure 2, paired: each net minus the base net of its target half (x = layer n)"}
# figure -> the function that draws it (None: a table only, drawn as a panel of another figure)
_PLOTTERS = {"fig2_transfer": plot_transfer, "fig2_paired": None, "fig3_natman_random": plot_natman_random,
             "reduced": plot_reduced}


def plot_all(rows, out_dir: str | os.PathLike, reference=None, metric: str = "final", formats=("png", "pdf"),
             prefix: str = "", curves: dict | None = None, echo=print) -> list[Path]:
    """Figures 2 and 3, the reduced-data curve (those the rows have nets for) and, given `curves`
    ({net: NetLog}), the training curves; each figure with its table (<stem>.txt/.csv), echoed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for figure, plotter in _PLOTTERS.items():
        table = figure_table(rows, figure, reference, metric)
        if not any(e["count"] for e in table):
            continue
        stem = out_dir / f"{prefix}{figure}"
        if plotter is not None:
            written += plotter(rows, stem, reference=reference, metric=metric, formats=formats)
        echo(write_table(table, _TITLES[figure] + f" [{metric} accuracy]", stem))
        written += [stem.with_suffix(".txt"), stem.with_suffix(".csv")]
    if curves:
        written += plot_training_curves(curves, out_dir / f"{prefix}training_curves", formats=formats)
    return written
