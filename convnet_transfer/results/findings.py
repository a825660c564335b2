"""The paper's findings checked on a run's numbers, in plain words (stage 5's last step; results/findings.txt).

    text = findings(table, paired, fig3)     # tables of plots.figure_table: fig2_transfer, fig2_paired,
                                             # fig3_natman_random (the last two optional)

The paper's numbers are PAPER_FIG2 and PAPER_FIG3 (from its 2014 logs); a difference counts as a finding only
when it is larger than the split-to-split spread of the paired differences (split_spread).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["PAPER_FIG2", "PAPER_FIG3", "split_spread", "findings"]

# The paper's Figure 2 (2014 logs, plots/reference_fig2_transfer.txt): mean top-1 accuracy by series and n.
PAPER_FIG2 = {
    "baseB": {0: 0.6245},
    "BnB": {1: 0.6262, 2: 0.6228, 3: 0.6203, 4: 0.6041, 5: 0.5933, 6: 0.6185, 7: 0.6229},
    "BnB+": {1: 0.6166, 2: 0.6214, 3: 0.6303, 4: 0.6284, 5: 0.6292, 6: 0.6274, 7: 0.6263},
    "AnB": {1: 0.6275, 2: 0.6233, 3: 0.6183, 4: 0.5994, 5: 0.5777, 6: 0.5804, 7: 0.5419},
    "AnB+": {1: 0.6364, 2: 0.6347, 3: 0.6421, 4: 0.6394, 5: 0.6443, 6: 0.6455, 7: 0.6457},
}
# The paper's Figure 3, lower panel (2014 logs, plots/reference_fig3_natman_random.txt): mean top-1 accuracy of the
# frozen transfer nets minus the base net of their target half, between the natural and man-made halves and
# between random halves; the whole-set net with its first n layers random and frozen, minus the whole-set net.
PAPER_FIG3 = {
    "relative natman": {1: 0.0029, 2: -0.0090, 3: -0.0321, 4: -0.0731, 5: -0.1302, 6: -0.1663, 7: -0.2510},
    "relative AnB": {1: 0.0030, 2: -0.0012, 3: -0.0063, 4: -0.0252, 5: -0.0468, 6: -0.0442, 7: -0.0826},
    "relative random": {1: -0.0844, 2: -0.1734, 3: -0.5743, 4: -0.5562, 5: -0.5254, 6: -0.5609, 7: -0.5607},
}


def _means(table: list[dict]) -> dict[str, dict[int, float]]:
    """A figure table -> {series: {n: mean}}, without the NaN means (no net with an accuracy)."""
    out: dict[str, dict[int, float]] = {}
    for entry in table:
        if not math.isnan(entry["mean"]):
            out.setdefault(entry["series"], {})[int(entry["x"])] = entry["mean"]
    return out


def split_spread(paired: list[dict]) -> float | None:
    """How much a paired difference (net minus its base net) varies from split to split: the median, over
    series and n, of the std across splits. None with one split (nothing to judge a difference by)."""
    stds = [e["std"] for e in paired if e["count"] >= 2 and not math.isnan(e["std"])]
    return float(np.median(stds)) if stds else None


def findings(table: list[dict], paired: list[dict] | None = None, fig3: list[dict] | None = None) -> str:
    """The paper's three findings checked on the numbers of `table` (fig2_transfer) and `paired` (fig2_paired),
    and from `fig3` (fig3_natman_random) a fourth when the dissimilar halves were trained and a fifth when the
    random-filter nets were, in plain words, beside the paper's. A difference counts only when it is larger than
    the split-to-split spread of the paired differences (split_spread); smaller ones are called within it."""
    ours, relative, spread = _means(table), _means(fig3 or []), split_spread(paired or [])
    base = ours.get("baseB", {}).get(0)
    answers = [_anb_falls(ours, spread), _bnb_dips(ours, spread), _fine_tuned_transfer_wins(ours, base, spread)]
    if not any(answers):
        return "No results to compare yet (no transfer or selffer net has a test accuracy in its logs)."
    answers += [_dissimilar_halves_lose_more(relative, spread), _transfer_beats_random_filters(relative, spread)]
    return "\n".join(_yardsticks(base, spread) + [answer for answer in answers if answer])


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _pts(value: float) -> str:
    return f"{100 * value:+.1f} points"


def _verdict(effect: float, spread: float | None) -> tuple[str, str]:
    """Whether `effect` (a gain in accuracy) is a finding beside the split-to-split `spread`: (the answer: Yes,
    No or Barely; the answer in words, with what qualifies it)."""
    if effect <= 0:
        return "No", "No"
    if spread is None:
        return "Yes", "Yes, on one split (no spread to judge it by)"
    if effect > spread:
        return "Yes", "Yes"
    return "Barely", f"Barely: within the split-to-split spread ({100 * spread:.1f} points)"


def _yardsticks(base: float | None, spread: float | None) -> list[str]:
    """The findings' first lines: the base nets' accuracy beside the paper's, and the split-to-split spread."""
    lines = []
    if base is not None:
        lines.append(f"Base nets B (trained on the target halves): mean top-1 {_pct(base)} (paper, ImageNet halves: "
                     f"{_pct(PAPER_FIG2['baseB'][0])}).")
    if spread is not None:
        lines.append(f"A paired difference (a net minus the base net of its half) varies by {100 * spread:.1f} "
                     f"points from split to split (median std); smaller differences are not findings.")
    return lines


def _anb_falls(ours: dict[str, dict[int, float]], spread: float | None) -> str | None:
    """Finding 1: transfer AnB falls from n = 1 to n = 7 (None without both)."""
    anb, paper = ours.get("AnB", {}), PAPER_FIG2["AnB"]
    if not (1 in anb and 7 in anb):
        return None
    return (f"1. Does transfer AnB fall with n? {_verdict(anb[1] - anb[7], spread)[1]}: AnB is {_pct(anb[1])} at n=1 "
            f"and {_pct(anb[7])} at n=7 ({_pts(anb[7] - anb[1])}). Paper: {_pct(paper[1])} -> {_pct(paper[7])} "
            f"({_pts(paper[7] - paper[1])}), as the upper layers' features become specific to the base task.")


def _bnb_dips(ours: dict[str, dict[int, float]], spread: float | None) -> str | None:
    """Finding 2: selffer BnB's lowest value at n = 3..6 lies below both ends (None without the ends and a middle)."""
    bnb, paper = ours.get("BnB", {}), PAPER_FIG2["BnB"]
    middle = {n: v for n, v in bnb.items() if 3 <= n <= 6}
    if not (1 in bnb and 7 in bnb and middle):
        return None
    n_min = min(middle, key=middle.get)
    return (f"2. Does selffer BnB dip in the middle? {_verdict(min(bnb[1], bnb[7]) - middle[n_min], spread)[1]}: its "
            f"lowest middle value is {_pct(middle[n_min])} at n={n_min}, against {_pct(bnb[1])} at n=1 and "
            f"{_pct(bnb[7])} at n=7. Paper: down to {_pct(paper[5])} at n=5 from {_pct(paper[1])} at n=1 and "
            f"{_pct(paper[7])} at n=7 (co-adapted middle layers that the upper layers cannot relearn alone).")


def _fine_tuned_transfer_wins(ours: dict[str, dict[int, float]], base: float | None,
                              spread: float | None) -> str | None:
    """Finding 3: fine-tuned transfer AnB+ beats the base nets, and selffer BnB+, the control trained as long
    (None without AnB+ or the base nets)."""
    anbp, bnbp = ours.get("AnB+", {}), ours.get("BnB+", {})
    if not anbp or base is None:
        return None
    mean_plus = float(np.mean(list(anbp.values())))
    p_base = PAPER_FIG2["baseB"][0]
    p_plus, p_ctrl = (float(np.mean(list(PAPER_FIG2[s].values()))) for s in ("AnB+", "BnB+"))
    line = (f"3. Does fine-tuned transfer AnB+ beat the base nets? {_verdict(mean_plus - base, spread)[1]}: AnB+ "
            f"averages {_pct(mean_plus)} over n=1..7 against {_pct(base)} ({_pts(mean_plus - base)}). Paper: "
            f"{_pct(p_plus)} against {_pct(p_base)} ({_pts(p_plus - p_base)}).")
    if not bnbp:
        return line
    control = float(np.mean(list(bnbp.values())))
    line += (f" The control is selffer BnB+, trained as long on its own half: {_pct(control)}, so transfer "
             f"itself adds {_pts(mean_plus - control)} ({_verdict(mean_plus - control, spread)[0]}). Paper: "
             f"BnB+ {_pct(p_ctrl)}, transfer adds {_pts(p_plus - p_ctrl)}: features from another task "
             f"generalize better even after fine-tuning.")
    if _verdict(control - base, spread)[0] == "Yes":
        line += (f" Here BnB+ itself beats its base nets by {_pts(control - base)}: the base nets are not "
                 f"trained to convergence as the paper's were, so fine-tuning goes on training them; "
                 f"compare AnB+ with BnB+, not with the base nets.")
    return line


def _dissimilar_halves_lose_more(relative: dict[str, dict[int, float]], spread: float | None) -> str | None:
    """Finding 4 (Figure 3): at n = 7 the frozen transfer nets between the dissimilar halves fall further below
    their base nets than those between random halves (None without both)."""
    far, near = relative.get("relative natman", {}), relative.get("relative AnB", {})
    if not (7 in far and 7 in near):
        return None
    p_far, p_near = PAPER_FIG3["relative natman"][7], PAPER_FIG3["relative AnB"][7]
    return (f"4. Does transfer between dissimilar halves lose more than between random halves? "
            f"{_verdict(near[7] - far[7], spread)[1]}: at n=7 the frozen transfer nets between the dissimilar halves "
            f"are {_pts(far[7])} from the base nets of their target halves, those between random halves "
            f"{_pts(near[7])}. Paper (natural/man-made): {_pts(p_far)} against {_pts(p_near)}: the less alike the "
            f"tasks, the less the upper layers' features transfer.")


def _transfer_beats_random_filters(relative: dict[str, dict[int, float]], spread: float | None) -> str | None:
    """Finding 5 (Figure 3): frozen transferred layers (AnB minus its base nets) stay above frozen random ones
    (the whole-set net with its first n layers random, minus the whole-set net), on average over the n of both."""
    random_filters, near = relative.get("relative random", {}), relative.get("relative AnB", {})
    p_random, p_transfer = PAPER_FIG3["relative random"], PAPER_FIG3["relative AnB"]
    both = sorted(set(random_filters) & set(near))
    if not both:
        return None
    gap = float(np.mean([near[n] - random_filters[n] for n in both]))
    shown = [n for n in (1, 2, 3) if n in random_filters and n in near]
    return (f"5. Do transferred features beat random ones? {_verdict(gap, spread)[1]}: with its first n layers random "
            f"and frozen, the whole-set net is "
            + ", ".join(f"{_pts(random_filters[n])} at n={n}" for n in shown)
            + " from the whole-set net; frozen transferred layers (AnB) "
            + ", ".join(_pts(near[n]) for n in shown)
            + f" from their base nets ({_pts(gap)} on average over n={both[0]}..{both[-1]}). Paper: "
            + ", ".join(_pts(p_random[n]) for n in shown) + " against " + ", ".join(_pts(p_transfer[n]) for n in shown)
            + ": random filters lose much more, near chance from n=3.")
