"""What the two runners of a generated tree share (Slurm: slurm.py; one machine: local_runner.py).

    trainer_env(engine, command, base)   the environment train.sh runs in: CAFFE, the trainer ($CAFFE is a command
                                         line: real Caffe with its libraries, or tools/caffe_torch)
    render_script(template, **context)   a runner's script from templates/slurm/ (TreeError on a value no script
                                         can carry)
    net_lock(root, net), lock_held(path), lock_holders(path)   the lock a net's trainer holds while it trains
                                                               (in locks_dir(root))
"""
from __future__ import annotations

import fcntl
import os
import shlex
from pathlib import Path

from convnet_transfer import resources
from convnet_transfer.nets import netgen
from convnet_transfer.nets.tree import TreeError

__all__ = ["trainer_env", "render_script", "locks_dir", "net_lock", "lock_held", "lock_holders", "LOCAL_DIR"]

LOCAL_DIR = "local"      # <root>/local: the local runner's Makefile, run_net.sh and locks/<net>.lock


def trainer_env(engine: str = "auto", command: str | None = None, base: dict | None = None,
                gpu: bool | None = None) -> dict[str, str]:
    """`base` (default: empty) with CAFFE set to the trainer train.sh runs: `command` when given, else real Caffe
    (engine "caffe", or "auto" when a working build is found; its CUDA build first where `gpu` is True, the nets
    being trained on GPUs, see realcaffe.find_caffe) or tools/caffe_torch (engine "torch"); for real Caffe
    also its lib/ and pycaffe put before base's LD_LIBRARY_PATH and PYTHONPATH, and GLOG_logtostderr
    (realcaffe.CaffeInstall.env). Raises TreeError when real Caffe is asked for and not found."""
    from . import realcaffe
    env = dict(base or {})
    if command:
        return {**env, "CAFFE": command}
    try:
        argv, found = realcaffe.resolve_engine(engine, gpu)
    except (realcaffe.CaffeNotFound, ValueError) as err:
        raise TreeError(str(err)) from None
    if found is not None:
        env = found.env(env)
    return {**env, "CAFFE": shlex.join(argv)}


def render_script(template: str, **context) -> str:
    """A template of templates/slurm/ rendered as gen_nets renders its own (netgen.render_template: its `sh` filter
    quotes a shell word); a value that no script can carry (a line break) is a TreeError naming it."""
    try:
        return netgen.render_template(resources.templates_dir() / "slurm", template, **context)
    except netgen.NetgenError as err:
        raise TreeError(str(err)) from None


def locks_dir(root: Path) -> Path:
    """The local runner's locks in the tree `root`: <root>/local/locks (one per net, one per GPU slot)."""
    return root / LOCAL_DIR / "locks"


def net_lock(root: Path, name: str) -> Path:
    """The lock net `name` of the tree `root` is trained under by the local runner: <root>/local/locks/<name>.lock
    (local/run_net.sh takes it)."""
    return locks_dir(root) / f"{name}.lock"


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
