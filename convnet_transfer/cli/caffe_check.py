"""tools/caffe_check: which real Caffe the toolkit finds, and whether pycaffe imports."""
import subprocess
import sys

import click

from convnet_transfer.training import realcaffe


@click.command(help="""Say which real Caffe the toolkit finds ($CAFFE_ROOT, $CAFFE, `caffe` on PATH, or the
default prefix of tools/install_caffe), its version and commit, whether pycaffe imports in this Python (with
the numpy and protobuf versions), and which engine `auto` picks. Reads nothing else, writes nothing.
Exit status 1 when no working Caffe is found.""")
@click.option("--no-python", is_flag=True, help="skip the pycaffe import check")
def main(no_python):
    found = realcaffe.find_caffe()
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
    if info:
        click.echo(f"built:   {info.get('built')} for Python {info.get('python', {}).get('version')} "
                   f"({info.get('python', {}).get('executable')})")
    click.echo("tools:   " + ", ".join(t for t in realcaffe.TOOLS if _has(found, t)))
    if not no_python:
        # In a child process: a broken _caffe.so may crash the interpreter, not just raise.
        code = ("import sys, numpy, google.protobuf as p; from convnet_transfer.training import realcaffe; "
                "c = realcaffe.find_caffe().import_pycaffe(); from caffe.proto import caffe_pb2; "
                "from convnet_transfer.formats import caffe_pb2 as ours; "
                "print(f'{c.__file__} (numpy {numpy.__version__}, protobuf {p.__version__}, '"
                "f'with our convnet_transfer.formats.caffe_pb2 in the same process)')")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode == 0:
            click.echo(f"pycaffe: imports: {proc.stdout.strip()}")
        else:
            click.echo(f"pycaffe: does NOT import in {sys.executable}:\n{(proc.stderr or proc.stdout)[-1500:]}")
            sys.exit(1)
    click.echo(f"engine 'auto' runs: {' '.join(realcaffe.caffe_command('auto'))}")


def _has(found, tool):
    try:
        found.tool(tool)
        return True
    except FileNotFoundError:
        return False
