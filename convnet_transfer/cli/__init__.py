"""The command line: one click command per pipeline stage, each in its own module here.

`tools/<name>` runs `convnet_transfer.cli.<name>:main`; `convnet-transfer <name>` does the same
once the package is installed. The registry below is the one list of commands.
"""
import functools
import importlib
import sys

import click

from .. import processes

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
    "slurm_localhost": ("slurm_localhost", "start/stop a one-node Slurm cluster on this machine"),
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
    return importlib.import_module(f"{__name__}.{module}").main


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
