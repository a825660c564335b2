"""Issue 18, classes 4 and 6: I/O errors and file modes, on real file systems.

A full disk is a small tmpfs, a read-only output folder a tmpfs remounted read-only (root ignores chmod), an
output path in the way a regular file. Every case runs the real command and checks: a non-zero exit, one line
naming the path and the cause, no traceback, and that what was written before is intact (or resumes to the same
result once there is room). The file-mode cases run the commands under umask 022 and 027 and read the modes of
what they wrote: new files get 0666 (scripts 0777, gen_nets' files 0644/0755) less the umask, as Caffe's.
Mounting needs root (as here and in CI); elsewhere those cases skip, saying so.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from convnet_transfer.data import databases
from convnet_transfer.results import logs
from convnet_transfer.formats import protoio

from test_databases import make_images, records, write_list
from test_engine_solver import make_case
from test_plots import synthetic_rows

ROOT = Path(__file__).resolve().parent.parent
FULL, READ_ONLY = "No space left on device", "Read-only file system"


def tool(name: str, *args, cwd=None, umask: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """tools/<name> as a real process (under `umask` when given)."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def assert_one_line(proc: subprocess.CompletedProcess, *named: object) -> str:
    """A failed run: exit status not 0, no traceback, and one line of stderr naming everything in `named`."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in proc.stderr.splitlines() if all(str(n) in line for n in named)]
    assert len(lines) == 1, f"no single line naming {named}:\n{proc.stderr}"
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size) -> a fresh tmpfs of that size under tmp_path; remount(path, options); all unmounted
    at the end. Skips when this process may not mount (not root, or in a container without CAP_SYS_ADMIN)."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): the full and "
                        f"read-only disk cases need root (mount -t tmpfs, mount -o remount,ro)")
        mounted.append(path)
        return path

    def remount(path: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    mount.remount = remount
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def read_only(tmpfs, name: str = "ro", prepare=None) -> Path:
    """A tmpfs remounted read-only, after `prepare(path)` wrote into it what should be there before."""
    path = tmpfs(name, "4m")
    if prepare is not None:
        prepare(path)
    tmpfs.remount(path, "ro")
    return path


# ---------------------------------------------------------------- make_dbs: a full disk, then a read-only one

@pytest.mark.slow
def test_make_dbs_on_a_full_disk_names_the_database_and_resumes_to_the_same_records(tmp_path, tmpfs):
    images = tmp_path / "images"
    write_list(tmp_path / "files.txt", make_images(images, 120))
    args = ["--list", tmp_path / "files.txt", "--root", images, "--size", "64x64", "--workers", "0",
            "--commit-every", "8", "--no-progress"]
    reference = tool("make_dbs", *args, "--out", tmp_path / "ref", "--mean", tmp_path / "ref.binaryproto")
    assert reference.returncode == 0, reference.stderr

    disk = tmpfs("disk", "1m")   # room for about 40 of the 120 records of 12 KB
    out, mean = disk / "db", disk / "mean.binaryproto"
    full = tool("make_dbs", *args, "--out", out, "--mean", mean)
    line = assert_one_line(full, out, FULL)
    assert line.startswith("make_dbs: ") and "run the same command again" in line
    partial = disk / "db.partial"
    assert (partial / databases.PROGRESS).is_file()          # the records committed before are kept, with their state
    committed = len(databases.open_reader(partial))
    assert 0 < committed < 120
    databases.open_reader(partial).close()

    tmpfs.remount(disk, "ro")                                 # the same partial database on a read-only disk
    assert_one_line(tool("make_dbs", *args, "--out", out, "--mean", mean), partial, READ_ONLY)
    assert (partial / databases.PROGRESS).is_file()

    tmpfs.remount(disk, "rw,size=16m")                        # room again: the same command goes on
    done = tool("make_dbs", *args, "--out", out, "--mean", mean)
    assert done.returncode == 0, done.stderr
    assert databases.is_complete(out) and not partial.exists()
    assert records(out) == records(tmp_path / "ref")
    assert mean.read_bytes() == (tmp_path / "ref.binaryproto").read_bytes()


def test_make_dbs_into_a_read_only_folder(tmp_path, tmpfs):
    images = tmp_path / "images"
    write_list(tmp_path / "files.txt", make_images(images, 6))
    ro = read_only(tmpfs)
    proc = tool("make_dbs", "--list", tmp_path / "files.txt", "--root", images, "--out", ro / "db",
                "--workers", "0", "--no-progress")
    assert_one_line(proc, ro / "db", READ_ONLY)


# ---------------------------------------------------------------- every stage into a read-only output folder

def _outputs(path: Path) -> None:
    (path / "nets").mkdir()
    (path / "nets" / "nets.json").write_text("[]\n")
    (path / "data").mkdir()


def test_read_only_output_folder_is_one_line_for_every_stage(tmp_path, tmpfs):
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("".join(f"c{i % 4}/{i}.png {i % 4}\n" for i in range(40)))
    val.write_text("".join(f"c{i % 4}/v{i}.png {i % 4}\n" for i in range(8)))
    summary = tmp_path / "summary"
    logs.write_summary(synthetic_rows(), summary)
    ro = read_only(tmpfs, prepare=_outputs)
    before = (ro / "nets" / "nets.json").read_bytes()
    cases = {
        "make_splits": ("--train", train, "--val", val, "--n-classes", 4, "--reduced", 2, "--out", ro / "data"),
        "gen_nets": ("--only", "half0A", "--arch", "caffenet_small", "--data", tmp_path / "data",
                     "--out", ro / "nets", "--quiet"),
        "plot_results": ("--results", summary / "summary.json", "--out", ro / "plots", "--curves", "none"),
        "parse_log": (results_tree(tmp_path), "--out", ro / "tables"),
        "run_experiment": ("--quick", "--out", ro / "experiment", "--no-progress"),
    }
    for name, args in cases.items():
        proc = tool(name, *args)
        line = assert_one_line(proc, ro, READ_ONLY)
        assert line.startswith(f"{name}: "), (name, line)
        if name == "make_splits":   # the output folder, not the staging folder it could not make in it
            assert line.startswith(f"make_splits: {ro / 'data'}: {READ_ONLY}; "), line
    assert (ro / "nets" / "nets.json").read_bytes() == before


def test_an_output_path_that_is_a_file_names_that_file(tmp_path):
    in_the_way = tmp_path / "results"
    in_the_way.write_text("keep me\n")
    summary = tmp_path / "summary"
    logs.write_summary(synthetic_rows(), summary)
    for name, args in {"run_experiment": ("--quick", "--out", in_the_way / "run", "--no-progress"),
                       "plot_results": ("--results", summary / "summary.json", "--out", in_the_way / "plots",
                                        "--curves", "none"),
                       "gen_nets": ("--only", "half0A", "--arch", "caffenet_small", "--out", in_the_way / "nets",
                                    "--quiet")}.items():
        line = assert_one_line(tool(name, *args), f"{name}: {in_the_way}: ", "a file is in the way")
        assert "Not a directory" in line or "File exists" in line
    assert in_the_way.read_text() == "keep me\n"


# ---------------------------------------------------------------- caffe_torch: a full disk at snapshot time

@pytest.mark.slow
def test_snapshot_on_a_full_disk_keeps_the_last_good_one_and_resumes(tmp_path, tmpfs):
    case = make_case(tmp_path / "net", max_iter=2, snapshot=2)
    disk = tmpfs("snapshots", "1m")
    solver = (case / "solver.prototxt").read_text().replace('snapshot_prefix: "snap"',
                                                            f'snapshot_prefix: "{disk}/snap"')
    (case / "solver.prototxt").write_text(solver)
    first = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case)
    assert first.returncode == 0, first.stderr[-3000:]
    good = {p.name: p.read_bytes() for p in disk.iterdir()}
    assert set(good) == {"snap_iter_2.caffemodel", "snap_iter_2.solverstate", "snap_iter_2.solverstate.rng"}

    # fill the disk up to the room for one .caffemodel: the next snapshot's .solverstate does not fit
    room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    weights = -(-len(good["snap_iter_2.caffemodel"]) // 4096) * 4096
    (disk / "ballast").write_bytes(b"\0" * (room - weights - 4096))
    (case / "more.prototxt").write_text(solver.replace("max_iter: 2", "max_iter: 4"))
    resume = ["train", "-solver", "more.prototxt", "-snapshot", disk / "snap_iter_2.solverstate"]
    full = tool("caffe_torch", *resume, cwd=case)
    line = assert_one_line(full, disk / "snap_iter_4.solverstate", FULL)   # after its .caffemodel was written
    assert line.startswith("E") and "The last good snapshot is" in line and "snap_iter_2.caffemodel" in line
    assert full.returncode == 1
    assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "ballast"} == good   # nothing half-written

    (disk / "ballast").unlink()
    done = tool("caffe_torch", *resume, cwd=case)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (disk / "snap_iter_4.caffemodel").is_file() and (disk / "snap_iter_4.solverstate.rng").is_file()


# ---------------------------------------------------------------- a corrupt summary.json

def test_a_corrupt_summary_is_one_line_naming_it(tmp_path):
    logs.write_summary(synthetic_rows(), tmp_path)
    good = tmp_path / "summary.json"
    for name, text in (("truncated.json", good.read_text()[:300]), ("other.json", '{"net": "half0A"}\n'),
                       ("binary.json", "\udcff\udcfe")):
        corrupt = tmp_path / name
        corrupt.write_bytes(text.encode(errors="surrogateescape"))
        proc = tool("plot_results", "--results", corrupt, "--out", tmp_path / "plots", "--curves", "none")
        line = assert_one_line(proc, corrupt, "delete it")
        assert "tools/parse_log" in line
        assert corrupt.read_bytes() == text.encode(errors="surrogateescape")
    assert not (tmp_path / "plots").exists() or not any((tmp_path / "plots").iterdir())
    with pytest.raises(logs.SummaryError, match="truncated.json"):
        logs.read_summary(tmp_path / "truncated.json")


# ---------------------------------------------------------------- file modes follow the umask

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_written_files_follow_the_umask(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    images = tmp_path / "images"
    write_list(tmp_path / "files.txt", make_images(images, 6))
    proc = tool("make_dbs", "--list", tmp_path / "files.txt", "--root", images, "--out", tmp_path / "db",
                "--mean", tmp_path / "mean.binaryproto", "--size", "32x32", "--workers", "0", "--no-progress",
                umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert _mode(tmp_path / "db" / databases.MARKER) == file_mode
    assert _mode(tmp_path / "mean.binaryproto") == file_mode
    assert _mode(tmp_path / "db" / "data.mdb") == file_mode & ~0o111 and _mode(tmp_path / "db") == dir_mode

    case = make_case(tmp_path / "net", max_iter=2, snapshot=2)
    proc = tool("caffe_torch", "train", "-solver", "solver.prototxt", cwd=case, umask=umask)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("snap_iter_2.caffemodel", "snap_iter_2.solverstate", "snap_iter_2.solverstate.rng"):
        assert _mode(case / name) == file_mode, name

    proc = tool("gen_nets", "--only", "half0A", "--arch", "caffenet_small", "--out", tmp_path / "nets", "--quiet",
                umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert _mode(tmp_path / "nets" / "nets.json") == 0o644 & ~umask
    assert _mode(tmp_path / "nets" / "half0A" / "train.sh") == 0o755 & ~umask
    from convnet_transfer.training import local_runner
    old = os.umask(umask)
    try:
        local_runner.write_makefile(tmp_path / "nets")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "nets" / "local" / "run_net.sh") == 0o755 & ~umask

    proc = tool("parse_log", results_tree(tmp_path), "--out", tmp_path / "tables", umask=umask)
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.json", "summary.csv", "half0A.train", "half0A.test"):
        assert _mode(tmp_path / "tables" / name) == file_mode, name


def results_tree(tmp_path: Path) -> Path:
    """A results tree of one net with a current-format log holding test accuracies."""
    lines = []
    for it in range(0, 201, 20):
        stamp = f"I0301 10:{it // 20:02d}:00.000000 1 solver.cpp:239]"
        lines.append(f"{stamp} Iteration {it} (1 iter/s, 20s/20 iters), loss = {7 - it / 100:g}")
        if it % 100 == 0:
            lines.append(f"{stamp} Iteration {it}, Testing net (#0)")
            lines.append(f"{stamp}     Test net output #0: accuracy = {0.2 + it / 1e4:g}")
    net = tmp_path / "tree" / "half0A"
    net.mkdir(parents=True)
    (net / "half0A.20260301-100000.log").write_text("\n".join(lines) + "\n")
    return net.parent


def test_file_mode_is_the_umask_applied(tmp_path):
    old = os.umask(0o027)
    try:
        assert protoio.file_mode() == 0o640 and protoio.file_mode(0o755) == 0o750
        protoio.atomic_write_bytes(tmp_path / "x.binaryproto", b"x")
        assert _mode(tmp_path / "x.binaryproto") == 0o640
    finally:
        os.umask(old)
    assert protoio.file_mode() == 0o666 & ~old
