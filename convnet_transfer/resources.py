"""Where the files the code needs at run time live: in a checkout or in an installed package."""
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
REFERENCE_ENV = "CONVNET_TRANSFER_REFERENCE"


def data_dir(name: str) -> Path:
    """A top-level data folder of the project (`templates`, `ilsvrc12`).

    Installed with `pip install .`, it sits inside the package; in a checkout, beside it.
    """
    for candidate in (PACKAGE_DIR / name, REPO_ROOT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the project's {name}/ folder is missing (looked in {PACKAGE_DIR} and {REPO_ROOT}); "
                            f"reinstall with `pip install .`")


def templates_dir() -> Path:
    return data_dir("templates")


def ilsvrc12_dir() -> Path:
    return data_dir("ilsvrc12")


def reference_dir() -> Path | None:
    """The 2014 release's data (`../shared/reference/convnet_transfer`), when $CONVNET_TRANSFER_REFERENCE names it."""
    value = os.environ.get(REFERENCE_ENV)
    if value and Path(value).is_dir():
        return Path(value)
    return None
