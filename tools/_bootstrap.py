"""Shared start of every script in tools/: find the library, in the project's .venv when there is one.

Each tool is a thin executable: it parses nothing itself and calls one click command of the library.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")

# Run under the project's virtual environment (made by tools/bootstrap) when called with another Python.
if (os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv"))
        and not os.environ.get("CONVNET_TRANSFER_NO_VENV")):
    os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def run(name: str) -> None:
    from convnet_transfer.cli import load
    load(name)(prog_name=os.path.basename(sys.argv[0]))
