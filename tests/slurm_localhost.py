"""A real single-node Slurm cluster on this machine, for the tests and for trying `tools/submit --slurm`.

Test code, not part of the pipeline: `tools/slurm_localhost start|stop|status` runs this file.

    start(state_dir)   writes <state_dir>/slurm.conf, a MUNGE key, starts munged, slurmctld and slurmd
                       (as root, in the background, every file under state_dir) and waits until `sinfo`
                       shows the node idle. Idempotent: daemons already running are left as they are.
    stop(state_dir)    stops the three daemons it started (by the process ids in their pid files).
    status(state_dir)  which daemons run, and sinfo's view.

It uses Debian's slurm-wlm (22.05) and munge packages. The controller is `localhost`; both daemons talk to
each other over 127.0.0.1, and every request must carry a MUNGE credential made with this cluster's own key
(mode 0400, in state_dir), so no other machine can use the cluster. No cgroups are needed
(proctrack/linuxproc, task/none) and there is no accounting database (so `sacct` does not work here;
`tools/submit --status` does not need it).

Clients (sbatch, squeue, ...) find the cluster through $SLURM_CONF=<state_dir>/slurm.conf; when
/etc/slurm/slurm.conf does not exist, start() also links it there so that a plain `sbatch` works, and
stop() removes that link again.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import click

__all__ = ["DEFAULT_DIR", "STATE_DIR_ENV", "ClusterError", "ClusterStatus", "state_dir", "start", "stop", "status",
           "client_env", "binaries_missing"]

STATE_DIR_ENV = "CONVNET_TRANSFER_SLURM_DIR"
DEFAULT_DIR = Path("/tmp/convnet_transfer-slurm")
ETC_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached: the message says what to look at."""


@dataclass
class ClusterStatus:
    state_dir: Path
    running: dict            # daemon -> pid or None
    node_state: str | None   # sinfo's state of the node ("idle", "mixed", "allocated", "down", ...) or None

    @property
    def up(self) -> bool:
        return all(self.running.values()) and bool(self.node_state) and not self.node_state.startswith(
            ("down", "drain", "fail", "unknown"))

    def describe(self) -> str:
        lines = [f"local Slurm cluster in {self.state_dir}:"]
        lines += [f"  {d:<10} {'running, pid ' + str(p) if p else 'not running'}" for d, p in self.running.items()]
        lines.append(f"  node localhost: {self.node_state or 'no answer from slurmctld'}")
        lines.append(f"  clients: export SLURM_CONF={self.state_dir / 'slurm.conf'}")
        return "\n".join(lines)


def state_dir(path: str | os.PathLike | None = None) -> Path:
    """The cluster's folder: `path`, else $CONVNET_TRANSFER_SLURM_DIR, else /tmp/convnet_transfer-slurm."""
    return Path(path or os.environ.get(STATE_DIR_ENV) or DEFAULT_DIR).resolve()


def binaries_missing() -> list[str]:
    """The Slurm/MUNGE programs this machine lacks (apt-get install slurm-wlm munge)."""
    extra = ["/usr/sbin"]
    path = os.pathsep.join([os.environ.get("PATH", "")] + extra)
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def client_env(directory: str | os.PathLike | None = None, base: dict | None = None) -> dict:
    """An environment in which sbatch/squeue/scontrol talk to the local cluster."""
    env = dict(os.environ if base is None else base)
    env["SLURM_CONF"] = str(state_dir(directory) / "slurm.conf")
    return env


def _which(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not found:
        raise ClusterError(f"{name} is not installed: apt-get install slurm-wlm munge")
    return found


def _real_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024 - 512)   # leave the daemons some room
    return 1024


def slurm_conf(directory: Path, cpus: int, memory_mb: int) -> str:
    """The slurm.conf of the one-node cluster (comments say why each line is there)."""
    d = directory
    return f"""\
# Single-node Slurm cluster on localhost, written by tools/slurm_localhost. Safe to edit while it is stopped.
ClusterName=convnet-transfer
SlurmctldHost=localhost
SlurmctldAddr=127.0.0.1
SlurmctldPort=6817
SlurmdPort=6818
# bind to the address localhost resolves to (127.0.0.1), not to every interface
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
# MUNGE with this cluster's own key and socket (in {d}/munge), so nothing outside this machine can talk to it
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={d}/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
# no cgroups in containers: track a job's processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# a small cluster: look at pending jobs every 5 s (defaults: 60 s and 30 s)
SchedulerParameters=sched_interval=5,bf_interval=5
# jobs may requeue themselves (scontrol requeue) before their time limit
JobRequeue=1
# no accounting database: sacct does not work, squeue does
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
MailProg=/bin/true
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    """The process id in a pid file, when that process is alive."""
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _pid_files(d: Path) -> dict:
    return {"munged": d / "munge" / "munged.pid", "slurmctld": d / "run" / "slurmctld.pid",
            "slurmd": d / "run" / "slurmd.pid"}


def _node_state(d: Path) -> str | None:
    try:
        out = subprocess.run([_which("sinfo"), "-h", "-N", "-n", "localhost", "-o", "%T"], env=client_env(d),
                             capture_output=True, text=True, timeout=20)
    except (subprocess.TimeoutExpired, ClusterError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def status(directory: str | os.PathLike | None = None) -> ClusterStatus:
    d = state_dir(directory)
    running = {name: _pid(path) for name, path in _pid_files(d).items()}
    node = _node_state(d) if running["slurmctld"] else None
    return ClusterStatus(d, running, node)


def _run(cmd: list[str], what: str, d: Path) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(d))
    if out.returncode != 0:
        raise ClusterError(f"{what} failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stderr.strip()}\n"
                           f"see the logs in {d}/log and {d}/munge")


def start(directory: str | os.PathLike | None = None, *, cpus: int | None = None, memory_mb: int | None = None,
          link_etc: bool = True, timeout: float = 90) -> ClusterStatus:
    """Start (or find running) the local cluster and wait until its node is idle. Needs root."""
    missing = binaries_missing()
    if missing:
        raise ClusterError(f"missing programs {', '.join(missing)}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise ClusterError("the local cluster runs its daemons as root: run tools/slurm_localhost start as root")
    d = state_dir(directory)
    before = status(d)
    if before.up:
        return before
    for sub in ("munge", "ctld", "spool", "run", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    os.chmod(d / "munge", 0o700)
    conf = d / "slurm.conf"
    if not (before.running["slurmctld"] or before.running["slurmd"]) or not conf.exists():
        conf.write_text(slurm_conf(d, cpus or os.cpu_count() or 1, memory_mb or _real_memory_mb()))
    key = d / "munge" / "munge.key"
    if not key.exists():
        _run([_which("mungekey"), "--create", f"--keyfile={key}"], "creating the MUNGE key", d)
        os.chmod(key, 0o400)
    if not before.running["munged"]:
        _run([_which("munged"), f"--socket={d}/munge/munge.socket", f"--key-file={key}",
              f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/munge/munged.log",
              f"--seed-file={d}/munge/munged.seed", "--force"], "starting munged", d)
    if not before.running["slurmctld"]:
        _run([_which("slurmctld"), "-f", str(conf)], "starting slurmctld", d)
    if not before.running["slurmd"]:
        _run([_which("slurmd"), "-f", str(conf), "-N", "localhost"], "starting slurmd", d)
    if link_etc and not ETC_CONF.exists() and not ETC_CONF.is_symlink():
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONF.symlink_to(conf)
    deadline = time.monotonic() + timeout
    while True:
        now = status(d)
        if now.up:
            return now
        if now.node_state and now.node_state.startswith(("down", "drain")):
            # a node left down by an earlier run of this cluster: bring it back
            subprocess.run([_which("scontrol"), "update", "NodeName=localhost", "State=RESUME"],
                           env=client_env(d), capture_output=True)
        if time.monotonic() > deadline:
            raise ClusterError(f"the local cluster did not come up within {timeout:.0f} s\n{now.describe()}\n"
                               f"see {d}/log/slurmctld.log, {d}/log/slurmd.log, {d}/munge/munged.log")
        time.sleep(1)


def _cancel_jobs(d: Path, timeout: float) -> None:
    """Cancel every job of the cluster and wait until their processes are gone (slurmstepd outlives slurmd)."""
    env = client_env(d)
    listing = subprocess.run([_which("squeue"), "-h", "-o", "%A"], env=env, capture_output=True, text=True)
    jobs = sorted(set(listing.stdout.split())) if listing.returncode == 0 else []
    if not jobs:
        return
    subprocess.run([_which("scancel"), *jobs], env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = subprocess.run([_which("squeue"), "-h", "-o", "%A"], env=env, capture_output=True, text=True)
        if left.returncode != 0 or not left.stdout.strip():
            return
        time.sleep(0.5)


def stop(directory: str | os.PathLike | None = None, timeout: float = 30) -> ClusterStatus:
    """Cancel the cluster's jobs, then stop slurmd, slurmctld and munged (by the pids in the state dir)."""
    d = state_dir(directory)
    files = _pid_files(d)
    if _pid(files["slurmctld"]) and _pid(files["slurmd"]):
        _cancel_jobs(d, timeout)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = _pid(files[name])
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid(files[name]) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
    if ETC_CONF.is_symlink() and Path(os.readlink(ETC_CONF)) == d / "slurm.conf":
        ETC_CONF.unlink()
    return status(d)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("action", type=click.Choice(["start", "stop", "status"]))
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help=f"State folder (default ${STATE_DIR_ENV} or {DEFAULT_DIR}).")
@click.option("--cpus", type=int, help="CPUs the node offers (default: this machine's).")
@click.option("--memory-mb", type=int, help="Memory the node offers (default: this machine's, less 512 MB).")
def main(action, directory, cpus, memory_mb):
    """Start, stop or show a single-node Slurm cluster on localhost (Debian's slurm-wlm 22.05 + munge).

    start writes DIR/slurm.conf and a MUNGE key, starts munged, slurmctld and slurmd as root in the background
    (state, logs and pid files under DIR), links /etc/slurm/slurm.conf to DIR/slurm.conf when there is none,
    and waits until the node is idle. Running start again leaves a running cluster as it is. The daemons
    listen on 127.0.0.1 only. stop cancels the cluster's jobs, then ends the three daemons. Clients: export SLURM_CONF=DIR/slurm.conf.
    """
    try:
        if action == "start":
            state = start(directory, cpus=cpus, memory_mb=memory_mb)
        elif action == "stop":
            state = stop(directory)
        else:
            state = status(directory)
    except (ClusterError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(state.describe())
    if action == "status" and not state.up:
        raise SystemExit(1)


if __name__ == "__main__":
    main(prog_name="tools/slurm_localhost")
