"""Issue 18, shell quoting: every script the toolkit writes (train.sh, local/run_net.sh, local/Makefile, the Slurm
job scripts and their #SBATCH lines) carries paths and names with blanks, quotes, non-ASCII letters, $(...) and
backticks as they are, and runs; what a script line cannot carry (a line break; in a make rule, make's own
characters; a backslash on an #SBATCH line) is refused in one line naming it, before anything is written.

Every script here runs for real (bash, GNU make, and sbatch on the localhost cluster for the slurm-marked case);
the hostile names hold `$(touch PWNED)` and a backquoted `touch PWNED`, so a name run as a command leaves a file.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tree import FAKE_CAFFE, make_tree, small_experiment, timeline  # noqa: E402
from test_slurm import slurm_cluster  # noqa: E402,F401  (the localhost cluster fixture)

from convnet_transfer.nets import architectures, netgen  # noqa: E402
from convnet_transfer.training import realcaffe, slurm
from convnet_transfer.nets.catalog import Catalog, NetSpec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# a blank, both quotes, a non-ASCII letter, a command substitution and backquotes
HOSTILE = "o'brien \"ü\" $(touch PWNED) `touch PWNED`"

needs_make = pytest.mark.skipif(shutil.which("make") is None or shutil.which("flock") is None,
                                reason="GNU make and flock (util-linux) are needed for the local runner")


def tool(name: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / name), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def assert_nothing_ran(*folders: Path) -> None:
    """No PWNED file anywhere below `folders`: no name was run as a command."""
    for folder in folders:
        found = [str(p) for p in folder.rglob("PWNED*")]
        assert not found, f"a name was run as a command: {found}"


def assert_refused(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 1, one clear line naming each of `names`, no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    for name in names:
        assert name in out, (name, out)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links not followed) with its content: to show that nothing was lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def hostile_trainer(folder: Path) -> str:
    """The fake trainer copied into a folder with a hostile name: a CAFFE command whose words need quoting."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "fake caffe.py"
    shutil.copy(FAKE_CAFFE, copy)
    return shlex.join([sys.executable, str(copy)])


def with_snapshot_prefix(root: Path, name: str, prefix: str, max_iter: int = 20) -> None:
    """Give net `name` of a fake tree another snapshot prefix (its solver and train.sh, as gen_nets would)."""
    net_dir = root / name
    solver = (net_dir / "solver.prototxt").read_text()
    solver = solver.replace(f'snapshot_prefix: "{name}"', f'snapshot_prefix: "{prefix}"')
    (net_dir / "solver.prototxt").write_text(solver)
    (net_dir / "train.sh").write_text(netgen.render_template(
        None, "train.sh.j2", name=name, description="base net of a test tree", arch="fake",
        solver_file="solver.prototxt", snapshot_prefix=prefix, max_iter=max_iter, base=None, base_prefix=None,
        base_max_iter=None))


# ---------------------------------------------------------------------------------------------- train.sh

ARGS_CAFFE = """import json, sys
with open("args.json", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_train_sh_carries_hostile_net_names_prefix_and_trainer_path(tmp_path):
    """gen_nets' train.sh with a net, its base net, the snapshot prefix, the solver file and the trainer's path
    all hostile: bash runs it, the trainer gets each of them as one argument, and nothing else runs."""
    arch = architectures.get("caffenet_small").replace(name=f"arch {HOSTILE}", snapshot_prefix=f"snap {HOSTILE}",
                                                        file_stem=f"stem {HOSTILE} ")
    base, transfer = f"base {HOSTILE}", f"transfer {HOSTILE}"
    catalog = Catalog([NetSpec(base, "base", "half0A", "half0A"),
                       NetSpec(transfer, "transfer", "half0B", "half0B", base=base, n=1)])
    out = tmp_path / HOSTILE
    netgen.render_experiment(catalog, out, tmp_path / "data", arch=arch, solver={"max_iter": 20})
    trainer = out / HOSTILE / "args caffe.py"
    trainer.parent.mkdir()
    trainer.write_text(ARGS_CAFFE)
    env = dict(os.environ, CAFFE=shlex.join([sys.executable, str(trainer)]))
    env.pop("CAFFE_GPU", None)

    def train(net: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(out / net / "train.sh")], env=env, capture_output=True, text=True,
                              cwd=tmp_path)

    def calls(net: str) -> list[list[str]]:
        return [json.loads(line) for line in (out / net / "args.json").read_text().splitlines()]

    solver = f"stem {HOSTILE} solver.prototxt"
    assert (out / transfer / solver).is_file()
    proc = train(transfer)                                  # its base net is not trained yet
    assert proc.returncode == 1 and f"its base net {base} is not trained yet" in proc.stderr, proc.stderr
    assert f"train it first: ../{base}/train.sh" in proc.stderr

    assert train(base).returncode == 0
    assert calls(base) == [["train", "-solver", solver]]
    logs = [p.name for p in (out / base).iterdir() if p.name.startswith(f"{base}.") and p.suffix == ".log"]
    assert len(logs) == 1, logs
    (out / base / f"snap {HOSTILE}_iter_20.caffemodel").write_bytes(b"final weights")
    assert train(transfer).returncode == 0
    (out / transfer / f"snap {HOSTILE}_iter_5.solverstate").write_bytes(b"state")
    assert train(transfer).returncode == 0
    assert calls(transfer) == [
        ["train", "-solver", solver, "-weights", f"basenet/snap {HOSTILE}_iter_20.caffemodel"],
        ["train", "-solver", solver, "-snapshot", f"snap {HOSTILE}_iter_5.solverstate"]]
    (out / transfer / f"snap {HOSTILE}_iter_20.caffemodel").write_bytes(b"final weights")
    proc = train(transfer)
    assert proc.returncode == 0 and f"{transfer}: already trained" in proc.stderr, proc.stderr
    assert len(calls(transfer)) == 2
    assert_nothing_ran(tmp_path)


def test_gen_nets_keeps_a_line_break_of_a_comment_in_the_comment(tmp_path):
    """A name that only appears in comment lines (the architecture's) with a line break would end a comment line
    of train.sh and run the rest: the comment takes the break as a blank, and the script runs nothing of it."""
    arch = architectures.get("caffenet_small").replace(name="mine\ntouch PWNED")
    netgen.render_experiment(None, tmp_path / "nets", tmp_path / "data", arch=arch, only="half0A")
    script = tmp_path / "nets" / "half0A" / "train.sh"
    lines = script.read_text().splitlines()
    assert "# Written by tools/gen_nets (architecture mine touch PWNED); re-running it rewrites this file." in lines
    assert not any(line.lstrip().startswith("touch") for line in lines)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# ---------------------------------------------------------------------------------------------- local runner

@needs_make
def test_local_runner_runs_a_tree_under_a_hostile_root(tmp_path):
    """tools/submit --local on a tree in a hostile folder, a net whose snapshots have a hostile (but make-safe)
    prefix, a hostile GPU id and a trainer in a hostile folder: the Makefile, run_net.sh and train.sh run, every
    net finishes, the GPU id reaches train.sh as it is."""
    nets = small_experiment(seconds_per_iter=0.02)[:3]          # halfA, halfB, transferAB_1_1 (on halfA)
    root = make_tree(tmp_path / HOSTILE / "tree", nets)
    prefix = "o'brien-ü-`>PWNED`"     # no blank (make), no \" (the fake trainer's solver reading)
    with_snapshot_prefix(root, "halfB", prefix)
    caffe = hostile_trainer(tmp_path / HOSTILE / "bin")
    gpu = "$(touch PWNED)"
    proc = tool("submit", "--local", "-j", "2", "--gpus", f"0,{gpu}", "--caffe", caffe, str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 finished (of 3 nets)" in proc.stdout, proc.stdout
    assert (root / "halfB" / f"{prefix}_iter_20.caffemodel").is_file()
    gpus = {extra.split("gpu=", 1)[1] for n in nets for event, _, _, extra in timeline(root / n["name"])
            if event == "start"}
    assert gpus <= {"0", gpu} and gpu in gpus, gpus
    assert f"make -C {shlex.quote(str(root))} -f local/Makefile" in (root / "local" / "Makefile").read_text()
    assert_nothing_ran(tmp_path)


@needs_make
@pytest.mark.parametrize("char", [" ", "$", "#", ":", "%"])
def test_makefile_refuses_a_snapshot_make_cannot_read(tmp_path, char):
    """A net's final snapshot is a make target: a character make gives a meaning there is refused naming the
    file and the character, before local/ is written; the tree is left as it was."""
    root = make_tree(tmp_path / "tree", small_experiment()[:1])
    with_snapshot_prefix(root, "halfA", f"snap{char}x")
    before = files_of(root)
    proc = tool("submit", "--local", "--caffe", "true", str(root), cwd=tmp_path)
    out = assert_refused(proc, str(root / "halfA" / f"snap{char}x_iter_20.caffemodel"), repr(char))
    assert "GNU make" in out
    assert not (root / "local").exists()
    assert files_of(root) == before


# ---------------------------------------------------------------------------------------------- line breaks

@pytest.mark.parametrize("command", [["submit", "--local", "--caffe", "true"],
                                     ["submit", "--slurm", "--dry-run", "--caffe", "true"]])
def test_a_tree_root_with_a_line_break_is_refused(tmp_path, command):
    root = make_tree(tmp_path / "tree\ntouch PWNED", small_experiment()[:1])
    before = files_of(tmp_path)
    proc = tool(command[0], *command[1:], str(root), cwd=tmp_path)
    assert_refused(proc, repr(str(root)), "line break")
    assert files_of(tmp_path) == before
    assert_nothing_ran(tmp_path)


def test_run_experiment_refuses_an_out_with_a_line_break_before_making_anything(tmp_path):
    (tmp_path / "kept.txt").write_text("made before")
    out = tmp_path / "runs\ntouch PWNED"
    proc = tool("run_experiment", "--quick", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert_refused(proc, repr(str(out)), "--out")
    assert not out.exists() and files_of(tmp_path) == {"kept.txt": b"made before"}


# ---------------------------------------------------------------------------------------------- Slurm

def sbatch_words(script: str) -> list[list[str]]:
    """The #SBATCH lines of a job script as words (shell quoting, which sbatch's #SBATCH parser shares)."""
    return [shlex.split(line[len("#SBATCH"):]) for line in script.splitlines() if line.startswith("#SBATCH")]


def test_slurm_job_script_runs_under_a_hostile_root(tmp_path):
    """The job script of a tree in a hostile folder (with a %, which Slurm expands in --output), a hostile
    trainer path and an sbatch option with blanks and quotes: bash reads it, its #SBATCH words are the intended
    ones, and run as task 0 of its array it trains that net."""
    root = make_tree(tmp_path / f"{HOSTILE} 100%j" / "tree", small_experiment(seconds_per_iter=0.02)[:2])
    caffe = hostile_trainer(tmp_path / HOSTILE / "bin")
    comment = f"--comment={HOSTILE}"
    options = slurm.SlurmOptions(caffe=caffe, extra=(comment,))
    p = slurm.plan(root, options, queued={})
    job, = p.jobs
    assert subprocess.run(["bash", "-n"], input=job.script, text=True).returncode == 0
    words = sbatch_words(job.script)
    assert ["--job-name=ct-one"] in words and [comment] in words
    assert [f"--output={str(root / 'slurm').replace('%', '%%')}/%x_%A_%a.out"] in words

    job.script_path.parent.mkdir()
    job.script_path.write_text(job.script)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7", SLURM_JOB_ID="8")
    proc = subprocess.run(["bash", str(job.script_path)], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "halfA: trained" in proc.stdout
    assert (root / "halfA" / "halfA_iter_20.caffemodel").is_file()

    dry = slurm.dry_run_text(p)
    assert subprocess.run(["bash", "-n"], input=dry, text=True).returncode == 0
    sbatch_call = next(line for line in dry.splitlines() if line.startswith("JOB_one="))
    assert shlex.split(sbatch_call[len("JOB_one=$("):-1]) == ["sbatch", "--parsable", str(job.script_path)]
    assert_nothing_ran(tmp_path)


def test_slurm_refuses_what_an_sbatch_line_cannot_carry(tmp_path):
    """A backslash in the tree's path (Slurm drops it from --output) or in an option, and a job prefix that is
    no file name: refused in one line naming it, nothing written."""
    root = make_tree(tmp_path / "back\\slash" / "tree", small_experiment()[:1])
    before = files_of(tmp_path)
    proc = tool("submit", "--slurm", "--caffe", "true", str(root), cwd=tmp_path)
    assert_refused(proc, f"--output={root}/slurm/%x_%A_%a.out", "backslash")
    plain = make_tree(tmp_path / "plain", small_experiment()[:1])
    proc = tool("submit", "--slurm", "--caffe", "true", "--sbatch-arg", "--comment=a\\b", str(plain), cwd=tmp_path)
    assert_refused(proc, "--comment=a\\b", "backslash")
    proc = tool("submit", "--slurm", "--caffe", "true", "--job-prefix", "my/jobs", str(plain), cwd=tmp_path)
    assert_refused(proc, "'my/jobs'", "--job-prefix")
    assert not (root / "slurm").exists() and not (plain / "slurm").exists()
    assert files_of(root) == {k[len("back\\slash/tree/"):]: v for k, v in before.items()
                              if k.startswith("back\\slash/tree/")}


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_trains_a_tree_under_a_hostile_root(slurm_cluster, tmp_path):  # noqa: F811
    """On the localhost cluster: sbatch reads the #SBATCH lines of a tree in a hostile folder with a % in it,
    Slurm writes each task's output where --output says, every net (a transfer net after its base net) trains."""
    nets = small_experiment(seconds_per_iter=0.02)[:3]
    root = make_tree(tmp_path / f"{HOSTILE} 100%j" / "tree", nets)
    caffe = hostile_trainer(tmp_path / HOSTILE / "bin")
    proc = tool("submit", "--slurm", "--caffe", caffe, "--sbatch-arg", f"--comment={HOSTILE}", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = json.loads((root / "slurm" / "jobs.json").read_text())
    one = next(j for j in jobs if j["name"] == "ct-one")
    shown = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", one["job_id"], "-o", "%k"],
                           capture_output=True, text=True).stdout.split("\n")[0]
    assert shown == HOSTILE, shown
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = {s.name: s.state for s in slurm.tree_status(root)}
        if all(state in ("finished", "failed") for state in states.values()):
            break
        time.sleep(2)
    assert all(state == "finished" for state in states.values()), tool("submit", "--status", str(root),
                                                                       cwd=tmp_path).stdout
    outs = sorted(p.name for p in (root / "slurm").glob("*.out"))
    expected = {f"{j['name']}_{j['job_id']}_{i}.out" for j in jobs for i in range(len(j["nets"]))}
    assert set(outs) == expected, outs
    assert "halfA: trained" in (root / "slurm" / f"ct-one_{one['job_id']}_0.out").read_text()
    assert_nothing_ran(tmp_path)


# ---------------------------------------------------------------------------------------------- install_caffe

def test_install_caffe_environment_lines_run_in_bash(tmp_path):
    """The lines tools/install_caffe prints for the user's shell, for a build in a hostile folder."""
    prefix = tmp_path / HOSTILE
    script = "\n".join(realcaffe.env_lines(prefix)) + '\nprintf "%s\\n" "$CAFFE_ROOT" "$PATH" "$PYTHONPATH"\n'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/site"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(prefix), f"{prefix}/bin:/usr/bin:/bin", f"{prefix}/python:/site"]
    assert_nothing_ran(tmp_path)


# ---------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
@needs_make
def test_run_experiment_quick_under_a_hostile_out(tmp_path):
    """tools/run_experiment --quick --out <hostile folder>: all 16 nets train, the figure is drawn."""
    out = tmp_path / HOSTILE
    proc = tool("run_experiment", "--quick", "--no-progress", "--jobs", "2", "--out", str(out), cwd=tmp_path,
                timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "16 nets (16 trained in this run)" in proc.stdout
    assert (out / "results" / "fig2_transfer.png").is_file()
    assert_nothing_ran(tmp_path)
