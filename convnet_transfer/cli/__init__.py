"""The command line: one click command per pipeline stage, each in its own module here.

`tools/<name>` runs `convnet_transfer.cli.<name>:main`; `convnet-transfer <name>` does the same
once the package is installed. The registry below is the one list of commands. An OSError (a full or read-only
disk, a file where a folder should be) or LMDB error that escapes a command ends it with one line,
`<command>: <path>: <cause>; <what to do>` (os_error_line), and exit status 1.
"""
import errno
import functools
import importlib
import os
import sys
from pathlib import Path

import click

from convnet_transfer import processes

COMMANDS = {
    # name          module (under convnet_transfer.cli)   what it does
    "make_splits": ("make_splits", "ILSVRC-style lists -> split lists and md5 manifest"),
    "make_dbs": ("make_dbs", "split lists -> Datum LMDB/LevelDB and mean .binaryproto"),
    "gen_nets": ("gen_nets", "render every net's solver, prototxts and train.sh into generated/"),
    "caffe_torch": ("caffe_torch", "`caffe` on PyTorch: train / test / time"),
    "install_caffe": ("install_caffe", "build real BVLC Caffe (CPU) with pycaffe into a cache"),
    "caffe_check": ("caffe_check", "which Caffe the toolkit finds, and whether pycaffe imports"),
    "parse_log": ("parse_log", "Caffe logs -> train/test CSV tables and a results summary"),
    "plot_results": ("plot_results", "results tree -> the paper's figures and tables"),
    "run_experiment": ("run_experiment", "the whole experiment on an embedded dataset"),
    "submit": ("submit", "the experiment as Slurm job arrays, or on a local worker pool"),
}


def interruptible(then: str):
    """A command's callback stopped by Ctrl-C, SIGTERM or SIGHUP (kill, a closed terminal) cleans up as
    for Ctrl-C (its `finally` blocks run, its child processes stop), prints "stopped by SIG...; <then>" and exits
    with 128 + the signal (130, 143, 129), not with click's "Aborted!" and 1."""
    def wrap(callback):
        @functools.wraps(callback)
        def run(*args, **kwargs):
            try:
                with processes.stop_on_signals():
                    return callback(*args, **kwargs)
            except KeyboardInterrupt as interrupt:
                signum = processes.signal_of(interrupt)
                click.echo(f"\nstopped by {signum.name}; {then}", err=True)
                sys.exit(128 + signum)
        return run
    return wrap


def load(name: str) -> click.Command:
    module, _ = COMMANDS[name]
    command = importlib.import_module(f"{__name__}.{module}").main
    if not getattr(command.callback, "one_line_errors", False):
        command.callback = _one_line_errors(name, command.callback)
    return command


# what to do, by the cause (errno) of an OSError
_ADVICE = {
    errno.ENOSPC: "free some space (or choose another output folder) and run the same command again: what was "
                  "finished is kept",
    errno.EDQUOT: "free some space within your quota and run the same command again: what was finished is kept",
    errno.EROFS: "choose an output folder on a writable file system, or remount it read-write, and run again",
    errno.EACCES: "choose an output folder you may write to, or change its permissions, and run again",
    errno.EPERM: "choose an output folder you may write to, or change its permissions, and run again",
    errno.EEXIST: "a file is in the way where a folder is needed: move it away or choose another output, "
                  "and run again",
    errno.ENOTDIR: "a file is in the way where a folder is needed: move it away or choose another output, "
                   "and run again",
    errno.EISDIR: "a folder is in the way where a file is needed: move it away or choose another output, "
                  "and run again",
    errno.ENOENT: "check the path (and that its folder exists) and run again",
}


def os_error_line(err: OSError) -> str:
    """`<path>: <cause>; <what to do>` for an OSError (the path, or both of a rename, when it names them;
    for a file in the way of a folder, that file)."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None) or "(no file named)"
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and isinstance(err.filename, (str, bytes, os.PathLike)):
        path = Path(os.fsdecode(err.filename))
        where = str(next((p for p in (path, *path.parents) if p.is_file()), path))
    cause = err.strerror or str(err)
    return f"{where}: {cause}; {_ADVICE.get(err.errno, 'fix it and run again')}"


def _one_line_errors(name: str, callback):
    """The command's callback, ending with one line (no traceback) on an OSError or LMDB error."""
    @functools.wraps(callback)
    def run(*args, **kwargs):
        import lmdb
        try:
            return callback(*args, **kwargs)
        except OSError as err:
            if err.errno == errno.EPIPE:   # click handles a closed pipe (| head) itself
                raise
            line = os_error_line(err)
        except lmdb.Error as err:
            line = f"LMDB: {err}; check the disk (space, permissions) and run again"
        click.echo(f"{name}: {line}", err=True)
        sys.exit(1)
    run.one_line_errors = True
    return run


class _Group(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        name = name.replace("-", "_")
        return load(name) if name in COMMANDS else None


@click.group(cls=_Group, help="convnet_transfer: the stages of the transfer experiment. "
             + " ".join(f"{n}: {d}." for n, (_, d) in COMMANDS.items()))
def main():
    pass
