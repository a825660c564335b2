"""tools/gen_nets: render the experiment's net directories (solver, train/val prototxts, links, train.sh)."""
from __future__ import annotations

import click

from convnet_transfer.nets import architectures, catalog as catalog_mod, netgen, tree


@click.command(help="""Render every net of the paper (or those matching --only) from the Jinja templates.

\b
Reads:  the catalog (convnet_transfer/nets/catalog.py), an architecture (convnet_transfer/nets/architectures/,
        or your own current-format prototxt with --prototxt and --transferable), templates/.
Writes: OUT/<net>/ with <stem>solver.prototxt, <stem>train.prototxt, <stem>val.prototxt, train.sh,
        basenet -> ../<base net>, links to DATA/<split>_train/<backend>, DATA/<split>_valid/<backend>
        and DATA/<split>_train/mean.binaryproto; and OUT/nets.json.
Never deletes or changes snapshots, .caffemodel, .solverstate or log files; rewrites its own files
only when they change, and says how many it created/updated/left unchanged.

\b
Examples:
  tools/gen_nets --all                                   # the 170 nets, current Caffe format
  tools/gen_nets --all --format 2014                     # as the 2014 release wrote them
  tools/gen_nets --only 'transfer0A0B_*' --scale 0.001 --mode cpu
  tools/gen_nets --list                                  # names, blocks and dependencies
  tools/gen_nets --all --prototxt my_resnet.prototxt --transferable conv1,res2a,res2b,res3a --mode cpu
""")
@click.option("--all", "all_", is_flag=True, help="Render every net of the catalog.")
@click.option("--only", metavar="PATTERN", multiple=True,
              help="Render the nets whose name matches this glob (repeatable, or comma-separated).")
@click.option("--list", "list_", is_flag=True, help="Print the nets with block, kind and base net; write nothing.")
@click.option("--out", "out_root", default="generated", show_default=True, type=click.Path(file_okay=False),
              help="Output root: one folder per net, and nets.json.")
@click.option("--data", "data_root", default="ilsvrc12/data", show_default=True,
              help="Data root of stages 1-2 (<split>_train/<backend>, mean.binaryproto). A relative path gives "
                   "relative links, as in 2014.")
@click.option("--arch", default="caffenet", show_default=True,
              help=f"Architecture: {', '.join(architectures.names())}.")
@click.option("--prototxt", type=click.Path(exists=True, dir_okay=False),
              help="Your own train_val prototxt (current format) instead of --arch.")
@click.option("--transferable", help="With --prototxt: its transferable units in order, comma-separated: a layer, "
                                     "or a residual block by its name or its layers' name prefix (split point n "
                                     "copies the first n; docs/nets.md).")
@click.option("--format", "format_", type=click.Choice(netgen.FORMATS), default="current", show_default=True,
              help="current: Caffe's `layer {}` format; 2014: the release's V0 `layers { layer {} }` format.")
@click.option("--backend", type=click.Choice(netgen.BACKENDS),
              help="Database backend [default: lmdb; leveldb for --format 2014].")
@click.option("--mode", type=click.Choice(["gpu", "cpu"]),
              help="solver_mode [default: the architecture's: gpu for caffenet, cpu for caffenet_small].")
@click.option("--batch-size", type=int, help="Training batch size (and validation batch size unless --val-batch-size).")
@click.option("--val-batch-size", type=int, help="Validation batch size.")
@click.option("--classes", "n_classes", type=int,
              help="Outputs of the classifier (fc8) [default: the architecture's; 1000 for caffenet, kept for "
                   "the 500-class halves as in 2014].")
@click.option("--scale", type=float, help="Multiply every iteration count (max_iter, stepsize, snapshot, "
                                          "test_interval, test_iter, display) by this, e.g. 0.001 for a quick run.")
@click.option("--max-iter", type=int, help="Solver max_iter (after --scale).")
@click.option("--test-interval", type=int, help="Solver test_interval.")
@click.option("--test-iter", type=int, help="Solver test_iter.")
@click.option("--snapshot", type=int, help="Solver snapshot interval.")
@click.option("--stepsize", type=int, help="Solver stepsize.")
@click.option("--display", type=int, help="Solver display interval.")
@click.option("--base-lr", type=float, help="Solver base_lr.")
@click.option("--templates", type=click.Path(exists=True, file_okay=False),
              help="Use the templates in this folder instead of the installed ones.")
@click.option("--quiet", is_flag=True, help="No progress bar, no list of changed files.")
def main(all_, only, list_, out_root, data_root, arch, prototxt, transferable, format_, backend, mode, batch_size,
         val_batch_size, n_classes, scale, max_iter, test_interval, test_iter, snapshot, stepsize, display, base_lr,
         templates, quiet):
    transferable = [t.strip() for t in (transferable or "").split(",") if t.strip()]
    if prototxt and not transferable:
        raise click.UsageError("--prototxt needs --transferable UNIT,UNIT,... (in order)")
    try:
        arch = architectures.from_prototxt(prototxt, transferable) if prototxt else architectures.get(arch)
    except (KeyError, ValueError) as err:
        raise click.ClickException(str(err.args[0] if isinstance(err, KeyError) else err)) from None
    # the paper's protocol, split points 1..the architecture's transferable units (the paper's catalog for CaffeNet)
    catalog = catalog_mod.transfer_catalog(n_layers=len(arch.transferable))
    patterns = [p for item in only for p in item.split(",") if p.strip()] or None
    try:
        selected = catalog.select(patterns)
    except KeyError as err:
        raise click.UsageError(str(err)) from None
    if list_:
        click.echo(f"{'net':24} {'block':9} {'kind':9} {'depends on':12} description")
        for net in selected:
            click.echo(f"{net.name:24} {net.block:9} {net.kind:9} {net.base or '-':12} {net.describe()}")
        return
    if not all_ and patterns is None:
        raise click.UsageError("say which nets: --all, or --only PATTERN (see --list)")
    solver = dict(max_iter=max_iter, test_interval=test_interval, test_iter=test_iter, snapshot=snapshot,
                  stepsize=stepsize, display=display, base_lr=base_lr)
    options = netgen.RenderOptions(format=format_, backend=backend, mode=mode, batch_size=batch_size,
                                   val_batch_size=val_batch_size, n_classes=n_classes, scale=scale,
                                   solver={k: v for k, v in solver.items() if v is not None})
    try:
        report = netgen.render_experiment(catalog, out_root, data_root, arch=arch, options=options, only=patterns,
                                          templates=templates, progress=not quiet)
    except netgen.NetgenError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{out_root}: {report.summary()}")
    if not quiet:
        for label, paths in (("created", report.created), ("updated", report.updated)):
            if paths and len(paths) <= 40:
                click.echo(f"{label}: " + " ".join(paths))
    _warn_changed(out_root)


def _warn_changed(out_root: str) -> None:
    """Say which trained nets now hold other settings than they were trained with (tree.changed_nets): train.sh
    and tools/submit refuse to train them on, as that would mix the settings."""
    try:
        changed = tree.changed_nets(tree.read_tree(out_root))
    except tree.TreeError:
        return                        # a partial tree (base nets not rendered): train.sh still checks each net
    if changed:
        click.echo(f"warning: {out_root}: {len(changed)} trained nets now hold other settings than they were trained "
                   f"with: {tree.format_changes(changed)}. train.sh and tools/submit refuse to train them on; "
                   f"render the old settings again {tree.START_AFRESH}", err=True)
