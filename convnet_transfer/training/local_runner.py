"""The experiment on one machine: GNU make runs the nets in dependency order on N workers (CPU or GPU slots).

    run_local(root, jobs=2, nets=None, env=None, gpus=None) -> LocalResult

writes <root>/local/Makefile, in which each net's target is its final snapshot and a transfer net's
prerequisite is its base net's final snapshot, and <root>/local/run_net.sh, which trains one net: it takes the
net's lock (local/locks/<net>.lock, so two runners never train one net at once), waits for a free GPU slot
when GPUs are given (flock on local/locks/gpu-slot<i>.lock; CAFFE_GPU=<id> tells train.sh), and runs train.sh.
Then it runs `make -j N -k` (a failed net stops only the nets that depend on it) and blocks until make ends.
Ctrl-C (or SIGTERM or SIGHUP to this process) sends one SIGINT to make's process group: every trainer snapshots
and stops (real Caffe and caffe_torch both do), make waits for them. make runs under a supervisor
(convnet_transfer.processes) that gives the group the same SIGINT when this process dies without doing so
(SIGKILL), then SIGKILL after STOP_GRACE seconds: nothing trains on unseen. Running it again resumes: make
skips trained nets (their final snapshot exists) and train.sh resumes the others from their newest
.solverstate; a run that finds nets of the tree still being trained (their lock held) stops before starting
anything, naming them and the processes that hold them.
The Makefile is plain: `make -C <root> -f local/Makefile -j 4 -k` runs the same without Python.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from convnet_transfer.formats.protoio import file_mode
from convnet_transfer.nets.tree import (NetStatus, TreeError, TreeNet, check_settings, format_status, read_tree,
                                        with_base_nets)
from convnet_transfer import processes
from .runners import LOCAL_DIR, lock_held, lock_holders, locks_dir, net_lock, render_script, trainer_env
from .slurm import tree_status

__all__ = ["run_local", "LocalResult", "write_makefile", "check_not_training", "gpu_slots", "check_gpus",
           "wait_for", "LOCAL_DIR", "STOP_GRACE"]

STOP_GRACE = 60      # seconds the trainers have to snapshot and stop after this runner died, before SIGKILL


@dataclass
class LocalResult:
    returncode: int                   # make's exit status (0: every selected net trained)
    interrupted: signal.Signals | None  # the signal that stopped the run (SIGINT, SIGTERM, SIGHUP)
    nets: dict[str, NetStatus]        # every selected net: finished / failed / stopped / not started

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(s.state == "finished" for s in self.nets.values())

    def describe(self) -> str:
        return format_status(list(self.nets.values()))


def write_makefile(root: str | os.PathLike, nets: list[str] | None = None, gpus: list[str] | None = None) -> Path:
    """Write <root>/local/Makefile and run_net.sh for the selected nets (and the base nets they need)."""
    root = Path(root).resolve()
    by_name = {n.name: n for n in read_tree(root)}
    targets = _selected_with_base_nets(root, nets)       # a transfer net brings its base net along
    rules = [(_make_target(n, root), _make_target(by_name[n.depends_on], root) if n.depends_on else "", n.name)
             for n in targets]
    makefile = render_script("local.mk.j2", root=str(root), rules=rules, all_targets=[r[0] for r in rules])
    run_net = render_script("run_net.sh.j2", root=str(root), gpus=list(gpus or []))
    local = root / LOCAL_DIR
    locks_dir(root).mkdir(parents=True, exist_ok=True)
    (local / "Makefile").write_text(makefile)
    script = local / "run_net.sh"
    script.write_text(run_net)
    script.chmod(file_mode(0o755))            # 0755 less the umask, as gen_nets' train.sh
    return local / "Makefile"


MAKE_SPECIAL = ":;#=$|%*?[]()\\"   # what GNU make reads as more than a letter in a rule's target or prerequisite


def _make_target(net: TreeNet, root: Path) -> str:
    """A net's final snapshot as a target of local/Makefile: its path from the tree root, which make must read as
    one file name; a blank, one of MAKE_SPECIAL or a leading ~ cannot be written there (TreeError naming it)."""
    path = net.final_path()
    target = os.path.relpath(path, root)
    bad = next((c for c in target if c.isspace() or c in MAKE_SPECIAL), None)
    if bad is None and target.startswith("~"):
        bad = "~"
    if bad is not None:
        raise TreeError(f"{path}: GNU make cannot take {bad!r} in a file name, and this snapshot of net {net.name} is "
                        f"a target of local/Makefile; rename its directory (nets.json) or snapshot_prefix without it")
    return target


def _selected_with_base_nets(root: Path, nets: list[str] | None) -> list[TreeNet]:
    """The nets of the tree matching `nets` (all when None) and the base nets they need, in the tree's order."""
    tree = read_tree(root)
    wanted = with_base_nets(root, tree, nets)
    return [n for n in tree if n.name in wanted]


def check_not_training(root: str | os.PathLike, nets: list[str] | None = None) -> None:
    """Raise TreeError when some of the nets (and their base nets) are still being trained by another run of
    this tree (local/locks/<net>.lock held: an earlier runner's trainers stopping, or a runner still going)."""
    root = Path(root).resolve()
    if not locks_dir(root).is_dir():      # never run here
        return
    locks = {n.name: net_lock(root, n.name) for n in _selected_with_base_nets(root, nets)}
    busy = [name for name, lock in locks.items() if lock_held(lock)]
    if not busy:
        return
    pids = sorted({pid for name in busy for pid in lock_holders(locks[name])})
    groups = sorted({_group_of(pid) for pid in pids} - {None})
    held_by = f" (pids {', '.join(map(str, pids))})" if pids else ""
    stop = f" (`kill -INT -- {' '.join(f'-{g}' for g in groups)}` stops it at a snapshot)" if groups else ""
    raise TreeError(f"{len(busy)} nets of {root} are still being trained by another run{held_by}: "
                    f"{', '.join(busy)}. Wait for it to end{stop}, then run again")


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def gpu_slots(gpus: list[str] | str | None) -> list[str]:
    """The GPU slots of `gpus` ("0,1" or ["0", "1"]; an id listed twice is two slots), blanks left out."""
    if isinstance(gpus, str):
        gpus = gpus.split(",")
    return [g.strip() for g in gpus or [] if g.strip()]


def check_gpus(gpus: list[str] | str | None, caffe: str, env: dict | None = None) -> None:
    """Raise TreeError, before the first net, when the trainer `caffe` (a CAFFE value, run with `env`) cannot
    train on the GPU ids `gpus`. Our engine: PyTorch here lacks one of them (`caffe_torch -gpu N` without CUDA
    warns and trains on the CPU, as a single run may; for a tree of nets asked to run on GPUs that is a mistake: a
    CPU run of the GPU settings takes days). Real Caffe: `caffe device_query` fails on one of them (a CPU-only
    build, no usable GPU), which would otherwise abort every net at its start."""
    gpus = gpu_slots(gpus)
    if not gpus:
        return
    if caffe != trainer_env("torch")["CAFFE"]:
        from .realcaffe import query_devices
        problem = query_devices(shlex.split(caffe), gpus, env)
        if problem:
            raise TreeError(f"GPU {','.join(gpus)} asked for, but the real Caffe that trains ({caffe}) cannot use "
                            f"them: {problem}. Build Caffe for CUDA (tools/install_caffe --cuda), train with "
                            f"--engine torch, or leave out the GPU ids to train on the CPU.")
        return
    import torch
    count = torch.cuda.device_count()
    absent = [g for g in gpus if not (g.isdigit() and int(g) < count)]
    if absent:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise TreeError(f"GPU {','.join(absent)} asked for, but PyTorch here (torch {torch.__version__}, {build}) "
                        f"sees {count} CUDA device{'' if count == 1 else 's'}: our engine would train on the CPU. "
                        f"Leave out the GPU ids to train on the CPU, or run this where the GPUs are.")


def run_local(root: str | os.PathLike, jobs: int = 2, nets: list[str] | None = None, env: dict | None = None,
              gpus: list[str] | str | None = None, caffe: str | None = None, progress: bool = True,
              quiet: bool = False, stop_grace: float = STOP_GRACE) -> LocalResult:
    """Train the nets of a tree (all, or those matching the patterns `nets` plus their base nets) with
    `jobs` workers, base nets before their transfer nets; blocks until done and returns every net's status.

    gpus: GPU ids ("0,1" or ["0", "1"]) - each worker takes a free one (CAFFE_GPU); None trains as the
    solvers say (CPU or GPU 0). env: the environment of the trainers (default: this process's); its CAFFE is
    the trainer command train.sh runs. caffe: shorthand for env["CAFFE"]. With neither, real Caffe when
    realcaffe.find_caffe() finds a working build, else tools/caffe_torch (trainer_env("torch") forces ours).
    progress: a bar of nets trained; quiet: nothing from make and the net scripts on the terminal (their
    lines per net started and finished; the returned statuses still say which net failed and why).
    stop_grace: seconds the trainers have to stop after this process died (SIGKILL) before they are killed.
    Raises TreeError, before starting anything, when some of these nets are still being trained by another run.
    Returns LocalResult: returncode, interrupted (the signal), nets = {name: NetStatus} (state finished / failed
    (detail: the log line that says why) / stopped (resumable) / not started).
    """
    make = shutil.which("make")
    if make is None:
        raise TreeError("GNU make is needed for the local runner: apt-get install make")
    gpus = gpu_slots(gpus)
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    root = Path(root).resolve()
    run_env = _trainers_env(env, caffe, gpus)
    tree = read_tree(root)
    check_settings(root, tree, with_base_nets(root, tree, nets))
    check_not_training(root, nets)
    makefile = write_makefile(root, nets, gpus)
    chosen = read_tree(root, nets)
    cmd = [make, "--no-print-directory", "-C", str(root), "-f", str(makefile.relative_to(root)), f"-j{jobs}", "-k"]
    bar = _progress_bar(progress, len(chosen))

    def show_progress():
        if bar is not None:
            bar.n = sum(n.finished for n in chosen)
            bar.refresh()

    returncode, signals = _run_make(cmd, run_env, quiet, stop_grace, show_progress)
    statuses = tree_status(root, [n.name for n in chosen] if nets else None, use_slurm=False)
    if bar is not None:
        bar.n = sum(s.state == "finished" for s in statuses)
        bar.close()
    return LocalResult(returncode, signals[0] if signals else None, {s.name: s for s in statuses})


def _trainers_env(env: dict | None, caffe: str | None, gpus: list[str]) -> dict[str, str]:
    """The environment make and the trainers run in (run_local's `env` and `caffe`), without make's own flags."""
    run_env = dict(os.environ if env is None else env)
    if caffe or not run_env.get("CAFFE"):           # real Caffe when there is a working build, else caffe_torch
        run_env = trainer_env("auto", caffe, base=run_env, gpu=bool(gpus) or None)
    check_gpus(gpus, run_env["CAFFE"], run_env)
    run_env.pop("MAKEFLAGS", None)
    run_env.pop("MFLAGS", None)
    return run_env


def _run_make(cmd: list[str], env: dict, quiet: bool, stop_grace: float, tick) -> tuple[int, list[signal.Signals]]:
    """Run make (`cmd`) in its own process group under the supervisor until it ends, calling `tick` every 2 s;
    Ctrl-C, SIGTERM and SIGHUP send the group one SIGINT. Returns (make's exit status, the stop signals seen)."""
    signals: list[signal.Signals] = []
    supervisor_end, runner_end = os.pipe()     # the supervisor sees EOF when this process is gone
    try:
        proc = subprocess.Popen(processes.supervised(cmd, supervisor_end, stop_grace), env=env,
                                start_new_session=True,    # its own group: Ctrl-C reaches the trainers once
                                pass_fds=(supervisor_end,), stdout=subprocess.DEVNULL if quiet else None,
                                stderr=subprocess.DEVNULL if quiet else None)
    except BaseException:
        os.close(runner_end)
        raise
    finally:
        os.close(supervisor_end)

    def stop(signum=signal.SIGINT, frame=None):
        # the first Ctrl-C asks every trainer to snapshot and stop; a second one interrupts them at once
        signals.append(signal.Signals(signum))
        if len(signals) <= 2:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    try:
        with processes.on_stop_signals(stop):
            while True:
                try:
                    proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    tick()
                except KeyboardInterrupt as interrupt:
                    stop(processes.signal_of(interrupt))
    finally:
        os.close(runner_end)      # the supervisor stops the group if make still runs (an error here)
    return proc.returncode, signals


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="nets trained", unit="net")


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
