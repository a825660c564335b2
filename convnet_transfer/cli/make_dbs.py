"""tools/make_dbs: image lists -> Caffe Datum databases and mean files (library: convnet_transfer.data.databases)."""
from __future__ import annotations

import sys

import click

from convnet_transfer.data import databases
from . import interruptible


def _size(ctx, param, value):
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        height, width = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected HEIGHTxWIDTH, e.g. 256x256") from None
    if height <= 0 or width <= 0:
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    return height, width


@click.command(help="""Convert images to Caffe Datum databases (LMDB or LevelDB) and mean .binaryproto files,
as Caffe's convert_imageset + compute_image_mean do, using every core; an interrupted run resumes.

\b
One list:   make_dbs --list files.txt --root IMAGES/ --out DB [--mean mean.binaryproto]
A data root: make_dbs --data ilsvrc12/data --root IMAGES/train/ [--val-root IMAGES/val/] [--shared]

Reads: the list ("<relative/path> <label>" lines) and the images under --root. Writes: the database
directory (with convnet_transfer.complete.json inside when finished; DB.partial/ while being made),
DB.skipped.txt with --skip-bad, and the mean. With --data, every <split>/files.txt becomes
<split>/<backend>/ and, for *_train splits, <split>/mean.binaryproto; with --shared only whole_train
and whole_valid are databases and every other split is a key list <split>/keys/ over them (read by
our engine; real Caffe needs the per-split databases).""")
@click.option("--list", "list_path", type=click.Path(exists=True, dir_okay=False), help="one image list (files.txt)")
@click.option("--out", type=click.Path(file_okay=False), help="the database directory to write (with --list)")
@click.option("--mean", "mean_path", type=click.Path(dir_okay=False),
              help="also write the mean of the database here (with --list)")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False),
              help="a data root of split directories (<split>/files.txt), instead of --list")
@click.option("--split", "splits", multiple=True, help="with --data: only these splits (repeatable)")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False),
              help="the folder the list's relative image paths start from")
@click.option("--val-root", type=click.Path(exists=True, file_okay=False),
              help="with --data: the folder of the *_valid lists' images, when not --root (ILSVRC2012/val/)")
@click.option("--backend", type=click.Choice(databases.BACKENDS), default="lmdb", show_default=True)
@click.option("--resize/--no-resize", default=True, show_default=True,
              help="resize every image (cv::resize INTER_LINEAR, bit-exact) or keep their sizes")
@click.option("--size", default="256x256", show_default=True, callback=_size,
              help="HEIGHTxWIDTH to resize to (the paper: 256x256)")
@click.option("--encoded", is_flag=True, help="store encoded image files (JPEG/PNG) instead of raw pixels")
@click.option("--shuffle-seed", type=int, default=None, help="shuffle the list with this seed before numbering")
@click.option("--gray", is_flag=True, help="convert to one grayscale channel")
@click.option("--workers", type=int, default=None, help="decoding processes [default: every core; 0: none]")
@click.option("--skip-bad", is_flag=True,
              help="skip missing/corrupt images and list them in DB.skipped.txt (default: stop, naming the image)")
@click.option("--shared", is_flag=True, help="with --data: splits as key lists over the whole_* databases")
@click.option("--commit-every", type=int, default=databases.COMMIT_EVERY, show_default=True,
              help="records per transaction")
@click.option("--progress/--no-progress", default=True, help="show a progress bar")
@interruptible("run the same command again: the conversion resumes where it stopped")
def main(list_path, out, mean_path, data_root, splits, root, val_root, backend, resize, size, encoded, shuffle_seed, gray,
         workers, skip_bad, shared, commit_every, progress):
    options = dict(backend=backend, resize=size if resize else None, encoded=encoded, shuffle_seed=shuffle_seed,
                   gray=gray, workers=workers, skip_bad=skip_bad, progress=progress, commit_every=commit_every)
    if (list_path is None) == (data_root is None):
        raise click.UsageError("give either --list (with --out) or --data")
    try:
        if list_path is not None:
            if out is None:
                raise click.UsageError("--list needs --out")
            if shared or splits or val_root:
                raise click.UsageError("--shared, --split and --val-root go with --data")
            infos = {out: databases.convert_list(list_path, root, out, mean_path=mean_path, **options)}
        else:
            if out or mean_path:
                raise click.UsageError("--out and --mean go with --list; --data writes into each split directory")
            infos = databases.convert_data_root(data_root, root, val_root=val_root, shared=shared, splits=splits or None, **options)
    except databases.DatabaseError as err:
        click.echo(f"make_dbs: error: {err}", err=True)
        sys.exit(1)
    for name, info in infos.items():
        extra = f", {len(info.skipped)} skipped (see {info.path}.skipped.txt)" if info.skipped else ""
        mean = f", mean {info.mean_path}" if info.mean_path else ""
        click.echo(f"{name}: {info.count} records in {info.path} ({info.backend}){mean}{extra}")
