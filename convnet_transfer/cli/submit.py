"""`tools/submit`: train a generated tree on Slurm, or locally with make; report its status."""
from __future__ import annotations

import json
import os
import sys

import click

from convnet_transfer.nets import tree
from convnet_transfer.nets.tree import TreeError
from convnet_transfer.training import slurm
from convnet_transfer.training.runners import trainer_env
from convnet_transfer.training.slurm import SlurmOptions
from . import interruptible

ENGINES = ("auto", "caffe", "torch")


def _patterns(value: str | None) -> list[str] | None:
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


def _trainer(engine: str | None, caffe: str | None) -> tuple[str, str | None]:
    """(engine, explicit trainer command or None): --caffe wins, then --engine, then $CAFFE, then auto."""
    if caffe:
        return "auto", caffe
    if engine:
        return engine, None
    return "auto", os.environ.get("CAFFE") or None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("root", type=click.Path(file_okay=False, exists=True), default="generated")
@click.option("--slurm", "mode", flag_value="slurm", help="Submit the nets as Slurm job arrays (sbatch).")
@click.option("--local", "mode", flag_value="local", help="Train on this machine with make -j N.")
@click.option("--status", "mode", flag_value="status", help="Show every net's state (the default).", default=True)
@click.option("--nets", help="Only these nets (comma-separated names or patterns, e.g. 'half0*,transfer0A0B_*').")
@click.option("--engine", type=click.Choice(ENGINES), help="Trainer: real Caffe, our caffe_torch, or auto (real "
              "Caffe when built, else caffe_torch). Default: $CAFFE when set, else auto.")
@click.option("--caffe", "caffe_cmd", metavar="CMD", help="Explicit trainer command for train.sh's $CAFFE.")
@click.option("--dry-run", is_flag=True, help="--slurm: print the job scripts and sbatch calls; write nothing.")
@click.option("--partition", help="sbatch --partition.")
@click.option("--account", help="sbatch --account.")
@click.option("--qos", help="sbatch --qos.")
@click.option("--time", "time_limit", default="24:00:00", show_default=True,
              help="Time limit of one run of a job; longer trainings snapshot and requeue themselves.")
@click.option("--gpus-per-task", type=int, help="GPUs per net (sbatch --gpus-per-task).")
@click.option("--cpus-per-task", type=int, help="CPUs per net (data loading workers).")
@click.option("--mem", help="Memory per net, e.g. 32G (sbatch --mem).")
@click.option("--array-limit", type=int, metavar="N", help="At most N tasks of each array at once (--array=...%N).")
@click.option("--sbatch-arg", "extra", multiple=True, metavar="ARG",
              help="One more sbatch option, e.g. --sbatch-arg=--constraint=a100 (repeatable).")
@click.option("--signal", "signal_name", default="USR1", show_default=True,
              help="Signal Slurm sends the job script before the time limit (it snapshots and requeues).")
@click.option("--signal-lead", type=int, default=300, show_default=True,
              help="Seconds before the time limit at which Slurm sends it (enough for one snapshot).")
@click.option("--job-prefix", default="ct", show_default=True, help="Slurm job names: PREFIX-one, ...")
@click.option("-j", "--jobs", type=int, default=None, help="--local: nets at once (default: number of --gpus, else 1).")
@click.option("--gpus", help="--local: GPU ids to share out, e.g. 0,1 (each net gets one; CAFFE_GPU).")
@click.option("--json", "as_json", is_flag=True, help="--status: print JSON instead of a table.")
@interruptible("run the same command again to resume")
def main(root, mode, nets, engine, caffe_cmd, dry_run, partition, account, qos, time_limit, gpus_per_task,
         cpus_per_task, mem, array_limit, extra, signal_name, signal_lead, job_prefix, jobs, gpus, as_json):
    """Train the nets of a generated tree ROOT (default generated/; tools/gen_nets writes it), in dependency
    order: base nets first, each transfer net after its own base net.

    \b
    --slurm   reads ROOT/nets.json and the net directories; writes the job scripts ROOT/slurm/<job>.sh,
              submits them (block one as one job array, the transfer nets of each base net as an array
              waiting on that base net's task, the rest as one array), records the job ids in
              ROOT/slurm/jobs.json; Slurm's output files go to ROOT/slurm/, Caffe's logs to the net
              directories. Jobs snapshot and requeue themselves before their time limit.
    --local   writes ROOT/local/Makefile and run_net.sh and runs make -j N -k; Ctrl-C snapshots and
              stops; running it again resumes.
    --status  reads the net directories (final snapshot, newest log), squeue and sacct (when the cluster
              has accounting): pending, running (iteration), finished (accuracy), failed (why).

    \b
    Examples:
      tools/submit --slurm --partition gpu --gpus-per-task 1 --time 24:00:00 generated/
      tools/submit --slurm --dry-run generated/
      tools/submit --local -j 2 --gpus 0,1 generated/
      tools/submit --status generated/
    """
    try:
        patterns = _patterns(nets)
        if mode == "slurm":
            engine, caffe = _trainer(engine, caffe_cmd)
            options = SlurmOptions(partition=partition, account=account, qos=qos, time=time_limit,
                                   gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task, mem=mem,
                                   array_limit=array_limit, extra=tuple(extra), engine=engine, caffe=caffe,
                                   signal=signal_name.upper().removeprefix("SIG"), signal_lead=signal_lead,
                                   job_prefix=job_prefix)
            the_plan = slurm.plan(root, options, patterns, queued={} if dry_run else None)
            slurm.submit(the_plan, dry_run=dry_run, echo=click.echo)
            if not dry_run:
                for net, why in the_plan.skipped.items():
                    click.echo(f"  {net}: not submitted ({why})")
        elif mode == "local":
            from convnet_transfer.training.local_runner import gpu_slots, run_local
            gpu_list = gpu_slots(gpus)
            env = trainer_env(*_trainer(engine, caffe_cmd), base=os.environ, gpu=bool(gpu_list) or None)
            result = run_local(root, jobs=jobs or (len(gpu_list) if gpu_list else 1), nets=patterns, env=env,
                               gpus=gpu_list)
            click.echo(result.describe())
            if result.interrupted:
                click.echo(f"interrupted by {result.interrupted.name}: the nets in training snapshotted; run the "
                           f"same command to resume")
                sys.exit(128 + result.interrupted)
            sys.exit(0 if result.ok else 1)
        else:
            statuses = slurm.tree_status(root, patterns)
            if as_json:
                click.echo(json.dumps([s.as_dict() for s in statuses], indent=1))
            else:
                click.echo(tree.format_status(statuses))
    except TreeError as err:
        raise click.ClickException(str(err)) from None
