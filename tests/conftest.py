"""Shared fixtures.

- `reference`: the 2014 release's data (../shared/reference/convnet_transfer), named by
  $CONVNET_TRANSFER_REFERENCE (.ci/run sets it). Tests that need it skip, saying so, when it is absent.
- `real_caffe`: a real BVLC Caffe build (tools/install_caffe). Where $CONVNET_TRANSFER_REQUIRE_CAFFE=1
  (CI) a missing build fails the test; elsewhere the test skips with a message.
"""
import os
from pathlib import Path

import pytest

from convnet_transfer.resources import REFERENCE_ENV, reference_dir

REQUIRE_CAFFE_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip(f"2014 reference data not found: set ${REFERENCE_ENV} to ../shared/reference/convnet_transfer "
                    f"to run the comparisons against the original release")
    return path


@pytest.fixture(scope="session")
def real_caffe():
    from convnet_transfer.training import realcaffe

    found = realcaffe.find_caffe()
    if found is None or not found.ok:
        why = "no Caffe build found" if found is None else found.problem
        caffe_missing(f"real Caffe is needed for this fidelity test ({why}); build it with tools/install_caffe "
                      f"and follow the environment lines it prints")
    return found


def missing(message: str, require_env: str) -> None:
    """Fail where what a test needs is required ($`require_env`=1: CI sets it for Caffe, its CUDA build and Slurm),
    else skip saying why."""
    if os.environ.get(require_env) == "1":
        pytest.fail(message)
    pytest.skip(message)


def caffe_missing(message: str) -> None:
    """Fail where a Caffe build is required ($CONVNET_TRANSFER_REQUIRE_CAFFE=1, CI), else skip saying why."""
    missing(message, REQUIRE_CAFFE_ENV)


@pytest.fixture(scope="session")
def caffe_source_prototxts(real_caffe) -> list[Path]:
    """Every prototxt of Caffe's source tree (models/, examples/), which tools/install_caffe keeps in its prefix."""
    from convnet_transfer.training.caffe_build import SOURCE_PROTOTXTS

    folder = real_caffe.root / SOURCE_PROTOTXTS
    paths = sorted(folder.rglob("*.prototxt"))
    if not paths:
        caffe_missing(f"{folder} holds no prototxt: this Caffe build predates keeping them; rebuild with "
                      f"tools/install_caffe --force")
    return paths
