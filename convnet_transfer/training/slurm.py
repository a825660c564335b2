"""The experiment on Slurm: job arrays with dependencies, surviving time limits, and a status report.

It trains a generated tree (convnet_transfer.nets.tree: <root>/nets.json and one directory per net with train.sh).

    plan(root, options)          the job arrays to submit (SlurmPlan): scripts from templates/slurm/
    submit(plan, dry_run=False)  writes <root>/slurm/*.sh, runs `sbatch --parsable` for each array in order,
                                 records the job ids in <root>/slurm/jobs.json; dry_run prints instead
    tree_status(root)            every net: pending / running (iteration) / finished (accuracy) /
                                 failed (the log line that says why) / stopped / not started /
                                 changed (trained with other settings than its files now hold; tree.changed_nets)

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

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from convnet_transfer.formats.protoio import file_mode
from convnet_transfer.nets import netgen
from convnet_transfer.nets.catalog import block_order
from convnet_transfer.nets.tree import (SAFE_NAME, NetStatus, TreeError, TreeNet, changed_nets, check_settings,
                                        net_logs, newest_snapshot_iteration, read_tree, scan_log, with_base_nets)
from .runners import lock_held, net_lock, render_script, trainer_env

__all__ = ["SlurmOptions", "SlurmJob", "SlurmPlan", "plan", "submit", "dry_run_text", "tree_status", "job_records",
           "queued_tasks", "task_states", "SLURM_DIR"]

SLURM_DIR = "slurm"                  # <root>/slurm: job scripts, Slurm's stdout/err files, jobs.json


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

    def check(self) -> "SlurmOptions":
        """These options, or TreeError naming the one that cannot be used."""
        if self.signal not in self.SIGNALS:
            raise TreeError(f"--signal {self.signal}: use one of {', '.join(self.SIGNALS)}")
        if self.signal_lead < 0 or (self.array_limit is not None and self.array_limit < 1):
            raise TreeError("--signal-lead must be >= 0 and --array-limit >= 1")
        if not SAFE_NAME.match(self.job_prefix):
            raise TreeError(f"--job-prefix {self.job_prefix!r}: a job name is part of the job scripts' and Slurm's "
                            f"file names; use letters, digits and _ . + -")
        return self

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
    return render_script("job.sh.j2", job_name=job.name, root=str(root), output=output, array=array,
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
    options = (options or SlurmOptions()).check()
    root = Path(root).resolve()
    tree = read_tree(root)
    chosen = with_base_nets(root, tree, nets)
    check_settings(root, tree, chosen)
    queued = queued_tasks(root) if queued is None else queued
    todo, skipped = _unfinished([net for net in tree if net.name in chosen], queued)
    jobs = _job_arrays(todo, {n.name: n for n in tree}, queued, options.job_prefix)
    env = trainer_env(options.engine, options.caffe, gpu=bool(options.gpus_per_task) or None)   # the CUDA build
    caffe = env.pop("CAFFE")
    for job in jobs:
        job.script_path = root / SLURM_DIR / f"{job.name}.sh"
        job.script = render_job_script(job, root, options, caffe, env)
    return SlurmPlan(root, jobs, skipped)


def _unfinished(nets: list[TreeNet], queued: dict[str, str]) -> tuple[list[TreeNet], dict[str, str]]:
    """(the nets to submit, net -> why the others are not: already trained, or already queued)."""
    todo: list[TreeNet] = []
    skipped: dict[str, str] = {}
    for net in nets:
        if net.finished:
            skipped[net.name] = "already trained"
        elif net.name in queued:
            skipped[net.name] = f"already queued as job {queued[net.name]}"
        else:
            todo.append(net)
    return todo, skipped


def _job_arrays(todo: list[TreeNet], by_name: dict[str, TreeNet], queued: dict[str, str],
                job_prefix: str) -> list[SlurmJob]:
    """The nets `todo` as job arrays, in the order they are submitted: one per block, and one per untrained base
    net for the nets that wait for it (its task in this plan, or in the queue)."""
    # group: (block, base net) -> nets; a group's array waits for its base net's task
    groups: dict[tuple[str, str | None], list[TreeNet]] = {}
    for net in todo:
        base = net.depends_on
        if base and by_name[base].finished:
            base = None                       # its base net is trained: nothing to wait for
        groups.setdefault((net.block if base is None else "after", base), []).append(net)
    todo_names = {n.name for n in todo}
    jobs: list[SlurmJob] = []
    where: dict[str, tuple[str, int]] = {}    # net -> (job key, task index)
    # groups that wait on a base net must come after the group holding that base net
    pending = sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, block_order(kv[0][0])))
    while pending:
        progressed = False
        for item in list(pending):
            (block, base), members = item
            if base and base in todo_names and base not in where:
                continue
            label = block if base is None else f"after-{base}"
            key = "JOB_" + re.sub(r"[^A-Za-z0-9_]", "_", label)
            job = SlurmJob(key=key, name=f"{job_prefix}-{label}", nets=members)
            if base in where:
                job.after.append(where[base])
            elif base:
                job.after_ids.append(queued[base])
            for i, net in enumerate(members):
                where[net.name] = (key, i)
            jobs.append(job)
            pending.remove(item)
            progressed = True
        if not progressed:
            raise TreeError("dependencies between the job arrays form a cycle: "
                            + ", ".join(f"{b} waits for {base}" for (b, base), _ in pending))
    return jobs


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
        iteration = scan["iteration"] if scan["iteration"] is not None else newest_snapshot_iteration(net.dir)
        status = NetStatus(net.name, net.block, net.depends_on, "not started", iteration, net.max_iter,
                           log=str(logs[-1]) if logs else None)
        task = records.get(net.name)
        _, state, reason = states.get(net.name, ("", "", ""))
        # the final snapshot comes before Caffe's final test: a net is finished once its trainer has exited too
        locally = lock_held(net_lock(root, net.name))
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
