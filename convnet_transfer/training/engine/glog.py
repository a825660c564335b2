"""Log lines in Google glog's format, as Caffe writes them to stderr.

    I1124 18:30:00.123456 12345 solver.cpp:218] Iteration 20 (1.2 iter/s, 16.6s/20 iters), loss = 6.9

Severity letter, month and day, time with microseconds, thread id (the process id: Caffe's main thread),
the C++ source file:line Caffe logs from (kept so that logs of both engines read alike), then the message.
Numbers are formatted as C++ iostreams print floats by default (`fmt`: 6 significant digits, %g).
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["fmt", "info", "warning", "error", "line", "here", "output", "net_outputs"]


def fmt(value: float) -> str:
    """A float as `std::ostream << float` prints it (precision 6, like %g): 0.01, 1e-05, 6.90776, nan, inf."""
    value = float(value)
    if value != value:
        return "nan" if str(value)[0] != "-" else "-nan"
    return "%g" % value


def output(name: str, value: float, loss_weight: float = 0.0) -> str:
    """A net output as Caffe logs it: `name = v`, and ` (* w = w*v loss)` after a loss output's."""
    extra = f" (* {fmt(loss_weight)} = {fmt(loss_weight * value)} loss)" if loss_weight else ""
    return f"{name} = {fmt(value)}{extra}"


def net_outputs(where: str, prefix: str, values: dict[str, list[float]], loss_weights: dict[str, float]) -> None:
    """Log every value of the net outputs, numbered as Caffe does: `<prefix> #k: name = v (* w = x loss)`."""
    k = 0
    for name, output_values in values.items():
        for value in output_values:
            info(where, f"{prefix} #{k}: {output(name, value, loss_weights.get(name, 0.0))}")
            k += 1


def line(severity: str, where: str, message: str, now: float | None = None) -> str:
    """One glog line (without the newline); `where` is Caffe's "file.cpp:LINE"."""
    now = time.time() if now is None else now
    t = time.localtime(now)
    micros = int((now - int(now)) * 1_000_000)
    return (f"{severity[0]}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
            f"{os.getpid():5d} {where}] {message}")


def here() -> str:
    """The caller's engine source file and line ("solver.py:280"): the location of a line Caffe has no
    counterpart of (a .cpp location there would name a line no Caffe source has)."""
    frame = sys._getframe(1)
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _write(severity: str, where: str, message: str) -> None:
    stream = sys.stderr
    for text in str(message).split("\n"):
        stream.write(line(severity, where, text) + "\n")
    stream.flush()


def info(where: str, message: str) -> None:
    _write("I", where, message)


def warning(where: str, message: str) -> None:
    _write("W", where, message)


def error(where: str, message: str) -> None:
    _write("E", where, message)
