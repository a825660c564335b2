"""The experiment on Slurm: job arrays with dependencies, surviving time limits, and a status report.

A generated tree (tools/gen_nets) is `<root>/nets.json` plus one directory per net with its `train.sh`
(resumes from the newest .solverstate; exits 0 at once when the final snapshot exists).

    read_tree(root)              the nets of a tree, base nets first, with their final snapshots
    plan(root, options)          the job arrays to submit (SlurmPlan): scripts from templates/slurm/
    submit(plan, dry_run=False)  writes <root>/slurm/*.sh, runs `sbatch --parsable` for each array in order,
                                 records the job ids in <root>/slurm/jobs.json; dry_run prints instead
    tree_status(root)            every net: pending / running (iteration) / finished (accuracy) /
                                 failed (the log line that says why) / stopped / not started /
                                 changed (trained with other settings than its files now hold)
    changed_nets(tree)           the nets trained with other settings than their files now hold (settings_change),
                                 and the nets trained from them; check_settings(tree) refuses them

What a net is trained with: when its training starts from scratch, train.sh writes <net>/trained_with.txt (RECORD),
every line of its solver and net prototxts but comment lines as "<file>: <line>" (leading blanks dropped) and, for
a net started from its base net's weights, "weights: <md5> basenet/<file>". A net with snapshots is trained on,
or counted as trained, only while its files still say the same; a rerun with other settings is refused, naming
the setting, instead of resuming old snapshots under a new schedule. A net trained before the record was kept
(no trained_with.txt) is taken as trained with its settings now: gen_nets records them before it rewrites them.

How the experiment maps onto Slurm:
  - block one (the base nets) is one job array, one task per net;
  - the transfer and selffer nets of one base net form one array that waits for that base net's own task
    (`--dependency=afterok:<job>_<task>`), so each transfer net starts as soon as its base net is trained,
    not when the whole block is; one array per base net keeps every dependency a single task id;
  - the rest (nolearn, reduced, whole-set nets) is one array with no dependency.
Each task trains one net: it runs `train.sh` in the net's directory (so Caffe's logs stay there) in its own
process group; Slurm's own stdout/stderr go to <root>/slurm/. Before the time limit Slurm signals the job
script (`--signal=B:USR1@<lead>`); the script sends SIGINT to the trainer (real Caffe and caffe_torch both
snapshot, then stop), waits for it and requeues the job (`scontrol requeue`); the next run's train.sh resumes
from that snapshot. SIGTERM (scancel, preemption) stops the trainer the same way without requeueing (Slurm
requeues preempted jobs itself). A task whose net has its final snapshot exits 0 at once.
"""
from __future__ import annotations

import difflib
import fcntl
import fnmatch
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convnet_transfer.nets import netgen
from convnet_transfer import resources
from convnet_transfer.formats.protoio import atomic_write_bytes, file_mode

__all__ = ["TreeNet", "TreeError", "SlurmOptions", "SlurmJob", "SlurmPlan", "NetStatus", "read_tree", "plan",
           "submit", "tree_status", "format_status", "caffe_command", "trainer_env", "job_records",
           "queued_tasks", "with_base_nets", "settings_change", "changed_nets", "check_settings", "format_changes",
           "record_settings", "SLURM_DIR", "RECORD"]

SLURM_DIR = "slurm"                  # <root>/slurm: job scripts, Slurm's stdout/err files, jobs.json
BLOCK_ORDER = ("one", "two", "whenever")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")   # net names that are safe in file names, bash and make
RECORD = "trained_with.txt"          # <net>/trained_with.txt: the settings its snapshots were trained with


class TreeError(ValueError):
    """A tree that cannot be scheduled (no nets.json, a missing directory, a cycle, an untrained base net)."""


# ---------------------------------------------------------------------------------------------- the tree

@dataclass(frozen=True)
class TreeNet:
    name: str
    kind: str
    block: str
    depends_on: str | None
    dir: Path                 # absolute
    final: str                # the final snapshot, relative to dir: <prefix>_iter_<max_iter>.caffemodel
    max_iter: int

    def final_path(self) -> Path:
        """The final snapshot: the existing one (current name, or 2014's without extension), else the current name."""
        current = self.dir / self.final
        legacy = current.with_suffix("")
        return legacy if (legacy.exists() and not current.exists()) else current

    @property
    def finished(self) -> bool:
        current = self.dir / self.final
        return current.exists() or current.with_suffix("").exists()

    @property
    def started(self) -> bool:
        """Whether it has any snapshot (<prefix>_iter_*): something trained with its settings."""
        return any(self.dir.glob(self.final.rsplit("_iter_", 1)[0] + "_iter_*"))


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
    if (net_dir / RECORD).exists() or not any(net_dir.glob("*_iter_*")) or \
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
                        f"they were trained with again ({RECORD} in each net holds them), or start fresh: move their "
                        f"snapshots (*_iter_*) and {RECORD} away, or render into another --out")


def _solver_facts(net_dir: Path, solver_name: str) -> tuple[str, int]:
    """(snapshot_prefix, max_iter) of a net's solver (the names of its snapshots)."""
    from convnet_transfer.formats.protoio import ProtoFileError, read_solver
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
    listing = root / "nets.json"
    if not listing.is_file():
        raise TreeError(f"{listing} not found: generate the nets first (tools/gen_nets --all --out {root})")
    try:
        entries = netgen.read_nets_json(listing)
    except netgen.NetgenError as err:
        raise TreeError(str(err)) from None
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
                                entry.get("depends_on") or None, net_dir, f"{prefix}_iter_{max_iter}.caffemodel",
                                max_iter)
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

    rank = {b: i for i, b in enumerate(BLOCK_ORDER)}
    for net in sorted(by_name.values(), key=lambda n: rank.get(n.block, len(rank))):
        visit(net)
    if nets:
        unknown = [p for p in nets if not any(fnmatch.fnmatchcase(n.name, p) for n in ordered)]
        if unknown:
            raise TreeError(f"no net in {listing} matches {', '.join(unknown)}")
        ordered = [n for n in ordered if any(fnmatch.fnmatchcase(n.name, p) for p in nets)]
    return ordered


def with_base_nets(tree: list[TreeNet], selected: list[TreeNet]) -> set[str]:
    """The names of the nets `selected` and of the base nets they need (their base net, its base net, ...)."""
    by_name = {n.name: n for n in tree}
    chosen: set[str] = set()
    for net in selected:
        while net is not None and net.name not in chosen:
            chosen.add(net.name)
            net = by_name[net.depends_on] if net.depends_on else None
    return chosen


def caffe_command(engine: str = "auto") -> str:
    """The CAFFE value train.sh runs, for engine "caffe" (real Caffe), "torch" (tools/caffe_torch) or "auto"."""
    return trainer_env(engine)["CAFFE"]


def trainer_env(engine: str = "auto", command: str | None = None, base: dict | None = None) -> dict[str, str]:
    """`base` (default: empty) with CAFFE set to the trainer train.sh runs: `command` when given, else real Caffe
    (engine "caffe", or "auto" when a working build is found) or tools/caffe_torch; for real Caffe also its lib/
    and pycaffe put before base's LD_LIBRARY_PATH and PYTHONPATH, and GLOG_logtostderr (realcaffe.CaffeInstall.env).
    Raises TreeError when real Caffe is asked for and not found."""
    from . import realcaffe
    env = dict(base or {})
    if command:
        return {**env, "CAFFE": command}
    try:
        argv, found = realcaffe.resolve_engine(engine)
    except (realcaffe.CaffeNotFound, ValueError) as err:
        raise TreeError(str(err)) from None
    if found is not None:
        env = found.env(env)
    return {**env, "CAFFE": shlex.join(argv)}


# ---------------------------------------------------------------------------------------------- planning

@dataclass
class SlurmOptions:
    """What `tools/submit --slurm` passes to sbatch. None leaves the cluster's default."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = "24:00:00"       # per run of a job; a longer training requeues itself
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None              # e.g. 32G
    array_limit: int | None = None      # at most this many tasks of one array at once (--array=...%N)
    extra: tuple[str, ...] = ()         # more sbatch options, one per item, e.g. "--constraint=a100"
    engine: str = "auto"                # caffe | torch | auto
    caffe: str | None = None            # an explicit trainer command (overrides engine)
    signal: str = "USR1"                # sent to the job script `signal_lead` seconds before the time limit
    signal_lead: int = 300
    job_prefix: str = "ct"              # job names: <prefix>-one, <prefix>-after-<base net>, <prefix>-whenever

    SIGNALS = ("USR1", "USR2", "TERM", "HUP")

    def sbatch_lines(self) -> list[str]:
        lines = []
        for flag, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                            ("time", self.time), ("gpus-per-task", self.gpus_per_task),
                            ("cpus-per-task", self.cpus_per_task), ("mem", self.mem)):
            if value not in (None, ""):
                lines.append(f"--{flag}={value}")
        return lines + list(self.extra)


@dataclass
class SlurmJob:
    """One sbatch call: a job array training `nets`, after `after` = (job key, task index) when set."""
    key: str                     # shell variable name that holds its job id in the dry-run script
    name: str                    # Slurm job name
    nets: list[TreeNet]
    after: list[tuple[str, int]] = field(default_factory=list)   # (key of another job in the plan, its task)
    after_ids: list[str] = field(default_factory=list)           # "<jobid>_<task>" of jobs submitted earlier
    script: str = ""
    script_path: Path | None = None

    def sbatch_argv(self, ids: dict[str, str]) -> list[str]:
        deps = [f"{ids[key]}_{task}" for key, task in self.after] + self.after_ids
        argv = ["sbatch", "--parsable"]
        if deps:
            argv += [f"--dependency=afterok:{':'.join(deps)}", "--kill-on-invalid-dep=yes"]
        return argv + [str(self.script_path)]


@dataclass
class SlurmPlan:
    root: Path
    jobs: list[SlurmJob]
    skipped: dict[str, str]      # net -> why it is not submitted (already trained, already queued)


def _render(template: str, **context) -> str:
    """A template of templates/slurm/ rendered in netgen's environment (its `sh` filter quotes a shell word); a
    value that no script can carry (a line break) is a TreeError naming it."""
    try:
        return netgen._render(netgen._environment(resources.templates_dir() / "slurm"), template, **context)
    except netgen.NetgenError as err:
        raise TreeError(str(err)) from None


# search paths a job script puts real Caffe's before the node's own (CUDA's libraries from a module, ...)
SEARCH_PATHS = ("LD_LIBRARY_PATH", "PYTHONPATH")


def render_job_script(job: SlurmJob, root: Path, options: SlurmOptions, caffe: str, env: dict) -> str:
    array = f"0-{len(job.nets) - 1}" + (f"%{options.array_limit}" if options.array_limit else "")
    # Slurm expands %j, %x, ... anywhere in an output path: a % of the folder's own is doubled
    output = str(root / SLURM_DIR).replace("%", "%%") + "/%x_%A_%a.out"
    for word in [f"--output={output}", *options.sbatch_lines()]:
        if "\\" in word:
            raise TreeError(f"#SBATCH {word}: sbatch reads a backslash on an #SBATCH line as an escape and Slurm "
                            f"drops it from an output path; use a folder and options without one")
    return _render("job.sh.j2", job_name=job.name, root=str(root), output=output, array=array,
                   sbatch_lines=options.sbatch_lines(), signal=options.signal, signal_lead=options.signal_lead,
                   nets=[(n.name, os.path.relpath(n.dir, root), n.final) for n in job.nets], caffe=caffe,
                   exports=[(k, v, k in SEARCH_PATHS) for k, v in sorted(env.items())],
                   engine="given command" if options.caffe else options.engine)


def plan(root: str | os.PathLike, options: SlurmOptions | None = None, nets: list[str] | None = None,
         queued: dict[str, str] | None = None) -> SlurmPlan:
    """The job arrays that train every unfinished net of the tree (or those matching `nets`, with the base
    nets they need).

    queued: net -> "<jobid>_<task>" of nets already in the queue (default: from squeue and jobs.json); those
    are not submitted again, and their dependents wait for that task.
    """
    options = options or SlurmOptions()
    if options.signal not in SlurmOptions.SIGNALS:
        raise TreeError(f"--signal {options.signal}: use one of {', '.join(SlurmOptions.SIGNALS)}")
    if options.signal_lead < 0 or (options.array_limit is not None and options.array_limit < 1):
        raise TreeError("--signal-lead must be >= 0 and --array-limit >= 1")
    if not SAFE_NAME.match(options.job_prefix):
        raise TreeError(f"--job-prefix {options.job_prefix!r}: a job name is part of the job scripts' and Slurm's "
                        f"file names; use letters, digits and _ . + -")
    root = Path(root).resolve()
    tree = read_tree(root)
    by_name = {n.name: n for n in tree}
    chosen = with_base_nets(tree, read_tree(root, nets) if nets else tree)
    check_settings(root, tree, chosen)
    queued = queued_tasks(root) if queued is None else queued
    skipped: dict[str, str] = {}
    todo: list[TreeNet] = []
    for net in tree:
        if net.name not in chosen:
            continue
        if net.finished:
            skipped[net.name] = "already trained"
        elif net.name in queued:
            skipped[net.name] = f"already queued as job {queued[net.name]}"
        else:
            todo.append(net)
    todo_names = {n.name for n in todo}

    # group: (block, base net) -> nets; a group's array waits for its base net's task
    groups: dict[tuple[str, str | None], list[TreeNet]] = {}
    for net in todo:
        base = net.depends_on
        if base and by_name[base].finished:
            base = None                       # its base net is trained: nothing to wait for
        groups.setdefault((net.block if base is None else "after", base), []).append(net)

    jobs: list[SlurmJob] = []
    where: dict[str, tuple[str, int]] = {}    # net -> (job key, task index)
    rank = {b: i for i, b in enumerate(BLOCK_ORDER + ("after",))}
    ordered_groups = sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, rank.get(kv[0][0], 9)))
    # groups that wait on a base net must come after the group holding that base net
    pending = list(ordered_groups)
    while pending:
        progressed = False
        for item in list(pending):
            (block, base), members = item
            if base and base in todo_names and base not in where:
                continue
            label = block if base is None else f"after-{base}"
            key = "JOB_" + re.sub(r"[^A-Za-z0-9_]", "_", label)
            job = SlurmJob(key=key, name=f"{options.job_prefix}-{label}", nets=members)
            if base:
                if base in where:
                    job.after.append(where[base])
                else:
                    job.after_ids.append(queued[base])
            for i, net in enumerate(members):
                where[net.name] = (key, i)
            jobs.append(job)
            pending.remove(item)
            progressed = True
        if not progressed:
            raise TreeError("dependencies between the job arrays form a cycle: "
                            + ", ".join(f"{b} waits for {base}" for (b, base), _ in pending))

    env = trainer_env(options.engine, options.caffe)
    caffe = env.pop("CAFFE")
    for job in jobs:
        job.script_path = root / SLURM_DIR / f"{job.name}.sh"
        job.script = render_job_script(job, root, options, caffe, env)
    return SlurmPlan(root, jobs, skipped)


# ---------------------------------------------------------------------------------------------- submitting

def _slurm_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise TreeError(f"{name} not found: run tools/submit --slurm on a Slurm login node "
                        f"(or start a local cluster: tools/slurm_localhost start)")
    return found


def dry_run_text(p: SlurmPlan) -> str:
    """The plan as a shell script: every job script, then the sbatch calls (job ids in shell variables)."""
    out = [f"# tools/submit --slurm --dry-run {p.root}: {sum(len(j.nets) for j in p.jobs)} nets in "
           f"{len(p.jobs)} job arrays"]
    for net, why in p.skipped.items():
        out.append(f"#   {net}: not submitted ({why})")
    for job in p.jobs:
        out += ["", f"# ---- {job.script_path} ----", job.script.rstrip("\n")]
    out += ["", "# ---- the sbatch calls (in this order) ----"]
    ids = {job.key: "${" + job.key + "}" for job in p.jobs}
    for job in p.jobs:
        *argv, script = job.sbatch_argv(ids)      # the job ids are shell variables here: left unquoted
        out.append(f"{job.key}=$({' '.join(argv)} {netgen.shell_word(script)})")
    return "\n".join(out) + "\n"


def submit(p: SlurmPlan, dry_run: bool = False, echo=print) -> dict[str, str]:
    """Write the job scripts to <root>/slurm/ and submit them in order; returns net -> "<jobid>_<task>".
    With dry_run, print the scripts and the sbatch calls instead, and write nothing."""
    if dry_run:
        echo(dry_run_text(p))
        return {}
    if not p.jobs:
        echo("nothing to submit: " + ("; ".join(f"{n} {w}" for n, w in p.skipped.items()) or "no nets"))
        return {}
    sbatch = _slurm_tool("sbatch")
    slurm_dir = p.root / SLURM_DIR
    slurm_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    tasks: dict[str, str] = {}
    for job in p.jobs:
        job.script_path.write_text(job.script)
        job.script_path.chmod(file_mode(0o755))
        argv = job.sbatch_argv(ids)
        argv[0] = sbatch
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            done = ", ".join(f"{j.name}={ids[j.key]}" for j in p.jobs if j.key in ids) or "none"
            raise TreeError(f"sbatch failed for {job.script_path} (exit {proc.returncode}): "
                            f"{proc.stderr.strip()}\nsubmitted before it: {done}; fix the option and submit "
                            f"again (queued nets are not submitted twice)")
        job_id = proc.stdout.strip().split(";")[0]
        ids[job.key] = job_id
        record = {"job_id": job_id, "name": job.name, "script": str(job.script_path),
                  "nets": [n.name for n in job.nets], "dependency": argv[2] if len(argv) > 3 else None,
                  "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _append_record(slurm_dir / "jobs.json", record)
        for i, net in enumerate(job.nets):
            tasks[net.name] = f"{job_id}_{i}"
        deps = f" after {argv[2].split(':', 1)[1]}" if len(argv) > 3 else ""
        echo(f"submitted {job.name}: job {job_id}, {len(job.nets)} nets{deps}")
    return tasks


def _append_record(path: Path, record: dict) -> None:
    records = json.loads(path.read_text()) if path.is_file() else []
    records.append(record)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)


def _records(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """net -> ("<jobid>_<task>", job script) of its latest submission (from <root>/slurm/jobs.json)."""
    path = Path(root) / SLURM_DIR / "jobs.json"
    tasks: dict[str, tuple[str, str]] = {}
    if path.is_file():
        try:
            records = json.loads(path.read_text())
            for record in records:
                for i, net in enumerate(record["nets"]):
                    tasks[net] = (f"{record['job_id']}_{i}", record.get("script", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TreeError(f"{path}: not the job list that tools/submit writes ({err!r}); delete it (the jobs keep "
                            f"running) and use squeue") from None
    return tasks


def job_records(root: str | os.PathLike) -> dict[str, str]:
    """net -> "<jobid>_<task>" of its latest submission (from <root>/slurm/jobs.json)."""
    return {net: task for net, (task, _) in _records(root).items()}


ACTIVE = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "SUSPENDED", "RESV_DEL_HOLD")


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]] | None:
    """"<jobid>_<task>" -> (state, reason, job script) of array tasks Slurm still knows: squeue (every state,
    for as long as slurmctld keeps finished jobs), then sacct for the rest where the cluster has accounting
    (script ""). None when squeue is not available (not on a Slurm machine)."""
    squeue = shutil.which("squeue")
    if not squeue:
        return None
    ids = ",".join(sorted(set(job_ids)))
    if not ids:
        return {}
    states: dict[str, tuple[str, str, str]] = {}
    proc = subprocess.run([squeue, "-h", "-r", "-t", "all", "-j", ids, "-o", "%F|%K|%T|%r|%o"],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:   # (ids that left the queue)
        return None
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            states[f"{parts[0]}_{parts[1]}"] = (parts[2], parts[3], parts[4])
    sacct = shutil.which("sacct")
    if sacct:
        proc = subprocess.run([sacct, "-n", "-P", "-X", "-j", ids, "-o", "JobID,State"], capture_output=True,
                              text=True)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            job, _, state = line.partition("|")
            if "_" in job and "[" not in job and job not in states and state:
                states[job] = (state.split()[0], "", "")
    return states


def task_states(root: str | os.PathLike) -> dict[str, tuple[str, str, str]]:
    """net -> (task "<jobid>_<task>", Slurm state, reason) for the nets submitted from this tree that Slurm
    still knows; a job id now used by another job (a cluster that was reset) is not taken for ours."""
    records = _records(root)
    states = (slurm_states([task.split("_")[0] for task, _ in records.values()]) or {}) if records else {}
    out = {}
    for net, (task, script) in records.items():
        if task in states:
            state, reason, command = states[task]
            if not command or not script or command == script:
                out[net] = (task, state, reason)
    return out


def queued_tasks(root: str | os.PathLike) -> dict[str, str]:
    """net -> "<jobid>_<task>" of the nets of this tree that are pending or running in Slurm now."""
    return {net: task for net, (task, state, _) in task_states(root).items() if state in ACTIVE + WAITING}


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


def _snapshot_iteration(net_dir: Path) -> int | None:
    iters = [int(m.group(1)) for p in net_dir.glob("*_iter_*.solverstate")
             if (m := re.search(r"_iter_(\d+)\.solverstate$", p.name))]
    return max(iters) if iters else None


def lock_held(path: Path) -> bool:
    """Whether another process holds an flock on `path` (the local runner holds one per net it trains)."""
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def lock_holders(path: Path) -> list[int]:
    """The processes that have `path` open (a held lock's holders: the net script, train.sh, the trainer), from
    /proc; those this user may not look at are left out."""
    target, pids = str(Path(path).resolve()), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd.path) == target for fd in os.scandir(f"/proc/{entry.name}/fd")):
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def tree_status(root: str | os.PathLike, nets: list[str] | None = None, use_slurm: bool = True) -> list[NetStatus]:
    """Every net of the tree, from its directory (final snapshot, newest log) and Slurm (squeue, and sacct
    where the cluster has accounting) for the nets submitted from this tree."""
    root = Path(root).resolve()
    every = read_tree(root)
    tree = read_tree(root, nets) if nets else every
    changed = changed_nets(every)
    records = job_records(root) if use_slurm else {}
    states = task_states(root) if use_slurm else {}
    result = []
    for net in tree:
        logs = net_logs(net.dir)
        scan = scan_log(logs[-1]) if logs else {"iteration": None, "accuracy": None, "error": None}
        iteration = scan["iteration"] if scan["iteration"] is not None else _snapshot_iteration(net.dir)
        status = NetStatus(net.name, net.block, net.depends_on, "not started", iteration, net.max_iter,
                           log=str(logs[-1]) if logs else None)
        task = records.get(net.name)
        _, state, reason = states.get(net.name, ("", "", ""))
        # the final snapshot comes before Caffe's final test: a net is finished once its trainer has exited too
        locally = lock_held(root / "local" / "locks" / f"{net.name}.lock")
        if net.name in changed and state not in ACTIVE + WAITING and not locally:
            status.state = "changed"        # never "finished": its snapshots mix old and new settings
            status.detail = f"trained with other settings: {changed[net.name]}"
        elif net.finished and state not in ACTIVE and not locally:
            status.state, status.iteration = "finished", net.max_iter
            status.accuracy = _final_accuracy(net.dir, scan["accuracy"])
        elif state in ACTIVE:
            status.state, status.detail = "running", f"job {task}"
        elif state in WAITING:
            why = "" if reason in ("None", "") else f", {reason}"
            status.state, status.detail = "pending", f"job {task} {state.lower()}{why}"
        elif locally:
            status.state, status.detail = "running", "local runner"
        elif state == "CANCELLED" and not logs:
            why = "" if reason in ("None", "") else f" ({reason})"
            status.detail = f"job {task} cancelled before it started{why}"
        elif scan["error"] or (state and state != "COMPLETED"):
            status.state = "failed"
            slurm_part = f"job {task} {state.lower()}" if state else ""
            status.detail = "; ".join(x for x in (slurm_part, scan["error"] or _slurm_out_reason(root, task)) if x)
        elif logs or iteration is not None:
            status.state = "stopped"
            status.detail = (f"job {task} ended before the final snapshot; " if task else "") + \
                "train.sh resumes from the newest snapshot"
        result.append(status)
    return result


def _final_accuracy(net_dir: Path, fallback: float | None) -> float | None:
    """The last test accuracy of a net's stitched logs (convnet_transfer.results.logs), else the quick scan's."""
    try:
        import warnings
        from convnet_transfer.results import logs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            test = logs.parse_net_dir(net_dir, jobs=1).test
        column = logs.accuracy_column(test)
        if column:
            _, value = test.last(column)
            if value == value:      # not NaN
                return value
    except Exception:  # noqa: BLE001 - the status report must not fail on a log the parser dislikes
        pass
    return fallback


def _slurm_out_reason(root: Path, task: str | None) -> str:
    """The last line of the Slurm output file of a task (for a job that died before writing a Caffe log)."""
    if not task:
        return ""
    job, _, index = task.partition("_")
    for path in (root / SLURM_DIR).glob(f"*_{job}_{index}.out"):
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
        if lines:
            return lines[-1]
    return ""


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
