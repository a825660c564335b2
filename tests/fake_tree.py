"""A test fixture: a generated tree (nets.json + one directory per net with train.sh) whose trainer is
tests/fake_caffe.py, a fast resumable stand-in for `caffe train` (see there). train.sh is tools/gen_nets' own
(templates/train.sh.j2): exits 0 at once when the final snapshot exists, resumes from the newest .solverstate,
starts a transfer net from basenet/<final>.caffemodel, writes a new <net>.<stamp>.log per run. It runs $CAFFE:
pass FAKE_COMMAND as the trainer (run_local's caffe=, tools/submit --caffe).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from convnet_transfer.nets import netgen

FAKE_CAFFE = Path(__file__).resolve().parent / "fake_caffe.py"
FAKE_COMMAND = f"{sys.executable} {FAKE_CAFFE}"


def make_tree(root: str | os.PathLike, nets: list[dict], *, seconds_per_iter: float = 0.05, max_iter: int = 20,
              snapshot: int = 5) -> Path:
    """nets: [{"name", "kind", "block", "depends_on"?, "max_iter"?, "snapshot"?, "seconds_per_iter"?,
    "fail_at"?}]. Returns the root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    by_name = {n["name"]: n for n in nets}
    entries = []
    for spec in nets:
        name = spec["name"]
        d = root / name
        d.mkdir(exist_ok=True)
        n_iter, every = spec.get("max_iter", max_iter), spec.get("snapshot", snapshot)
        (d / "solver.prototxt").write_text(f'net: "train_val.prototxt"\nbase_lr: 0.01\nmax_iter: {n_iter}\n'
                                           f'snapshot: {every}\nsnapshot_prefix: "{name}"\n')
        (d / "fake.json").write_text(json.dumps({"seconds_per_iter": spec.get("seconds_per_iter", seconds_per_iter),
                                                 "fail_at": spec.get("fail_at")}))
        base = spec.get("depends_on")
        if base and not (d / "basenet").is_symlink():
            (d / "basenet").symlink_to(f"../{base}")
        base_spec = by_name.get(base, {})
        (d / "train.sh").write_text(netgen.render_template(
            None, "train.sh.j2", name=name, description=f"{spec.get('kind', 'base')} net of a test tree",
            arch="fake", solver_file="solver.prototxt", snapshot_prefix=name, max_iter=n_iter, base=base,
            base_prefix=base, base_max_iter=base_spec.get("max_iter", max_iter)))
        (d / "train.sh").chmod(0o755)
        entries.append({"name": name, "kind": spec.get("kind", "base"), "block": spec.get("block", "one"),
                        "depends_on": base, "dir": name, "solver": "solver.prototxt", "train_sh": "train.sh"})
    (root / "nets.json").write_text(json.dumps(entries, indent=1) + "\n")
    return root


def timeline(net_dir: str | os.PathLike) -> list[tuple[str, float, int, str]]:
    """The runs of a net: (event, unix time, iteration, extra) from its timeline.txt."""
    path = Path(net_dir) / "timeline.txt"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, stamp, iteration, *extra = line.split(" ", 3)
        rows.append((event, float(stamp), int(iteration), extra[0] if extra else ""))
    return rows


def small_experiment(seconds_per_iter: float = 0.05) -> list[dict]:
    """Two base nets, two transfer nets on each, one net that needs no base net."""
    nets = [{"name": "halfA", "kind": "base", "block": "one"}, {"name": "halfB", "kind": "base", "block": "one"}]
    for base, other in (("halfA", "B"), ("halfB", "A")):
        for n in (1, 2):
            nets.append({"name": f"transfer{base[-1]}{other}_1_{n}", "kind": "transfer", "block": "two",
                         "depends_on": base})
    nets.append({"name": "netbase", "kind": "whole", "block": "whenever"})
    for spec in nets:
        spec.setdefault("seconds_per_iter", seconds_per_iter)
    return nets


__all__ = ["make_tree", "timeline", "small_experiment", "FAKE_COMMAND"]
