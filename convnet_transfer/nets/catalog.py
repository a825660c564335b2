"""The catalog of nets: one place that says what each net of the experiment is.

A net is trained on a split (its training and validation lists, e.g. `half0B`) and is one of:

    base      halfSX: trained from scratch on half X of split S; the base net of the transfer nets
    selffer   transferSXSX_1_n (BnB): first n layers copied from halfSX, trained on halfSX again
    transfer  transferSXSY_1_n (AnB): first n layers copied from halfSX, trained on halfSY
              `transfer-ft...` (BnB+, AnB+): the same with the copied layers fine-tuned instead of frozen
    nolearn   nolearn_1_n: first n layers random and frozen, trained on the whole set
    reduced   reduced-NNNN: the whole-set net trained on NNNN images per class
    whole     netbase: the whole-set net

Blocks say when a net can run: `one` (base nets), `two` (transfer and selffer nets, after their base net),
`whenever` (the rest).

    paper_catalog()          the 170 net directories of the 2014 release
    transfer_catalog(...)    the same protocol for another dataset (any splits, split points, reduced sizes)
    parse_net_name(name)     kind, split, n, fine_tuned, base read back from a name (the naming rules below)
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

__all__ = ["NetSpec", "Catalog", "transfer_catalog", "paper_catalog", "UnknownNetError", "KINDS", "BLOCKS",
           "block_order", "PAPER_REDUCED", "PAPER_REDUCED_SOLVER", "WHOLE_NET", "base_net_name", "transfer_net_name",
           "natman_transfer_name", "nolearn_net_name", "reduced_net_name", "parse_net_name"]

KINDS = ("base", "selffer", "transfer", "nolearn", "reduced", "whole")
BLOCKS = ("one", "two", "whenever")       # in the order they run


def block_order(block: str | None) -> int:
    """Where `block` runs among BLOCKS (a sort key: an unknown block after them all)."""
    return BLOCKS.index(block) if block in BLOCKS else len(BLOCKS)

# The reduced-volume nets: images per class, and the solver they were trained with in 2014.
PAPER_REDUCED = (1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000, 1300)
PAPER_REDUCED_SOLVER = {"base_lr": 0.0125, "stepsize": 64000, "max_iter": 200000}


# ---------------------------------------------------------------------------------------------- net names
# The 2014 release's directory names: built by the functions below, read back by parse_net_name.
#     half{S}{X}                   base net on half X (A or B) of split S       half0A, halfnatmanB
#     transfer{S}{X}{S}{Y}_1_{n}   layers 1..n of halfSX, trained on halfSY     transfer0A0B_1_3 (selffer: X = Y)
#     transfer-ft{S}{X}{S}{Y}_1_{n} the same with the copied layers fine-tuned (AnB+, BnB+)
#     transfernatman{X}{Y}_1_{n}   the natural/man-made split: its name once
#     nolearn_1_{n}    reduced-{NNNN}    netbase

WHOLE_NET = "netbase"


def base_net_name(split: str, half: str) -> str:
    return f"half{split}{half}"


def transfer_net_name(split: str, base_half: str, target_half: str, n: int, fine_tuned: bool = False) -> str:
    return f"{'transfer-ft' if fine_tuned else 'transfer'}{split}{base_half}{split}{target_half}_1_{n}"


def natman_transfer_name(base_half: str, target_half: str, n: int) -> str:
    return f"transfernatman{base_half}{target_half}_1_{n}"


def nolearn_net_name(n: int) -> str:
    return f"nolearn_1_{n}"


def reduced_net_name(per_class: int) -> str:
    return f"reduced-{per_class:04d}"


def _pair_kind(x: str, y: str) -> str:
    return "selffer" if x == y else "transfer"


_NET_NAME = re.compile(r"^(?:half(?P<half>\w+?)(?P<hx>[AB])"
                       r"|transfer(?P<ft>-ft)?(?P<s>\w+?)(?P<x>[AB])(?P=s)(?P<y>[AB])_1_(?P<n>\d+)"
                       r"|nolearn_1_(?P<nl>\d+)|reduced-(?P<red>\d+)|(?P<whole>" + re.escape(WHOLE_NET) + "))$")


def parse_net_name(name: str) -> dict:
    """{kind, split, n, fine_tuned, base} of a net from its name alone (all None/False when it follows none of
    the rules above). Not read back: transfernatman names (the catalogs list them), a reduced net's split
    (read as `reduced{NNNN}`, n = NNNN, whatever its images per class)."""
    m = _NET_NAME.match(name)
    if m is None:
        return {"kind": None, "split": None, "n": None, "fine_tuned": False, "base": None}
    g = m.groupdict()
    if g["hx"]:
        return {"kind": "base", "split": base_net_name(g["half"], g["hx"]), "n": None, "fine_tuned": False,
                "base": None}
    if g["n"]:
        return {"kind": _pair_kind(g["x"], g["y"]), "split": base_net_name(g["s"], g["y"]), "n": int(g["n"]),
                "fine_tuned": bool(g["ft"]), "base": base_net_name(g["s"], g["x"])}
    if g["nl"]:
        return {"kind": "nolearn", "split": "whole", "n": int(g["nl"]), "fine_tuned": False, "base": None}
    if g["red"]:
        return {"kind": "reduced", "split": f"reduced{g['red']}", "n": int(g["red"]), "fine_tuned": False,
                "base": None}
    return {"kind": "whole", "split": "whole", "n": None, "fine_tuned": False, "base": None}


class UnknownNetError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True)
class NetSpec:
    name: str
    kind: str                      # one of KINDS
    split: str                     # the split it trains on: <data>/<split>_train
    val_split: str                 # the split it is validated on: <data>/<val_split>_valid
    base: str | None = None        # the base net whose first n layers it copies (depends_on)
    n: int | None = None           # split point: layers 1..n copied (or random and frozen for nolearn)
    fine_tuned: bool = False       # copied layers trained further (+) rather than frozen
    solver: dict = field(default_factory=dict, hash=False, compare=False)  # solver fields that differ
    padding_layers: bool = False   # 2014 format only: convolution padding as separate `padding` layers (netbase)

    @property
    def block(self) -> str:
        return {"base": "one", "selffer": "two", "transfer": "two"}.get(self.kind, "whenever")

    @property
    def frozen(self) -> int:
        """How many of the first layers are frozen (lr 0): n for frozen transfer and nolearn nets, else 0."""
        return self.n if self.n and not self.fine_tuned else 0

    @property
    def renamed(self) -> bool:
        """Transfer nets rename the layers after n (`fc8` -> `fc8-new`) so `caffe train -weights` leaves them
        to their fillers."""
        return self.base is not None

    def describe(self) -> str:
        if self.kind == "base":
            return f"base net on {self.split}"
        if self.kind in ("selffer", "transfer"):
            how = "fine-tuned" if self.fine_tuned else "frozen"
            return f"{self.kind}: layers 1-{self.n} of {self.base} ({how}), trained on {self.split}"
        if self.kind == "nolearn":
            return f"layers 1-{self.n} random and frozen, trained on {self.split}"
        if self.kind == "reduced":
            return f"whole-set net trained on {self.split}"
        return f"whole-set net on {self.split}"

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "block": self.block, "depends_on": self.base,
                "split": self.split, "n": self.n, "fine_tuned": self.fine_tuned}


class Catalog:
    """An ordered set of NetSpecs: block one, then block two (each net after its base net), then the rest.
    A full catalog holds the base net of each of its transfer nets; a selection (`select`) need not."""

    def __init__(self, nets: Iterable[NetSpec], *, check_bases: bool = True):
        nets = list(nets)
        self._nets = sorted(nets, key=lambda net: block_order(net.block))   # stable: keeps the order in a block
        self._by_name = {}
        for net in self._nets:
            if net.kind not in KINDS:
                raise ValueError(f"net {net.name}: unknown kind {net.kind!r}; kinds are {KINDS}")
            if net.name in self._by_name:
                raise ValueError(f"net {net.name} is in the catalog twice")
            self._by_name[net.name] = net
        for net in self._nets if check_bases else ():
            if net.base is not None and net.base not in self._by_name:
                raise ValueError(f"net {net.name}: its base net {net.base} is not in the catalog")

    def __iter__(self) -> Iterator[NetSpec]:
        return iter(self._nets)

    def __len__(self) -> int:
        return len(self._nets)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> NetSpec:
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._by_name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNetError(f"unknown net {name!r}{hint} (`tools/gen_nets --list` lists the "
                                  f"{len(self)} nets)") from None

    @property
    def names(self) -> list[str]:
        return [net.name for net in self._nets]

    def select(self, patterns: str | Iterable[str] | None) -> "Catalog":
        """The nets whose name matches any glob in `patterns` (comma-separated or a list); all when None.
        A pattern without wildcards must name a net; a pattern matching nothing is an error."""
        if patterns is None:
            return self
        if isinstance(patterns, str):
            patterns = patterns.split(",")
        patterns = [p.strip() for p in patterns if p.strip()]
        chosen = set()
        for pattern in patterns:
            if not any(ch in pattern for ch in "*?["):
                chosen.add(self[pattern].name)
                continue
            hits = fnmatch.filter(self.names, pattern)
            if not hits:
                raise UnknownNetError(f"no net matches {pattern!r} (`tools/gen_nets --list` lists the "
                                      f"{len(self)} nets)")
            chosen.update(hits)
        return Catalog((net for net in self._nets if net.name in chosen), check_bases=False)

    def as_json(self) -> list[dict]:
        return [net.as_json() for net in self]


def transfer_catalog(splits: Iterable[str] = ("0", "1", "2", "3"), n_layers: int = 7, *,
                     pairs: Iterable[str] = ("AA", "AB", "BA"),
                     fine_tuned: bool | Iterable[str] = ("0", "1"),
                     natman: bool = True, natman_pairs: Iterable[str] = ("AB", "BA"),
                     nolearn: bool = True,
                     reduced: Iterable[int] = PAPER_REDUCED, reduced_solver: dict | None = None,
                     whole_per_class: int = 1300,
                     whole: bool = True) -> Catalog:
    """The AnB / BnB / AnB+ / BnB+ protocol over random splits.

    splits: split seeds; split s has halves `half{s}A`, `half{s}B` (base nets of the same name).
    pairs: which (base half, target half) pairs to transfer, "AB" = base on A, trained on B (AnB);
        "AA"/"BB" are selffer nets. The paper ran AA, AB and BA.
    fine_tuned: splits that also get fine-tuned (+) transfer nets: True for all, False for none.
    natman: the natural/man-made halves (`halfnatmanA`/`B` base nets and `transfernatman{AB,BA}_1_n`).
    nolearn: random frozen layers `nolearn_1_n`.
    reduced: images per class of the `reduced-NNNN` nets; a count >= whole_per_class trains on the whole set.
    whole: `netbase`, the whole-set net.
    Defaults give the paper's 170 nets.
    """
    splits = [str(s) for s in splits]
    pairs = list(pairs)
    ft_splits = set(splits) if fine_tuned is True else set() if fine_tuned is False else {str(s) for s in fine_tuned}
    points = range(1, n_layers + 1)
    nets: list[NetSpec] = []
    for s in splits:
        nets += [NetSpec(base_net_name(s, h), "base", base_net_name(s, h), base_net_name(s, h)) for h in "AB"]
    if natman:
        nets += [NetSpec(base_net_name("natman", h), "base", base_net_name("natman", h), base_net_name("natman", h))
                 for h in "AB"]
    if whole:
        # netbase's 2014 files predate Caffe's `pad` in convolutions; the same net, written the old way.
        nets.append(NetSpec(WHOLE_NET, "whole", "whole", "whole", padding_layers=True))
    for s in splits:
        for tuned in (False, True) if s in ft_splits else (False,):
            for x, y in pairs:
                for n in points:
                    nets.append(NetSpec(transfer_net_name(s, x, y, n, tuned), _pair_kind(x, y), base_net_name(s, y),
                                        base_net_name(s, y), base=base_net_name(s, x), n=n, fine_tuned=tuned))
    if natman:
        for x, y in natman_pairs:
            for n in points:
                nets.append(NetSpec(natman_transfer_name(x, y, n), _pair_kind(x, y), base_net_name("natman", y),
                                    base_net_name("natman", y), base=base_net_name("natman", x), n=n))
    if nolearn:
        nets += [NetSpec(nolearn_net_name(n), "nolearn", "whole", "whole", n=n) for n in points]
    solver = dict(PAPER_REDUCED_SOLVER if reduced_solver is None else reduced_solver)
    for count in reduced:
        split = "whole" if count >= whole_per_class else f"reduced{count:04d}"
        nets.append(NetSpec(reduced_net_name(count), "reduced", split, "whole", solver=solver))
    return Catalog(nets)


def paper_catalog() -> Catalog:
    """The 170 net directories of the 2014 release (163 counted in its README, plus the 7 nolearn nets)."""
    return transfer_catalog()
