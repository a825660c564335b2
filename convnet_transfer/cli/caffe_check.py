"""tools/caffe_check: which real Caffe the toolkit finds, whether pycaffe imports, and its CUDA build."""
import subprocess
import sys

import click

from convnet_transfer.training import caffe_cuda, realcaffe


@click.command(help="""Say which real Caffe the toolkit finds ($CAFFE_ROOT, $CAFFE, `caffe` on PATH, or the
default prefix of tools/install_caffe), its version and commit, whether pycaffe imports in this Python (with
the numpy and protobuf versions), and which engine `auto` picks. For a CUDA build (tools/install_caffe --cuda):
its CUDA version, the GPU code it carries (SASS and PTX archs), cuDNN (its version) or not, the CUDA libraries it
loads, the NVIDIA driver (its version and the newest CUDA it serves) and what `caffe device_query` sees (the GPU, or in one line why there is none). Reads nothing else, writes
nothing.
Exit status 1 when no working Caffe is found.""")
@click.option("--no-python", is_flag=True, help="skip the pycaffe import check")
@click.option("--gpu", "gpu", type=int, default=None,
              help="look for the CUDA build first (as `--engine caffe` with GPUs does) and query this GPU id")
def main(no_python, gpu):
    prefer_gpu = True if gpu is not None else None   # find_caffe: True, the CUDA build first; None, as the driver says
    found = realcaffe.find_caffe(prefer_gpu)
    if found is None:
        click.echo("caffe_check: no real Caffe found (looked at $CAFFE_ROOT, $CAFFE, PATH, "
                   f"{realcaffe.default_prefix()}). Build one with tools/install_caffe.")
        click.echo(f"engine 'auto' runs: {' '.join(realcaffe.caffe_command('auto'))}")
        sys.exit(1)
    click.echo(f"Caffe:   {found.caffe}")
    click.echo(f"root:    {found.root} (found through {found.how})")
    if not found.ok:
        click.echo(f"problem: {found.problem}")
        click.echo("Rebuild with tools/install_caffe --force, or fix the environment lines.")
        sys.exit(1)
    info = found.info
    commit = info.get("commit", "unknown (not built by tools/install_caffe)")
    source = info.get("source", {})
    origin = (f" (BVLC master's code; source: Debian {source['package']} {source['version']})"
              if "version" in source else f" (source: {source['path']})" if "path" in source else "")
    click.echo(f"version: {found.version}; commit {commit}{origin}")
    if "built" in info:
        click.echo(f"built:   {info.get('built')} for Python {info.get('python', {}).get('version')} "
                   f"({info.get('python', {}).get('executable')})")
    click.echo("tools:   " + ", ".join(t for t in realcaffe.TOOLS if _has(found, t)))
    _report_cuda(found, gpu or 0)
    if not no_python:
        # In a child process: a broken _caffe.so may crash the interpreter, not just raise.
        code = ("import sys, numpy, google.protobuf as p; from convnet_transfer.training import realcaffe; "
                "c = realcaffe.find_caffe(sys.argv[1] == 'gpu' or None).import_pycaffe(); "
                "from caffe.proto import caffe_pb2; "
                "from convnet_transfer.formats import caffe_pb2 as ours; "
                "print(f'{c.__file__} (numpy {numpy.__version__}, protobuf {p.__version__}, '"
                "f'with our convnet_transfer.formats.caffe_pb2 in the same process)')")
        proc = subprocess.run([sys.executable, "-c", code, "gpu" if prefer_gpu else "auto"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            click.echo(f"pycaffe: imports: {proc.stdout.strip()}")
        else:
            click.echo(f"pycaffe: does NOT import in {sys.executable}:\n{(proc.stderr or proc.stdout)[-1500:]}")
            sys.exit(1)
    click.echo(f"engine 'auto'{' with a GPU' if prefer_gpu else ''} runs: "
               f"{' '.join(realcaffe.caffe_command('auto', prefer_gpu))}")


def _report_cuda(found, gpu):
    """The CUDA lines: the build's GPU code and libraries, and the device it sees; for a CPU build, the CUDA
    builds in the cache."""
    cuda = dict(found.cuda)
    binary, env = _binary_and_env(found)
    libs = cuda.get("libraries") or caffe_cuda.linked_libraries(binary, env)
    if not cuda and not any(name.startswith("libcudart") for name in libs):
        others = realcaffe.cuda_prefixes()
        click.echo("CUDA:    none (a CPU-only build)" + (f"; CUDA builds in the cache: {', '.join(map(str, others))}"
                                                        f" (taken when a GPU is asked for)" if others else
                                                        "; build one with tools/install_caffe --cuda"))
        return
    if not cuda.get("sass"):
        cuobjdump = caffe_cuda.cuobjdump_path(found.root)
        library = next(iter(sorted((found.root / "lib").glob("libcaffe.so.*"))), None)
        if cuobjdump and library:
            cuda.update(caffe_cuda.gpu_code(library, cuobjdump))
    code = " ".join(cuda.get("sass", []) + cuda.get("ptx", [])) or "unknown (no cuobjdump here)"
    cudnn = cuda.get("cudnn")       # its version ("9.19.0") in a --cudnn build, False without
    cudnn = (f"cuDNN {cudnn}" if isinstance(cudnn, str) else
             {True: "with cuDNN", False: "no cuDNN"}.get(cudnn, "cuDNN unknown"))
    toolkit = "this machine's (a bundle)" if found.bundle else cuda.get("toolkit", "not built by tools/install_caffe")
    click.echo(f"CUDA:    {cuda.get('version', 'build')}; GPU code {code}; {cudnn}; toolkit: {toolkit}")
    live = caffe_cuda.linked_libraries(binary, env)
    click.echo("  libs:  " + ", ".join(f"{k} => {v}" for k, v in sorted(live.items())))
    click.echo(f"driver:  {realcaffe.gpu_driver() or 'none (no NVIDIA driver loaded on this machine)'}")
    query = realcaffe.device_query(found, gpu)
    click.echo(f"device:  {query.message}")


def _binary_and_env(found):
    """The ELF binary of `caffe` and the environment it runs in: a bundle's bin/caffe is a script that runs
    libexec/caffe with the CUDA libraries its bin/caffe-cuda-libs finds on this machine."""
    env = found.env()
    if not found.bundle:
        return found.caffe, env
    where = subprocess.run([str(found.root / "bin" / "caffe-cuda-libs"), "--dir"], env=env, capture_output=True,
                           text=True).stdout.strip()
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [env.get("LD_LIBRARY_PATH"), where]))
    return found.root / "libexec" / "caffe", env


def _has(found, tool):
    try:
        found.tool(tool)
        return True
    except FileNotFoundError:
        return False
