"""tools/install_caffe: build real BVLC Caffe (CPU, or CUDA with --cuda) with pycaffe into a cache folder."""
import dataclasses
from pathlib import Path

import click

from convnet_transfer.training import caffe_build, caffe_cuda, realcaffe


@click.command(help=f"""Build real BVLC Caffe (master {realcaffe.CAFFE_COMMIT[:7]}, CPU only) with pycaffe for
this Python, into PREFIX (default {realcaffe.default_prefix()}, or $CONVNET_TRANSFER_CAFFE_PREFIX).

Reads: Caffe's source (fetched with `apt-get source` from Debian 11's archive, sha256-checked; or --source),
Debian's build packages (installed with apt-get when run as root, else the exact command is printed).
Writes: PREFIX/bin (caffe, convert_imageset, compute_image_mean, upgrade_net_proto_text, ...), PREFIX/lib,
PREFIX/python (pycaffe), PREFIX/build.log, PREFIX/BUILD_INFO.json; pip-installs pycaffe's Python needs (six,
scipy, scikit-image) into this Python. Nothing inside the repository. A second run is a quick no-op.
Prints the environment lines that make the toolkit (and your shell) use this Caffe.

--cuda builds for NVIDIA GPUs instead (no GPU needed to build): the CUDA {caffe_cuda.DEFAULT_CUDA} toolkit from
PyPI's wheels (about 590 MB, unpacked into PREFIX/cuda; its compiler removed after the build), SASS for sm_80 and
sm_90 plus compute_90 PTX, no cuDNN, into its own prefix
({realcaffe.builds_dir() / caffe_cuda.CudaSpec().prefix_name}); about 15 minutes on 2 cores.

--cuda --cudnn adds cuDNN {caffe_cuda.CUDNN_MAJOR} (Caffe's cuDNN layers ported to it; PyPI's
{' '.join(caffe_cuda.CudaSpec(cudnn=True).cudnn_wheels)}, about 370 MB more) into a prefix of its own ({caffe_cuda.CudaSpec(cudnn=True).prefix_name}). Compiled and linked here, not yet
run on a GPU.""")
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
@click.option("--cuda", is_flag=True, help="build for NVIDIA GPUs (CUDA, no cuDNN) into its own prefix")
@click.option("--cuda-version", type=click.Choice(sorted(caffe_cuda.CUDA_WHEELS)), default=caffe_cuda.DEFAULT_CUDA,
              show_default=True, help="with --cuda: the CUDA toolkit taken from PyPI's wheels")
@click.option("--cuda-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="with --cuda: an installed CUDA toolkit (11.8 or later, e.g. /usr/local/cuda-12.6) instead of "
                   "the wheels")
@click.option("--cuda-arch", default=",".join(caffe_cuda.DEFAULT_SASS), show_default=True,
              help="with --cuda: GPU architectures to compile machine code for (compute capability x10); the "
                   "highest also as PTX")
@click.option("--cudnn", is_flag=True, help="with --cuda: use cuDNN 9 from PyPI's wheel for convolution, pooling, "
                                            "LRN, ReLU, sigmoid, tanh and softmax (Caffe's cuDNN layers, ported; "
                                            "its own prefix, ...-cudnn9)")
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="with --cuda: build without OpenCV and pycaffe (its own prefix, ...-lean) and pack caffe, "
                   "convert_imageset, compute_image_mean and their libraries into this relocatable .tar.xz for GPU "
                   "machines without root or apt (docs/realcaffe.md)")
def main(prefix, source, jobs, force, no_install, keep_build, debian_mirror, quiet, cuda, cuda_version, cuda_root,
         cuda_arch, cudnn, bundle):
    spec = _cuda_spec(cuda, cuda_version, cuda_root, cuda_arch, cudnn)
    if bundle is not None and spec is None:
        raise click.UsageError("--bundle goes with --cuda")
    if bundle is not None:
        spec = dataclasses.replace(spec, lean=True)
    try:
        prefix = caffe_build.install_caffe(prefix, source=source, jobs=jobs, force=force,
                                           install_deps=not no_install, keep_build=keep_build,
                                           debian_mirror=debian_mirror, progress=not quiet, cuda=spec)
        if bundle is not None:
            from convnet_transfer.training import caffe_bundle
            caffe_bundle.make_bundle(prefix, bundle, lambda line: click.echo(f"install_caffe: {line}"))
    except caffe_build.InstallError as err:
        raise click.ClickException(str(err)) from None
    if bundle is not None:
        click.echo(f"\nThe bundle is {bundle}. On the GPU machine: tar xJf {bundle.name}; then "
                   f"{bundle.name.removesuffix('.tar.xz')}/bin/caffe-cuda-libs says which CUDA libraries its "
                   f"bin/caffe will use (docs/realcaffe.md).")
        return
    click.echo("\nReal Caffe is ready. To use it (the toolkit, tests, your shell), run or add to ~/.bashrc:")
    for line in realcaffe.env_lines(prefix):
        click.echo(f"  {line}")
    if spec is not None and spec.cudnn and prefix.parent == realcaffe.builds_dir().resolve():
        click.echo("(Without them the toolkit takes this cuDNN build on a machine with an NVIDIA driver, or when asked "
                   "for a GPU, only where no CUDA build without cuDNN is in the cache; the CPU build elsewhere.)")
    elif spec is not None and prefix.parent == realcaffe.builds_dir().resolve():
        click.echo("(Without them the toolkit takes this CUDA build on a machine with an NVIDIA driver, or when asked "
                   "for a GPU, and the CPU build elsewhere.)")
    elif prefix != realcaffe.default_prefix().resolve():
        click.echo("(CAFFE_ROOT is needed: this is not the default prefix.)")
    else:
        click.echo("(The toolkit also finds this default prefix without them.)")


def _cuda_spec(cuda, version, root, arch, cudnn):
    if not cuda:
        if root or cudnn or arch != ",".join(caffe_cuda.DEFAULT_SASS) or version != caffe_cuda.DEFAULT_CUDA:
            raise click.UsageError("--cuda-version, --cuda-root, --cuda-arch and --cudnn go with --cuda")
        return None
    archs = {a.strip().replace(".", "").removeprefix("sm_") for a in arch.split(",") if a.strip()}
    if not archs or not all(a.isdigit() and int(a) >= 50 for a in archs):
        raise click.UsageError(f"--cuda-arch {arch!r}: give compute capabilities x10, e.g. 80,90")
    archs = tuple(sorted(archs, key=int))
    return caffe_cuda.CudaSpec(version=version, sass=archs, ptx=archs[-1:], root=root, cudnn=cudnn)
