"""The processes a command starts die with it; a command stopped by a signal exits 128 + the signal.

    as_worker_of(parent)        in a forked worker: leave the stop signals to the parent, die when it dies
    on_stop_signals(handler)    SIGTERM and SIGHUP call handler (unless started ignored, as nohup's SIGHUP)
    stop_on_signals()           SIGTERM and SIGHUP raise Stopped (a KeyboardInterrupt) as Ctrl-C does
    signal_of(interrupt)        the signal behind a KeyboardInterrupt: a command exits with 128 + it
    supervised(command, ...)    the argv that runs `command` (make) under this file's supervisor (below)

The supervisor: the local runner (convnet_transfer.training.local_runner) starts make through it, in a session of its
own. It is the leader of the process group that make, the net scripts and the trainers belong to, and it
reads a pipe whose other end only the runner holds. When the runner dies, even by SIGKILL, the pipe closes:
the supervisor sends the group one SIGINT, the stop Ctrl-C gives (every trainer snapshots, then stops; a rerun
resumes), and SIGKILL after `grace` seconds to whatever is still running. PR_SET_PDEATHSIG alone would not do:
it is per process and cleared on fork, so it never reaches make's children. This file is run as a script by
path (python -I -S processes.py ...), so it imports nothing but the standard library.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(interrupt: KeyboardInterrupt) -> signal.Signals:
    """SIGTERM or SIGHUP for a Stopped, SIGINT for Ctrl-C's KeyboardInterrupt."""
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT))


@contextlib.contextmanager
def on_stop_signals(handler):
    """Within, in the main thread: SIGTERM and SIGHUP call handler(signum, frame). A signal that is ignored
    stays ignored (`nohup cmd` keeps running when its terminal closes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals():
    """Within: SIGTERM and SIGHUP raise Stopped, so `finally` blocks and the caller's KeyboardInterrupt handling
    run for `kill` and a closed terminal as they do for Ctrl-C."""
    def stop(signum, frame):
        raise Stopped(signum)

    return on_stop_signals(stop)


def as_worker_of(parent: int) -> None:
    """In a worker process forked by `parent`: ignore the stop signals (the parent handles them, then stops its
    workers) and die by SIGKILL when the parent dies (PR_SET_PDEATHSIG; Linux), even when it was SIGKILLed."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:       # the parent died before prctl: nobody will send the signal
        os.kill(os.getpid(), signal.SIGKILL)


def supervised(command: list[str], runner_end: int, grace: float) -> list[str]:
    """The argv that runs `command` under the supervisor; `runner_end`: the read end of a pipe whose write end
    only the runner holds (pass it with pass_fds). Start it with start_new_session=True."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(runner_end), str(grace), "--", *command]


def _supervise(argv: list[str]) -> int:
    runner_end, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    # SIGINT to the group is for make and the trainers; a handler (not SIG_IGN) lets them inherit the default
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    orphaned = threading.Event()

    def stop_group_when_the_runner_is_gone():
        while os.read(runner_end, 4096):
            pass
        orphaned.set()
        os.killpg(0, signal.SIGINT)              # every trainer snapshots and stops, as after Ctrl-C
        time.sleep(grace)
        os.killpg(0, signal.SIGKILL)             # whatever did not stop in time (this process too)

    child = subprocess.Popen(command)
    threading.Thread(target=stop_group_when_the_runner_is_gone, daemon=True).start()
    status = child.wait()
    if orphaned.is_set():                        # make is done: nothing of the group may outlive the runner
        os.killpg(0, signal.SIGKILL)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1:]))
