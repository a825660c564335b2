"""tools/install_caffe: build real BVLC Caffe (CPU) with pycaffe into a cache folder."""
from pathlib import Path

import click

from convnet_transfer.training import caffe_build, realcaffe


@click.command(help=f"""Build real BVLC Caffe (master {realcaffe.CAFFE_COMMIT[:7]}, CPU only) with pycaffe for
this Python, into PREFIX (default {realcaffe.default_prefix()}, or $CONVNET_TRANSFER_CAFFE_PREFIX).

Reads: Caffe's source (fetched with `apt-get source` from Debian 11's archive, sha256-checked; or --source),
Debian's build packages (installed with apt-get when run as root, else the exact command is printed).
Writes: PREFIX/bin (caffe, convert_imageset, compute_image_mean, upgrade_net_proto_text, ...), PREFIX/lib,
PREFIX/python (pycaffe), PREFIX/build.log, PREFIX/BUILD_INFO.json; pip-installs pycaffe's Python needs (six,
scipy, scikit-image) into this Python. Nothing inside the repository. A second run is a quick no-op.
Prints the environment lines that make the toolkit (and your shell) use this Caffe.""")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="install folder (default: the user's cache, see above)")
@click.option("--source", type=click.Path(exists=True, path_type=Path), default=None,
              help="Caffe's source instead of downloading it: the Debian .orig.tar.gz or a BVLC Caffe folder")
@click.option("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: all cores)")
@click.option("--force", is_flag=True, help="build again even when PREFIX already holds a build")
@click.option("--no-install", is_flag=True,
              help="install no Debian or pip package: stop with the command to run instead")
@click.option("--keep-build", is_flag=True, help="keep PREFIX/.build (source and object files) after success")
@click.option("--debian-mirror", default=None, help="Debian archive URL (default: the one apt uses here)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def main(prefix, source, jobs, force, no_install, keep_build, debian_mirror, quiet):
    try:
        prefix = caffe_build.install_caffe(prefix, source=source, jobs=jobs, force=force,
                                           install_deps=not no_install, keep_build=keep_build,
                                           debian_mirror=debian_mirror, progress=not quiet)
    except caffe_build.InstallError as err:
        raise click.ClickException(str(err)) from None
    click.echo("\nReal Caffe is ready. To use it (the toolkit, tests, your shell), run or add to ~/.bashrc:")
    for line in realcaffe.env_lines(prefix):
        click.echo(f"  {line}")
    if prefix != realcaffe.default_prefix().resolve():
        click.echo("(CAFFE_ROOT is needed: this is not the default prefix.)")
    else:
        click.echo("(The toolkit also finds this default prefix without them.)")
