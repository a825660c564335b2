"""`tools/slurm_localhost start|stop|status`: a real one-node Slurm cluster on this machine."""
from __future__ import annotations

import click

from .. import slurm_localhost as cluster


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("action", type=click.Choice(["start", "stop", "status"]))
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help=f"State folder (default ${cluster.STATE_DIR_ENV} or {cluster.DEFAULT_DIR}).")
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
            status = cluster.start(directory, cpus=cpus, memory_mb=memory_mb)
        elif action == "stop":
            status = cluster.stop(directory)
        else:
            status = cluster.status(directory)
    except cluster.ClusterError as err:
        raise click.ClickException(str(err)) from None
    click.echo(status.describe())
    if action == "status" and not status.up:
        raise SystemExit(1)
