"""The generated tree, what stage 3 writes and stage 4 reads: `<root>/nets.json` (its spec: docs/nets.md) and one
directory per net with its solver, prototxts and `train.sh` (resumes from the newest .solverstate; exits 0 at once
when the final snapshot exists).

    read_nets_json(path), nets_json_text(entries, listed)   nets.json read (damage refused) and written
    read_tree(root, nets)        the nets of a tree (TreeNet), base nets first, with their final snapshots
    with_base_nets(root, tree, nets)   the nets matching `nets` and the base nets they need
    changed_nets(tree)           the nets trained with other settings than their files now hold (settings_change),
                                 and the nets trained from them; check_settings(tree) refuses them
    NetStatus, net_logs, scan_log, format_status   what a net's directory says of its training, as a table

What a net is trained with: when its training starts from scratch, train.sh writes <net>/trained_with.txt (RECORD),
every line of its solver and net prototxts but comment lines as "<file>: <line>" (leading blanks dropped) and, for
a net started from its base net's weights, "weights: <md5> basenet/<file>". A net with snapshots is trained on,
or counted as trained, only while its files still say the same; a rerun with other settings is refused, naming
the setting, instead of resuming old snapshots under a new schedule. A net trained before the record was kept
(no trained_with.txt) is taken as trained with its settings now: gen_nets records them before it rewrites them.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from convnet_transfer.formats import snapshots
from convnet_transfer.formats.protoio import ProtoFileError, atomic_write_bytes, read_solver
from .catalog import block_order

__all__ = ["TreeNet", "TreeError", "NetStatus", "read_nets_json", "nets_json_text", "read_tree", "with_base_nets",
           "settings_change", "changed_nets", "check_settings", "format_changes", "record_settings", "net_logs",
           "scan_log", "newest_snapshot_iteration", "format_status", "NETS_JSON", "RECORD", "SAFE_NAME", "START_AFRESH"]

NETS_JSON = "nets.json"              # <root>/nets.json: the nets of the tree (docs/nets.md)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")   # net names that are safe in file names, bash and make
RECORD = "trained_with.txt"          # <net>/trained_with.txt: the settings its snapshots were trained with
# how to go on with nets trained with other settings (check_settings, gen_nets' warning)
START_AFRESH = (f"({RECORD} in each net holds them), or start fresh: move their snapshots "
                f"({snapshots.snapshot_glob()}) and {RECORD} away, or render into another --out")


class TreeError(ValueError):
    """A tree that cannot be scheduled (no nets.json, a missing directory, a cycle, an untrained base net)."""


# ---------------------------------------------------------------------------------------------- nets.json

def read_nets_json(path: Path) -> list[dict]:
    """The entries of a nets.json (one object with a "name" per net); TreeError naming it when it is not one."""
    try:
        entries = json.loads(path.read_text())
    except ValueError as err:
        raise TreeError(f"{path}: not valid JSON ({err}); delete it and run tools/gen_nets again") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                for e in entries):
        raise TreeError(f"{path}: not a list of nets, each with a name, as tools/gen_nets writes it; delete it "
                        f"and run tools/gen_nets again")
    return entries


def nets_json_text(entries: list[dict], listed: list[dict] | None = None) -> str:
    """The text of a nets.json holding `entries`; with the entries `listed` there before, those of other nets are
    kept (ordered by block, as the catalog orders them)."""
    if listed is not None:
        names = {e["name"] for e in entries}
        entries = [e for e in listed if e["name"] not in names] + entries
        entries.sort(key=lambda e: block_order(e.get("block")))
    return json.dumps(entries, indent=1) + "\n"


# ---------------------------------------------------------------------------------------------- the tree

@dataclass(frozen=True)
class TreeNet:
    name: str
    kind: str
    block: str
    depends_on: str | None
    dir: Path                 # absolute
    prefix: str               # its solver's snapshot_prefix
    max_iter: int

    @property
    def final(self) -> str:
        """The final snapshot, relative to dir: <prefix>_iter_<max_iter>.caffemodel."""
        return snapshots.snapshot_name(self.prefix, self.max_iter)

    def final_path(self) -> Path:
        """The final snapshot: the existing one (current name, or 2014's without extension), else the current name."""
        current = self.dir / self.final
        legacy = current.with_suffix("")
        return legacy if (legacy.exists() and not current.exists()) else current

    @property
    def finished(self) -> bool:
        return self.final_path().exists()

    @property
    def started(self) -> bool:
        """Whether it has any snapshot (<prefix>_iter_*): something trained with its settings."""
        return any(self.dir.glob(snapshots.snapshot_glob(self.prefix)))


# ---------------------------------------------------------------------------------------------- settings

def _settings_lines(net_dir: Path, files: list[str]) -> list[str]:
    """The settings lines of RECORD for the prototxts `files` of a net, as they are now (train.sh's settings())."""
    lines = []
    for name in files:
        text = (net_dir / name).read_text()
        for line in text.removesuffix("\n").split("\n") if text else []:
            line = line.lstrip(" \t\v\f\r")
            if not line.startswith("#"):
                lines.append(f"{name}: {line}")
    return lines


def record_settings(net_dir: str | os.PathLike, files: list[str]) -> bool:
    """Record a net trained before RECORD was kept as trained with the prototxts `files` as they are now (before
    gen_nets rewrites them): writes <net_dir>/RECORD when the net has snapshots and no record. Returns whether it
    wrote one. (Its base net's weights are not recorded: which ones it started from is not known.)"""
    net_dir = Path(net_dir)
    if (net_dir / RECORD).exists() or not any(net_dir.glob(snapshots.snapshot_glob())) or \
            not all((net_dir / f).is_file() for f in files):
        return False
    text = "".join(line + "\n" for line in _settings_lines(net_dir, files))
    atomic_write_bytes(net_dir / RECORD, text.encode(), durable=False)
    return True


@functools.lru_cache(maxsize=256)
def _md5(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_line(base: TreeNet) -> str | None:
    """RECORD's weights line for a net started from `base`'s final snapshot, None when that is not there."""
    path = base.final_path()
    if not path.is_file():
        return None
    stat = path.stat()
    return f"weights: {_md5(str(path), stat.st_size, stat.st_mtime_ns)} basenet/{path.name}"


def _describe(pairs: list[tuple[str, str]]) -> str:
    """Changed lines of RECORD (was, now) in words, as train.sh says them: "solver.prototxt: max_iter 30 -> 40,
    snapshot 15 -> 20; its base net was retrained: ..." (the file named once for a run of its lines)."""
    text, file = "", None
    for was, now in pairs:
        key, other = re.sub(r": [^:]*$", "", was), re.sub(r": [^:]*$", "", now)
        if key == other == "weights":
            (_, old, _), (_, new, path) = was.split(" ", 2), now.split(" ", 2)
            change, where = f"its base net was retrained: {path} has md5 {new}, it started from md5 {old}", None
        elif key == other and ": " in key:
            where, _, field = key.partition(": ")
            change = f"{field} {was[len(key) + 2:]} -> {now[len(key) + 2:]}"
        else:
            change, where = f'"{was}" -> "{now}"', None
        text += ("" if not text else ", " if where and where == file else "; ") + \
            (f"{where}: " if where and where != file else "") + change
        file = where
    return text


def settings_change(net: TreeNet, base: TreeNet | None = None) -> str | None:
    """How the settings `net`'s snapshots were trained with (its RECORD) differ from its files now, in words
    ("solver.prototxt: max_iter 30 -> 40; ..." or "its base net was retrained: ..."); `base`: its base net, whose
    final snapshot must be the weights it started from. None when they match, or when it has no snapshot or no
    record (trained before records were kept)."""
    record = net.dir / RECORD
    if not net.started or not record.is_file():
        return None
    was = record.read_text().splitlines()
    files = list(dict.fromkeys(line.split(": ", 1)[0] for line in was if not line.startswith("weights: ")))
    missing = [f for f in files if not (net.dir / f).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    now = _settings_lines(net.dir, files)
    weights = _weights_line(base) if base else None
    if weights and any(line.startswith("weights: ") for line in was):
        now.append(weights)
    else:
        was = [line for line in was if not line.startswith("weights: ")]
    if was == now:
        return None
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, was, now, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += was[i1:i2]
            added += now[j1:j2]
    pairs = list(itertools.zip_longest(removed, added, fillvalue=""))
    return _describe(pairs[:5]) + (f" and {len(pairs) - 5} more" if len(pairs) > 5 else "")


def changed_nets(tree: list[TreeNet]) -> dict[str, str]:
    """net -> how its settings changed (settings_change), for the nets of `tree` (base nets first, as read_tree
    orders them) trained with other settings than their files now hold, and the nets trained from such a net."""
    by_name = {net.name: net for net in tree}
    changed: dict[str, str] = {}
    for net in tree:
        base = by_name.get(net.depends_on) if net.depends_on else None
        change = settings_change(net, base)
        if change is None and base is not None and base.name in changed and net.started:
            change = f"its base net {base.name} was trained with other settings"
        if change:
            changed[net.name] = change
    return changed


def format_changes(changed: dict[str, str], shown: int = 3) -> str:
    """The changed nets in one line, those with the same change together:
    "half0A, half0B, transfer0A0B_1_1 and 13 more (solver.prototxt: max_iter 30 -> 40); ..."."""
    groups: dict[str, list[str]] = {}
    for name, change in changed.items():
        groups.setdefault(change, []).append(name)
    parts = []
    for change, names in list(groups.items())[:shown]:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{', '.join(names[:shown])}{more} ({change})")
    rest = sum(len(names) for names in list(groups.values())[shown:])
    return "; ".join(parts) + (f"; and {rest} more nets" if rest else "")


def check_settings(root: str | os.PathLike, tree: list[TreeNet], names: set[str] | None = None) -> None:
    """Raise TreeError, before anything is trained, when nets of `tree` (those in `names`, when given) were trained
    with other settings than their files now hold (changed_nets): it names them, what changed, and how to go on."""
    changed = {name: change for name, change in changed_nets(tree).items() if names is None or name in names}
    if changed:
        nets = f"{len(changed)} nets were" if len(changed) > 1 else "1 net was"
        raise TreeError(f"{root}: {nets} trained with other settings (or base net weights) than they have now: "
                        f"{format_changes(changed)}; nothing was started and nothing deleted. Render the settings "
                        f"they were trained with again {START_AFRESH}")


def _solver_facts(net_dir: Path, solver_name: str) -> tuple[str, int]:
    """(snapshot_prefix, max_iter) of a net's solver (the names of its snapshots)."""
    path = net_dir / solver_name
    if not path.is_file():
        raise TreeError(f"{path}: the solver of this net is missing; render the tree again with tools/gen_nets")
    try:
        solver = read_solver(path)
    except ProtoFileError as err:
        raise TreeError(f"{err}; mend it, or render the tree again with tools/gen_nets") from None
    if not solver.max_iter:
        raise TreeError(f"{path}: no max_iter, so the final snapshot is unknown")
    return solver.snapshot_prefix, int(solver.max_iter)


def read_tree(root: str | os.PathLike, nets: list[str] | None = None) -> list[TreeNet]:
    """The nets of `<root>/nets.json` (those matching the fnmatch patterns `nets`, when given), ordered so
    that each base net comes before the nets that depend on it (then by block, then as listed)."""
    root = Path(root).resolve()
    listing = root / NETS_JSON
    if not listing.is_file():
        raise TreeError(f"{listing} not found: generate the nets first (tools/gen_nets --all --out {root})")
    entries = read_nets_json(listing)
    by_name: dict[str, TreeNet] = {}
    for entry in entries:
        name = entry.get("name", "")
        if not SAFE_NAME.match(name):
            raise TreeError(f"{listing}: net name {name!r} has characters that are unsafe in file names and "
                            f"scripts (use letters, digits and _ . + -)")
        net_dir = root / entry.get("dir", name)
        if not (net_dir / entry.get("train_sh", "train.sh")).is_file():
            raise TreeError(f"{net_dir}/train.sh is missing: render the net again (tools/gen_nets --only {name})")
        prefix, max_iter = _solver_facts(net_dir, entry.get("solver", "solver.prototxt"))
        by_name[name] = TreeNet(name, entry.get("kind", ""), entry.get("block", "whenever"),
                                entry.get("depends_on") or None, net_dir, prefix, max_iter)
    for net in by_name.values():
        if net.depends_on and net.depends_on not in by_name:
            raise TreeError(f"{listing}: {net.name} depends on {net.depends_on}, which is not in the tree; "
                            f"render it too (tools/gen_nets --only {net.depends_on})")
    ordered: list[TreeNet] = []
    state: dict[str, int] = {}

    def visit(net: TreeNet, path: tuple = ()) -> None:
        if state.get(net.name) == 2:
            return
        if state.get(net.name) == 1:
            raise TreeError(f"{listing}: the dependencies form a cycle: {' -> '.join(path + (net.name,))}")
        state[net.name] = 1
        if net.depends_on:
            visit(by_name[net.depends_on], path + (net.name,))
        state[net.name] = 2
        ordered.append(net)

    for net in sorted(by_name.values(), key=lambda n: block_order(n.block)):
        visit(net)
    if nets:
        unknown = [p for p in nets if not any(fnmatch.fnmatchcase(n.name, p) for n in ordered)]
        if unknown:
            raise TreeError(f"no net in {listing} matches {', '.join(unknown)}")
        ordered = [n for n in ordered if any(fnmatch.fnmatchcase(n.name, p) for p in nets)]
    return ordered


def with_base_nets(root: str | os.PathLike, tree: list[TreeNet], nets: list[str] | None) -> set[str]:
    """The names of the nets of `tree` (read from `root`) matching the patterns `nets` (all when None) and of the
    base nets they need (their base net, its base net, ...): what a runner trains when asked for `nets`."""
    by_name = {n.name: n for n in tree}
    chosen: set[str] = set()
    for net in read_tree(root, nets) if nets else tree:
        while net is not None and net.name not in chosen:
            chosen.add(net.name)
            net = by_name[net.depends_on] if net.depends_on else None
    return chosen

# ---------------------------------------------------------------------------------------------- status

ITERATION = re.compile(r"\bIteration (\d+)")
ACCURACY = re.compile(r"Test net output #\d+: (\S*accuracy\S*) = ([-+0-9.eE]+|nan|inf)")
FATAL_LINE = re.compile(r"^F\d{4}(\d{4})? ")                  # glog: F1124 ... or (newer glog) F20261124 ...
ERROR_LINE = re.compile(r"^(E\d{4}(\d{4})? |Traceback|\S*Error\b|.*\berror\b|.*Check failed|.*Aborted)",
                        re.IGNORECASE)


@dataclass
class NetStatus:
    name: str
    block: str
    depends_on: str | None
    state: str                 # finished | running | pending | failed | stopped | not started | changed
    iteration: int | None = None
    max_iter: int | None = None
    accuracy: float | None = None
    detail: str = ""           # the Slurm job and reason, or the log line that says why it failed
    log: str | None = None     # the newest log file

    def as_dict(self) -> dict:
        return asdict(self)


def net_logs(net_dir: Path, name: str | None = None) -> list[Path]:
    """The net's Caffe logs, oldest first: <net>.<stamp>.log from train.sh (and any *.log, 2014's *.o<job>)."""
    logs = [p for p in net_dir.iterdir() if p.is_file() and (p.suffix == ".log" or re.search(r"\.o\d+$", p.name))]
    return sorted(logs, key=lambda p: (p.stat().st_mtime, p.name))


def scan_log(path: Path) -> dict:
    """The last iteration, last test accuracy and the first fatal / last error line of a Caffe log."""
    iteration = accuracy = None
    fatal = error = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = ITERATION.search(line)
                if m:
                    iteration = int(m.group(1))
                m = ACCURACY.search(line)
                if m and (accuracy is None or m.group(1) == "accuracy" or accuracy[0] != "accuracy"):
                    accuracy = (m.group(1), float(m.group(2)))
                stripped = line.strip()
                if FATAL_LINE.match(stripped) and fatal is None:
                    fatal = stripped
                elif ERROR_LINE.match(stripped) and "error_" not in stripped:
                    error = stripped
    except OSError:
        pass
    return {"iteration": iteration, "accuracy": accuracy[1] if accuracy else None, "error": fatal or error}


def newest_snapshot_iteration(net_dir: Path) -> int | None:
    """The iteration of the newest solver state in `net_dir` (what train.sh resumes from), None when none."""
    iters = [snapshots.snapshot_iteration(p.name) for p in net_dir.glob(snapshots.snapshot_glob() + snapshots.STATE)]
    return max((i for i in iters if i is not None), default=None)


def format_status(statuses: list[NetStatus]) -> str:
    """A table of the statuses, then counts per state."""
    lines = [f"{'net':<28} {'state':<12} {'iteration':>17} {'accuracy':>9}  detail"]
    for s in statuses:
        it = f"{s.iteration}/{s.max_iter}" if s.iteration is not None else f"-/{s.max_iter}"
        acc = f"{s.accuracy:.4f}" if s.accuracy is not None else ""
        lines.append(f"{s.name:<28} {s.state:<12} {it:>17} {acc:>9}  {s.detail}".rstrip())
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(statuses)} nets)")
    return "\n".join(lines)
