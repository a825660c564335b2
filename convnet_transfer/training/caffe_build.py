"""Build real BVLC Caffe, CPU only, with pycaffe into a prefix (`tools/install_caffe`): download, patch, build.

    install_caffe(prefix, ...)    build into `prefix` (a no-op when already built); the steps below
    is_built(prefix, python)      a finished build is there

The source built is BVLC Caffe's final master (commit 9b89154, 2020), taken from Debian's archive: Debian
packaged it as `caffe 1.0.0+git20180821.99bd997-8` (Debian 11 "bullseye"); that tarball's code is identical to
9b89154 (only a README line and a comment differ). It is fetched with `apt-get source` from the Debian mirror
the machine already uses, and checked against the sha256 below. A few small edits, made by script at build
time (FIXES), let it build against Debian 12's libraries and run with numpy 2. Finding the build at run time:
realcaffe.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .realcaffe import CAFFE_COMMIT, INFO_FILE, builds_dir, default_prefix, inspect_caffe

__all__ = ["DEBIAN_SOURCE", "APT_PACKAGES", "PYTHON_PACKAGES", "FIXES", "Fix", "InstallError", "install_caffe",
           "is_built", "apply_fixes", "cmake_command"]

DEBIAN_SOURCE = {
    "suite": "bullseye",
    "package": "caffe",
    "version": "1.0.0+git20180821.99bd997-8",
    "orig": "caffe_1.0.0+git20180821.99bd997.orig.tar.gz",
    "sha256": "e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c",
}
LOG_FILE = "build.log"
# Every prototxt of Caffe's source tree (models/, examples/), kept in the prefix: the schema and the engine are
# tested on them (tests/test_schema.py, tests/test_engine_caffe_nets.py)
SOURCE_PROTOTXTS = Path("share") / "caffe" / "source-prototxts"

# Debian 12 packages Caffe's CMake build needs (CPU only, with pycaffe, OpenCV, LMDB, LevelDB, HDF5, OpenBLAS).
APT_PACKAGES = [
    "build-essential", "cmake", "pkg-config", "dpkg-dev", "debian-archive-keyring",
    "libboost-system-dev", "libboost-thread-dev", "libboost-filesystem-dev", "libboost-python-dev",
    "libgoogle-glog-dev", "libgflags-dev", "libprotobuf-dev", "protobuf-compiler",
    "libhdf5-dev", "liblmdb-dev", "libleveldb-dev", "libsnappy-dev", "libopencv-dev", "libopenblas-dev",
]
# What `import caffe` imports besides numpy and protobuf (python/caffe/{io,pycaffe,net_spec}.py).
PYTHON_PACKAGES = {"six": "six", "scipy": "scipy", "skimage": "scikit-image"}


@dataclasses.dataclass(frozen=True)
class Fix:
    """One compatibility edit: in each of `files`, `pattern` (a regex) becomes `replacement`."""
    why: str
    files: tuple[str, ...]
    pattern: str
    replacement: str


FIXES = (
    Fix("protobuf >= 3.6: CodedInputStream::SetTotalBytesLimit takes one argument",
        ("src/caffe/util/io.cpp",), r"SetTotalBytesLimit\(\s*kProtoReadBytesLimit\s*,\s*\d+\s*\)",
        "SetTotalBytesLimit(kProtoReadBytesLimit)"),
    Fix("OpenCV 4: CV_LOAD_IMAGE_COLOR is cv::IMREAD_COLOR",
        ("src/caffe/util/io.cpp", "src/caffe/layers/window_data_layer.cpp", "src/caffe/test/test_io.cpp"),
        r"\bCV_LOAD_IMAGE_COLOR\b", "cv::IMREAD_COLOR"),
    Fix("OpenCV 4: CV_LOAD_IMAGE_GRAYSCALE is cv::IMREAD_GRAYSCALE",
        ("src/caffe/util/io.cpp", "src/caffe/test/test_io.cpp"),
        r"\bCV_LOAD_IMAGE_GRAYSCALE\b", "cv::IMREAD_GRAYSCALE"),
    Fix("Debian names Boost.Python for Python 3.11 `boost_python311`, not `boost_python-py311`",
        ("cmake/Dependencies.cmake",), r'COMPONENTS "python-py\$\{boost_py_version\}"',
        'COMPONENTS "python${boost_py_version}"'),
    Fix("numpy 2 removed ndarray.tostring(): tobytes() returns the same bytes",
        ("python/caffe/io.py",), r"\.tostring\(\)", ".tobytes()"),
    Fix("numpy 2 refuses np.fromstring on binary data: np.frombuffer reads the same bytes",
        ("python/caffe/io.py",), r"np\.fromstring\(datum\.data, dtype=np\.uint8\)",
        "np.frombuffer(datum.data, dtype=np.uint8).copy()"),
)


class InstallError(RuntimeError):
    """The build failed; the message names the step, and the log file to read."""



def _say(msg: str) -> None:
    print(f"install_caffe: {msg}", flush=True)


def _python_facts(python: str) -> dict:
    code = ("import json, sys, sysconfig, numpy, google.protobuf as p; v = sysconfig.get_config_var; "
            "print(json.dumps(dict(executable=sys.executable, version='%d.%d.%d' % sys.version_info[:3], "
            "tag='%d%d' % sys.version_info[:2], include=sysconfig.get_paths()['include'], libdir=v('LIBDIR'), "
            "ldlibrary=v('LDLIBRARY'), shared=bool(v('Py_ENABLE_SHARED')), numpy=numpy.__version__, "
            "numpy_include=numpy.get_include(), protobuf=p.__version__)))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"{python} cannot report its build facts (it needs numpy and protobuf installed):\n"
                           f"{proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout)


def missing_apt_packages() -> list[str]:
    missing = []
    for name in APT_PACKAGES:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            missing.append(name)
    return missing


def apt_command(packages: list[str]) -> str:
    return "sudo apt-get update && sudo apt-get install -y --no-install-recommends " + " ".join(packages)


def ensure_apt_packages(install: bool = True) -> None:
    if not shutil.which("dpkg-query"):
        raise InstallError("this is not a Debian/Ubuntu system (no dpkg-query); install Caffe's build "
                           "dependencies yourself (see APT_PACKAGES in convnet_transfer/training/caffe_build.py) and "
                           "pass --source with Caffe's source")
    missing = missing_apt_packages()
    if not missing:
        return
    if not install or os.geteuid() != 0:
        raise InstallError(f"missing Debian packages: {' '.join(missing)}. Install them with:\n  "
                           f"{apt_command(missing)}\nthen run tools/install_caffe again.")
    _say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed:\n{(proc.stdout + proc.stderr)[-1500:]}")


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (its main archive, not the security one)."""
    entries: list[tuple[str, str]] = []        # (type, uri)
    etc = Path("/etc/apt")
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] in ("deb", "deb-src"):
                    entries.append((line[0], line[1]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            for uri in fields.get("URIs", "").split():
                for kind in fields.get("Types", "deb").split():
                    entries.append((kind, uri))
    for _, uri in entries:
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    raise InstallError("found no Debian archive mirror in /etc/apt (sources.list, sources.list.d); pass "
                       "--debian-mirror URL (a Debian archive with the bullseye suite) or --source with "
                       f"Caffe's source ({DEBIAN_SOURCE['orig']}, or a BVLC Caffe checkout)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_source(dest: Path, mirror: str | None = None) -> Path:
    """Fetch Caffe's source tarball with `apt-get source --download-only` (Debian 11's `caffe` source
    package, signature-checked by apt) into `dest`; returns the checked .orig.tar.gz."""
    dest.mkdir(parents=True, exist_ok=True)
    tarball = dest / DEBIAN_SOURCE["orig"]
    if tarball.is_file() and _sha256(tarball) == DEBIAN_SOURCE["sha256"]:
        return tarball
    mirror = mirror or _debian_mirror()
    apt = dest / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                      f"{mirror} {DEBIAN_SOURCE['suite']} main\n")
    opts = [f"-o=Dir::Etc::SourceList={apt / 'sources.list'}", f"-o=Dir::Etc::SourceParts={apt / 'none'}",
            f"-o=Dir::State::Lists={apt / 'lists'}", f"-o=Dir::Cache={apt / 'cache'}",
            "-o=Debug::NoLocking=1", "-o=APT::Sandbox::User=root" if os.geteuid() == 0 else "-o=Quiet=1"]
    spec = f"{DEBIAN_SOURCE['package']}={DEBIAN_SOURCE['version']}"
    _say(f"downloading Caffe's source ({spec}, Debian {DEBIAN_SOURCE['suite']}) with apt-get source")
    for cmd in (["apt-get", *opts, "update"], ["apt-get", *opts, "source", "--download-only", spec]):
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed:\n{(proc.stdout + proc.stderr)[-1500:]}\n"
                               f"Without network access, pass --source PATH ({DEBIAN_SOURCE['orig']}).")
    shutil.rmtree(apt, ignore_errors=True)
    if not tarball.is_file():
        raise InstallError(f"apt-get source did not leave {tarball}")
    digest = _sha256(tarball)
    if digest != DEBIAN_SOURCE["sha256"]:
        raise InstallError(f"{tarball}: sha256 {digest} is not the expected {DEBIAN_SOURCE['sha256']}; "
                           f"delete it and run again")
    return tarball


def unpack_source(source: Path, dest: Path) -> Path:
    """Caffe's source tree from a tarball or a directory, copied into `dest` (never edited in place)."""
    if dest.exists():
        shutil.rmtree(dest)
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", "build"))
    else:
        with tarfile.open(source) as tar:
            tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    tops = [p for p in dest.iterdir()]
    if len(tops) == 1 and tops[0].is_dir() and not (dest / "CMakeLists.txt").exists():
        return tops[0]
    if not (dest / "CMakeLists.txt").is_file():
        raise InstallError(f"{source} does not look like Caffe's source (no CMakeLists.txt)")
    return dest


def apply_fixes(tree: Path, fixes: tuple[Fix, ...] = FIXES) -> list[str]:
    """Make the compatibility edits (FIXES, or `fixes`); each must match (else Caffe's source is not the
    expected one)."""
    done = []
    for fix in fixes:
        hits = 0
        for rel in fix.files:
            path = tree / rel
            if not path.is_file():
                continue
            text = path.read_text()
            new, n = re.subn(fix.pattern, fix.replacement, text)
            if n:
                path.write_text(new)
                hits += n
        if hits == 0:
            raise InstallError(f"compatibility fix not applicable ({fix.why}): {fix.pattern!r} matches nothing "
                               f"in {', '.join(fix.files)} under {tree}. Is this BVLC Caffe {CAFFE_COMMIT[:7]}?")
        done.append(f"{fix.why} ({hits} edit{'s' * (hits > 1)})")
    return done


def keep_source_prototxts(tree: Path, prefix: Path) -> int:
    """Copy every *.prototxt under the source tree's models/ and examples/ to prefix/SOURCE_PROTOTXTS (same
    relative paths); returns how many."""
    dest = prefix / SOURCE_PROTOTXTS
    shutil.rmtree(dest, ignore_errors=True)
    count = 0
    for top in ("models", "examples"):
        for path in sorted((tree / top).rglob("*.prototxt")):
            target = dest / path.relative_to(tree)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def _run_logged(cmd: list[str], cwd: Path, log, what: str, progress=None) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    for line in proc.stdout:
        log.write(line)
        if progress is not None:
            m = re.match(r"\[\s*(\d+)%\]", line)
            if m:
                progress(int(m.group(1)), line.split("]", 1)[1].strip())
    if proc.wait() != 0:
        log.flush()
        raise InstallError(f"{what} failed (exit {proc.returncode})")


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [i for i, line in enumerate(lines) if re.search(r"error[: ]|Error \d|CMake Error", line)]
    start = max(0, (errors[0] - 5) if errors else len(lines) - n)
    return "\n".join(lines[start:start + n])


def is_built(prefix: Path, python: str | None = None) -> bool:
    """True when `prefix` holds a finished install_caffe build (for this Python, when given)."""
    info_path = Path(prefix) / INFO_FILE
    if not info_path.is_file() or not (Path(prefix) / "bin" / "caffe").is_file():
        return False
    try:
        info = json.loads(info_path.read_text())
    except ValueError:
        return False
    if python is None:
        return True
    py = info.get("python", {})
    return Path(py.get("executable", "")).resolve() == Path(python).resolve() or \
        py.get("include") == _python_facts(python)["include"]


def install_caffe(prefix: Path | str | None = None, *, python: str | None = None, source: Path | None = None,
                  jobs: int | None = None, force: bool = False, install_deps: bool = True,
                  keep_build: bool = False, debian_mirror: str | None = None, progress: bool = True,
                  cuda=None) -> Path:
    """Build CPU-only BVLC Caffe with pycaffe for `python` into `prefix` (a no-op when already built).

    Steps: Debian build packages (apt-get when root, else the exact command to run), the source (apt-get
    source, or `source`: a tarball or directory), the compatibility FIXES, CMake + make -j, make install,
    pycaffe's Python needs (six, scipy, scikit-image) into `python`, checks. Writes <prefix>/build.log and,
    last, <prefix>/BUILD_INFO.json. Returns the prefix.

    cuda: a caffe_cuda.CudaSpec to build for NVIDIA GPUs instead (the toolkit from PyPI's wheels into
    <prefix>/cuda, or spec.root; CUDA_FIXES too; default prefix named after the CUDA version and archs); with
    spec.cudnn, cuDNN 9 from its wheel too (into <prefix>/cuda, or <prefix>/cudnn beside spec.root) and
    CUDNN_FIXES.
    """
    if cuda is not None and cuda.root is not None:
        from .caffe_cuda import toolkit_version
        cuda = dataclasses.replace(cuda, version=toolkit_version(cuda.root))
    default = default_prefix() if cuda is None else builds_dir() / cuda.prefix_name
    prefix = Path(prefix or default).expanduser().resolve()
    python = python or sys.executable
    if not force and is_built(prefix, python):
        _say(f"Caffe is already built in {prefix} (use --force to build again)")
        ensure_python_packages(python, install=install_deps)
        return prefix
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(f"another install_caffe is building in {prefix}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and is_built(prefix, python):
                _say(f"Caffe is built in {prefix}")
                return prefix
        return _build(prefix, python, source, jobs, install_deps, keep_build, debian_mirror, progress, cuda)


def cmake_command(tree: Path, prefix: Path, facts: dict, cuda_options: list[str] | None = None) -> list[str]:
    """The CMake command line: CPU only (CPU_ONLY=ON), or with `cuda_options` (caffe_cuda.cmake_options) in its
    place; OpenBLAS, pycaffe for the Python described by `facts` (_python_facts)."""
    cmake = ["cmake", str(tree), "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_INSTALL_PREFIX={prefix}",
             "-DCPU_ONLY=ON", "-DUSE_CUDNN=OFF", "-DUSE_NCCL=OFF", "-DBLAS=Open", "-DBUILD_docs=OFF",
             "-DBUILD_matlab=OFF", "-DBUILD_python=ON", "-DBUILD_python_layer=ON", "-Dpython_version=3",
             f"-DPYTHON_EXECUTABLE={facts['executable']}", f"-DPYTHON_INCLUDE_DIR={facts['include']}",
             f"-DNUMPY_INCLUDE_DIR={facts['numpy_include']}", "-Wno-dev"]
    if facts["shared"] and facts["libdir"] and facts["ldlibrary"]:
        cmake.append(f"-DPYTHON_LIBRARY={Path(facts['libdir']) / facts['ldlibrary']}")
    if cuda_options:
        cmake.remove("-DCPU_ONLY=ON")
        if "-DUSE_CUDNN=ON" in cuda_options:
            cmake.remove("-DUSE_CUDNN=OFF")
        cmake.extend(cuda_options)
    return cmake


def _build(prefix, python, source, jobs, install_deps, keep_build, debian_mirror, progress, cuda=None) -> Path:
    started = time.time()
    ensure_apt_packages(install=install_deps)
    facts = _python_facts(python)
    _say(f"building for Python {facts['version']} ({facts['executable']}), numpy {facts['numpy']}, "
         f"protobuf {facts['protobuf']}")
    (prefix / INFO_FILE).unlink(missing_ok=True)     # written again only when this build has succeeded
    work = prefix / ".build"
    work.mkdir(exist_ok=True)
    log_path = prefix / LOG_FILE
    cuda_info = None
    with open(log_path, "w", buffering=1) as log:   # line-buffered: the log is readable while building
        try:
            cuda_info = _cuda_toolkit(prefix, work, cuda, python) if cuda is not None else None
            tarball = Path(source).expanduser() if source else download_source(work / "download", debian_mirror)
            _say(f"unpacking {tarball}")
            tree = unpack_source(tarball, work / "src")
            for line in apply_fixes(tree) + (apply_fixes(tree, cuda.fixes) if cuda is not None else []):
                _say(f"  fixed: {line}")
                log.write(f"fix: {line}\n")
            _compile_install(tree, work, prefix, facts, jobs, log, log_path, progress, cuda_info)
        except InstallError as err:
            log.flush()
            raise InstallError(f"{err}. Last lines of {log_path}:\n{_tail(log_path)}\n\nRead the whole log: "
                               f"{log_path}") from None
    lean = cuda is not None and cuda.lean        # no pycaffe (a bundle's build)
    if not lean:
        ensure_python_packages(python, install=install_deps)
    proto = check_pycaffe_proto(prefix, python) if not lean else None
    found = inspect_caffe(prefix)
    if not found.ok:
        raise InstallError(f"the build finished but caffe does not run: {found.problem}")
    if not lean:
        check_pycaffe(prefix, python)
    info = {"commit": CAFFE_COMMIT, "source": dict(DEBIAN_SOURCE) if not source else {"path": str(source)},
            "fixes": [f.why for f in FIXES], "python": facts, "caffe_pb2": proto, "version": found.version,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started)}
    if cuda is not None:
        from . import caffe_cuda
        info["fixes"] += [f.why for f in cuda.fixes]
        info["cuda"] = caffe_cuda.check_build(prefix, cuda, cuda_info, _say)
    (prefix / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if not keep_build:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"done in {time.time() - started:.0f} s: {found.version}, {'no pycaffe' if lean else 'pycaffe imports'}")
    return prefix


def _cuda_toolkit(prefix: Path, work: Path, cuda, python: str) -> dict:
    """The CUDA toolkit to build with: cuda.root, else PyPI's wheels unpacked into <prefix>/cuda."""
    from . import caffe_cuda
    cudnn_pins = dict(pin.split("==") for pin in cuda.cudnn_wheels) if cuda.cudnn else {}   # InstallError: none
    if cuda.root is not None:
        toolkit = {"spec": cuda, "root": str(Path(cuda.root).resolve()), "from": "an installed toolkit",
                   "download_bytes": 0}
        if cuda.cudnn:          # cuDNN from its wheel beside the installed toolkit
            cudnn_root = prefix / caffe_cuda.CUDNN_DIR
            toolkit["download_bytes"] = caffe_cuda.fetch_cudnn(cudnn_root, work / "wheels", cuda, python, _say)
            toolkit.update(cudnn_root=str(cudnn_root), wheels=cudnn_pins)
    else:
        root = prefix / caffe_cuda.CUDA_DIR
        size = caffe_cuda.fetch_toolkit(root, work / "wheels", cuda, python, _say)
        _say(f"CUDA {caffe_cuda.toolkit_version(root)} toolkit unpacked into {root} ({size / 1e6:.0f} MB of wheels)")
        toolkit = {"spec": cuda, "root": str(root), "from": "PyPI wheels",
                   "wheels": {**caffe_cuda.CUDA_WHEELS[cuda.version], **cudnn_pins}, "download_bytes": size}
    if cuda.cudnn:
        toolkit.setdefault("cudnn_root", toolkit["root"])
        toolkit["cudnn"] = caffe_cuda.cudnn_version(Path(toolkit["cudnn_root"]) / "include")
        _say(f"cuDNN {toolkit['cudnn']} from {', '.join(f'{k}=={v}' for k, v in cudnn_pins.items())} in "
             f"{toolkit['cudnn_root']}")
    return toolkit


def _compile_install(tree, work, prefix, facts, jobs, log, log_path, progress, cuda_info) -> None:
    """CMake, make -j, make install, and the extras install_caffe keeps in the prefix."""
    build = work / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    if cuda_info is None:
        cmake = cmake_command(tree, prefix, facts)
        _say("configuring with CMake (CPU_ONLY, OpenBLAS, pycaffe)")
    else:
        from . import caffe_cuda
        spec = cuda_info["spec"]
        cmake = cmake_command(tree, prefix, facts, caffe_cuda.cmake_options(
            spec, Path(cuda_info["root"]), cuda_info.get("cudnn_root") and Path(cuda_info["cudnn_root"])))
        cudnn = f"cuDNN {cuda_info['cudnn']}" if spec.cudnn else "no cuDNN"
        _say(f"configuring with CMake (CUDA {spec.version}, sm_{' sm_'.join(spec.sass)} + PTX "
             f"compute_{' compute_'.join(spec.ptx)}, {cudnn}, OpenBLAS, "
             f"{'no OpenCV, no pycaffe' if spec.lean else 'pycaffe'})")
    _run_logged(cmake, build, log, "CMake configuration")
    jobs = jobs or os.cpu_count() or 1
    minutes = "a few minutes" if cuda_info is None else "about 15 minutes on 2 cores"
    _say(f"compiling with make -j{jobs} ({minutes}; log: {log_path})")
    _run_logged(["make", f"-j{jobs}"], build, log, "compilation (make)", _progress_bar(progress))
    _say("installing into the prefix")
    _run_logged(["make", "install"], build, log, "make install")
    # the schema beside pycaffe's generated code: to read, and to regenerate caffe_pb2.py from
    if (prefix / "python" / "caffe" / "proto").is_dir():
        shutil.copy2(tree / "src" / "caffe" / "proto" / "caffe.proto", prefix / "python" / "caffe" / "proto")
    # Caffe's own log parser (tools/extra), which `make install` leaves out: tests read our logs with it
    (prefix / "tools" / "extra").mkdir(parents=True, exist_ok=True)
    for name in ("parse_log.py", "extract_seconds.py"):
        shutil.copy2(tree / "tools" / "extra" / name, prefix / "tools" / "extra" / name)
    keep_source_prototxts(tree, prefix)


def _progress_bar(enabled: bool):
    """make's "[ NN%]" lines -> a tqdm bar on a terminal, or a line every 10% in a log (CI)."""
    if not enabled:
        return None
    state = {"last": 0}
    if not sys.stdout.isatty():
        def update(percent: int, what: str) -> None:
            if percent // 10 > state["last"] // 10:
                _say(f"  make {percent:3d}%  {what}")
            state["last"] = max(state["last"], percent)
        return update
    from tqdm import tqdm
    bar = tqdm(total=100, unit="%", desc="make", file=sys.stdout,
               bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}")

    def update(percent: int, what: str) -> None:
        if percent > state["last"]:
            bar.set_postfix_str(re.sub(r".*/", "", what)[-40:], refresh=False)
            bar.update(percent - state["last"])
            state["last"] = percent
        if percent >= 100:
            bar.close()
    return update


def ensure_python_packages(python: str, install: bool = True) -> None:
    """pycaffe's own imports (six, scipy, scikit-image) in `python`: pip-installed when missing."""
    code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None))")
    proc = subprocess.run([python, "-c", code, *PYTHON_PACKAGES], capture_output=True, text=True)
    missing = [PYTHON_PACKAGES[m] for m in proc.stdout.split()]
    if not missing:
        return
    command = [python, "-m", "pip", "install", "-q", *missing]
    if not install:
        raise InstallError(f"pycaffe needs {' '.join(missing)}: {' '.join(command)}")
    _say(f"installing pycaffe's Python needs into {python}: {' '.join(missing)}")
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"`{' '.join(command)}` failed:\n{(proc.stdout + proc.stderr)[-1500:]}")


def check_pycaffe_proto(prefix: Path, python: str) -> str:
    """pycaffe's caffe_pb2.py (made by Debian's protoc 3.21) must load in `python`'s protobuf runtime;
    when the runtime refuses that old generated code, regenerate it with grpc_tools' newer protoc."""
    proto_dir = prefix / "python" / "caffe" / "proto"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import caffe_pb2; "
            "from google.protobuf import text_format; "
            "s = text_format.Parse('base_lr: 0.01 solver_mode: CPU', caffe_pb2.SolverParameter()); "
            "assert s.solver_mode == caffe_pb2.SolverParameter.CPU")
    if subprocess.run([python, "-c", code, str(proto_dir)], capture_output=True).returncode == 0:
        return "protoc " + subprocess.run(["protoc", "--version"], capture_output=True, text=True).stdout.strip()
    spec = proto_dir / "caffe.proto"
    _say("pycaffe's caffe_pb2.py does not load with this protobuf; regenerating it with grpc_tools.protoc")
    if not spec.is_file():
        raise InstallError(f"cannot regenerate {proto_dir}/caffe_pb2.py: caffe.proto not found in {prefix}")
    gen = subprocess.run([python, "-m", "grpc_tools.protoc", f"--proto_path={spec.parent}",
                          f"--python_out={proto_dir}", str(spec)], capture_output=True, text=True)
    if gen.returncode != 0:
        raise InstallError(f"regenerating caffe_pb2.py needs grpcio-tools in {python} "
                           f"(`{python} -m pip install grpcio-tools`):\n{gen.stderr[-800:]}")
    check = subprocess.run([python, "-c", code, str(proto_dir)], capture_output=True, text=True)
    if check.returncode != 0:
        raise InstallError(f"{proto_dir}/caffe_pb2.py still does not load:\n{check.stderr[-800:]}")
    return "grpc_tools.protoc"


def check_pycaffe(prefix: Path, python: str) -> None:
    """`import caffe` from the prefix in a fresh `python`, next to our own caffe_pb2."""
    code = ("import os, sys; os.environ['GLOG_minloglevel'] = '2'; sys.path.insert(0, sys.argv[1]); "
            "import caffe; from caffe.proto import caffe_pb2; caffe.set_mode_cpu(); "
            "d = caffe.io.array_to_datum(__import__('numpy').zeros((1, 2, 2), 'uint8'), 3); "
            "assert caffe.io.datum_to_array(d).shape == (1, 2, 2); print(caffe.__file__)")
    proc = subprocess.run([python, "-c", code, str(prefix / "python")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"`import caffe` fails with {python}:\n{(proc.stdout + proc.stderr)[-1500:]}")
