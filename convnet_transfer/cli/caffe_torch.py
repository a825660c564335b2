"""`caffe_torch`: Caffe's `caffe` command on the PyTorch engine (convnet_transfer.training.engine).

Flags are parsed as gflags does (`-flag value`, `-flag=value`, `--flag value`); the work is in
convnet_transfer.training.engine.train.
"""
from __future__ import annotations

import os
import sys

import click

USAGE = """caffe_torch: command line brew (Caffe's `caffe` on PyTorch)
usage: caffe_torch <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  time            benchmark model execution time

  train -solver S.prototxt [-weights W.caffemodel[,W2]] [-snapshot X.solverstate] [-gpu N|all]
        reads the solver, its nets and their databases (paths relative to the current directory);
        writes <snapshot_prefix>_iter_<N>.caffemodel, .solverstate (Caffe's formats) and .solverstate.rng
        (our random state, for an exact resume); logs Caffe's glog lines to stderr.
  test  -model M.prototxt -weights W.caffemodel [-iterations 50] [-gpu N]
  time  -model M.prototxt [-iterations 50] [-phase TRAIN|TEST] [-gpu N]

flags (single or double dash, `-flag value` or `-flag=value`):
  -solver, -model, -weights, -snapshot, -gpu, -iterations (50), -phase, -level (0), -stage,
  -sigint_effect (stop|snapshot|none; default stop), -sighup_effect (default snapshot),
  -precision (fp32|tf32|bf16; default fp32 or $CAFFE_TORCH_PRECISION), -workers (data decoding processes)
  SIGTERM and SIGUSR1 snapshot, then stop.

exit codes: 0 done; 1 error (bad flags or files; the message says what); 3 the loss became NaN/infinite
(the last good snapshot is kept); 75 stopped early by a signal after writing a snapshot (resume with -snapshot).
See docs/engine.md."""

FLAGS = {"solver": "", "model": "", "weights": "", "snapshot": "", "gpu": "", "iterations": "50", "phase": "",
         "level": "0", "stage": "", "sigint_effect": "stop", "sighup_effect": "snapshot", "precision": "",
         "workers": ""}

EXIT_OK, EXIT_ERROR, EXIT_DIVERGED, EXIT_STOPPED = 0, 1, 3, 75


class UsageError(ValueError):
    pass


def parse_args(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """gflags-style parsing: returns (positional arguments, flags with defaults filled in)."""
    flags = dict(FLAGS)
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in ("help", "helpfull", "helpshort", "h", "version"):
            flags[name] = "true"
            continue
        if name not in FLAGS:
            raise UsageError(f"ERROR: unknown command line flag '{name}'")
        if not has_value:
            if i >= len(argv):
                raise UsageError(f"ERROR: flag '{arg}' is missing its argument")
            value = argv[i]
            i += 1
        flags[name] = value
    return positional, flags


def run(argv: list[str]) -> int:
    """Run one `caffe` command line (without the program name); returns the exit code."""
    try:
        positional, flags = parse_args(argv)
        check_flags(flags)
    except UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_ERROR
    if any(flags.get(h) for h in ("help", "helpfull", "helpshort", "h")):
        print(USAGE)
        return EXIT_OK
    if flags.get("version"):
        print("caffe_torch version 1.0.0 (Caffe-compatible engine of convnet_transfer)")
        return EXIT_OK
    if len(positional) != 1:
        print(USAGE, file=sys.stderr)
        return EXIT_ERROR
    return run_command(positional[0], flags)


def check_flags(flags: dict[str, str]) -> None:
    """Refuse (UsageError) the flag values gflags would refuse, and -iterations below 1."""
    for name in ("iterations", "level"):
        if not flags[name].lstrip("-").isdigit():
            raise UsageError(f"ERROR: illegal value '{flags[name]}' specified for int32 flag '{name}'")
    if int(flags["iterations"]) < 1:   # Caffe divides by it: nan scores, or nothing timed
        raise UsageError(f"ERROR: -iterations {flags['iterations']}: test and time need at least 1 batch")
    if flags["workers"] and not flags["workers"].isdigit():
        raise UsageError(f"ERROR: illegal value '{flags['workers']}' specified for flag 'workers'")


COMMANDS = ("train", "test", "time")


def run_command(command: str, flags: dict[str, str]) -> int:
    """Run `command` (train, test or time) with checked flags on the engine; returns the exit code, an error
    logged as Caffe's glog line."""
    from convnet_transfer.formats import protoio
    from convnet_transfer.cli import os_error_line
    from convnet_transfer.training.engine import glog
    from convnet_transfer.training.engine.data import DataError
    from convnet_transfer.training.engine.errors import EngineError
    from convnet_transfer.training.engine.solver import Diverged, SolverError

    if command not in COMMANDS:
        glog.error("caffe.cpp:77", "Available caffe actions:")
        for name in COMMANDS:
            glog.error("caffe.cpp:80", f"\t{name}")
        glog.error("caffe.cpp:82", f"Unknown action: {command}")
        return EXIT_ERROR
    from convnet_transfer.training.engine import train as engine
    from convnet_transfer.training.engine.layers import conv_gradients
    if conv_gradients.SUMS != "caffe":      # with Caffe's sums the setting made training 5x slower (docs/engine.md)
        engine.keep_freed_memory()
    try:
        return _engine_command(engine, command, flags)
    except Diverged as err:
        glog.error("solver.cpp:230", str(err))
        return EXIT_DIVERGED
    except (SolverError, EngineError, DataError, protoio.ProtoFileError) as err:
        glog.error(_raised_at(err), f"{type(err).__name__}: {err}")
        return EXIT_ERROR
    except OSError as err:
        glog.error(_raised_at(err), os_error_line(err))
        return EXIT_ERROR


def _engine_command(engine, command: str, flags: dict[str, str]) -> int:
    workers = int(flags["workers"]) if flags["workers"] else None
    precision = flags["precision"] or None
    if command == "train":
        outcome = engine.train(flags["solver"], weights=flags["weights"], snapshot=flags["snapshot"],
                               gpu=flags["gpu"], sigint_effect=flags["sigint_effect"],
                               sighup_effect=flags["sighup_effect"], level=int(flags["level"]),
                               stage=flags["stage"], precision=precision, workers=workers)
        return EXIT_STOPPED if outcome == "stopped" else EXIT_OK
    if command == "test":
        engine.test(flags["model"], flags["weights"], int(flags["iterations"]), gpu=flags["gpu"],
                    level=int(flags["level"]), stage=flags["stage"], precision=precision)
        return EXIT_OK
    engine.time_net(flags["model"], int(flags["iterations"]), gpu=flags["gpu"], phase=flags["phase"] or "TRAIN",
                    level=int(flags["level"]), stage=flags["stage"], precision=precision)
    return EXIT_OK


def _raised_at(err: BaseException) -> str:
    """The glog location of an error: the engine's source file and line that raised it (Caffe's would be the
    .cpp line of its failed CHECK; ours has no such line)."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []},
               add_help_option=False, help=USAGE)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def main(argv):
    """The console command; argv is handed to `run` untouched (gflags-style flags)."""
    sys.exit(run(list(sys.argv[1:]) if _called_directly() else list(argv)))


def _called_directly() -> bool:
    # click may reorder or swallow gflags-style flags (e.g. "--"); when this command is the program itself,
    # read the raw argv. Under `convnet-transfer caffe_torch ...` the group passes the arguments.
    return bool(sys.argv) and sys.argv[0].rsplit("/", 1)[-1] in ("caffe_torch", "caffe_torch.py")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
