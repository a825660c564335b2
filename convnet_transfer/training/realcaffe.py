"""Real BVLC Caffe at run time: find a build, run its binaries and pycaffe (building one: caffe_build).

The toolkit runs every stage either with real Caffe or with its own engine (`caffe_torch`); both read and
write the same files. This module answers "which one, and how do I call it":

    find_caffe() -> CaffeInstall | None     where is Caffe (CAFFE_ROOT, CAFFE, PATH, default prefix)
    caffe_command(engine="auto")            argv prefix of `caffe` (real when found) or of our engine
    resolve_engine(engine="auto")           that argv prefix and the CaffeInstall it runs (None: our engine)
    env_lines(prefix)                       the shell lines that make a build the one used
    default_prefix()                        where tools/install_caffe builds (caffe_build.install_caffe)
    cuda_prefixes()                         the CUDA builds of `tools/install_caffe --cuda` in the cache
    device_query(found, gpu)                `caffe device_query -gpu N` in one line: the GPU, or why there is none
    query_devices(argv, gpus, env)          "" when a `caffe` command answers device_query for every GPU id, else why
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from convnet_transfer import resources

__all__ = [
    "CAFFE_COMMIT", "PREFIX_ENV", "INFO_FILE", "BUNDLE_INFO_FILE", "TOOLS", "CaffeInstall", "CaffeNotFound",
    "find_caffe", "inspect_caffe", "caffe_command", "resolve_engine", "env_lines", "default_prefix", "cache_dir",
    "builds_dir", "cuda_prefixes", "gpu_driver_present", "gpu_driver", "driver_version", "device_query",
    "query_devices", "DeviceQuery",
]

# BVLC Caffe's final master (2020), the one tools/install_caffe builds; the default prefix is named after it.
CAFFE_COMMIT = "9b891540183ddc834a02b2bd81b31afae71b2153"
PREFIX_ENV = "CONVNET_TRANSFER_CAFFE_PREFIX"
INFO_FILE = "BUILD_INFO.json"            # written last by tools/install_caffe into its prefix
BUNDLE_INFO_FILE = "BUNDLE_INFO.json"    # what a relocatable bundle (caffe_bundle) says of itself

# Tools Caffe's CMake installs into <prefix>/bin.
TOOLS = ("caffe", "convert_imageset", "compute_image_mean", "upgrade_net_proto_text",
         "upgrade_net_proto_binary", "upgrade_solver_proto_text", "extract_features")


class CaffeNotFound(RuntimeError):
    """Real Caffe was asked for and there is none (the message says how to build one)."""


def default_prefix() -> Path:
    """Where `tools/install_caffe` builds by default: $CONVNET_TRANSFER_CAFFE_PREFIX or the user's cache."""
    if os.environ.get(PREFIX_ENV):
        return Path(os.environ[PREFIX_ENV]).expanduser()
    return cache_dir() / f"caffe-{CAFFE_COMMIT[:7]}"


def cache_dir() -> Path:
    """The user's cache folder of the toolkit ($XDG_CACHE_HOME or ~/.cache, then convnet_transfer)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convnet_transfer"


def builds_dir() -> Path:
    """Where the CUDA builds of `tools/install_caffe --cuda` go: beside the default prefix (its folder)."""
    return default_prefix().expanduser().parent


def cuda_prefixes() -> list[Path]:
    """The finished CUDA builds of `tools/install_caffe --cuda` in builds_dir() (caffe-9b89154-cuda<version>-sm<..>),
    newest CUDA first, and of one CUDA version the build without cuDNN before the --cudnn one (-cudnn9: not yet
    run on a GPU; CAFFE_ROOT picks it); not the lean ones that bundles are packed from (no OpenCV, no pycaffe)."""
    built = [p for p in builds_dir().glob(f"caffe-{CAFFE_COMMIT[:7]}-cuda*")
             if (p / INFO_FILE).is_file() and _binary_in(p) and not p.name.endswith("-lean")]
    return sorted(built, key=lambda p: [int(x) for x in re.findall(r"\d+", p.name.split("-cuda", 1)[1])[:2]]
                  + [int("-cudnn" not in p.name)], reverse=True)


def gpu_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (/proc/driver/nvidia, /dev/nvidia0)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def gpu_driver() -> str:
    """The NVIDIA driver this machine runs, in one line ("NVIDIA driver 580.95.05, supports CUDA up to 13.0"), or
    "" where there is none: the kernel module's version (/proc/driver/nvidia/version) and the newest CUDA its
    libcuda.so.1 serves (cuDriverGetVersion; a CUDA build newer than that fails with "CUDA driver version is
    insufficient")."""
    try:
        version = driver_version(Path("/proc/driver/nvidia/version").read_text())
    except OSError:
        version = ""
    cuda = ""
    try:
        import ctypes
        number = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(number)) == 0:
            cuda = f"{number.value // 1000}.{number.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    if not (version or cuda):
        return ""
    return f"NVIDIA driver {version or '(version unknown)'}" + (f", supports CUDA up to {cuda}" if cuda else "")


def driver_version(text: str) -> str:
    """The version in /proc/driver/nvidia/version's first line ("NVRM version: NVIDIA UNIX x86_64 Kernel Module
    550.54.15 ...", or "... Open Kernel Module for x86_64  580.95.05 ..."), "" when it has none."""
    found = re.search(r"Kernel Module\b.*?\s(\d+\.\d+(?:\.\d+)?)\s", (text.splitlines() or [""])[0] + " ")
    return found.group(1) if found else ""


@dataclasses.dataclass
class CaffeInstall:
    """A Caffe build: an install prefix (bin/, lib/, python/) or a source tree built with make/CMake."""
    root: Path
    caffe: Path
    how: str                     # how it was found: "CAFFE_ROOT", "CAFFE", "PATH", "default prefix"
    python_dir: Path | None
    ok: bool = False
    problem: str = ""
    version: str = ""            # `caffe --version`, e.g. "caffe version 1.0.0"
    info: dict = dataclasses.field(default_factory=dict)   # BUILD_INFO.json of an install_caffe build

    def tool(self, name: str) -> Path:
        """Path of one of Caffe's tools (convert_imageset, compute_image_mean, upgrade_net_proto_text, ...)."""
        for d in (self.caffe.parent, self.root / "bin", self.root / "build" / "tools", self.root / "tools"):
            for candidate in (d / name, d / f"{name}.bin"):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return candidate
        raise FileNotFoundError(f"Caffe tool {name!r} not found beside {self.caffe} (Caffe at {self.root})")

    def env(self, base: dict | None = None) -> dict:
        """Environment to run Caffe's binaries: its lib/ on LD_LIBRARY_PATH, pycaffe on PYTHONPATH (Python
        layers), and glog to stderr only (otherwise each run also leaves log files in /tmp)."""
        env = dict(os.environ if base is None else base)
        libs = [str(d) for d in (self.root / "lib", self.root / "build" / "lib") if d.is_dir()]
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        if self.python_dir:
            env["PYTHONPATH"] = os.pathsep.join([str(self.python_dir)] + [p for p in [env.get("PYTHONPATH")] if p])
        env.setdefault("GLOG_logtostderr", "1")
        return env

    def run(self, tool: str, *args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run one of Caffe's tools with `env()`; output captured as text unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run([str(self.tool(tool)), *map(str, args)], env=self.env(), **kwargs)
        if check and proc.returncode != 0:
            tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).splitlines()[-20:])
            raise RuntimeError(f"{tool} {' '.join(map(str, args))} failed (exit {proc.returncode}):\n{tail}")
        return proc

    def import_pycaffe(self):
        """Import pycaffe (the `caffe` module) from this build; glog quiet (GLOG_minloglevel=2) unless set."""
        if not self.python_dir:
            raise CaffeNotFound(f"Caffe at {self.root} has no python/ folder: it was built without pycaffe")
        path = str(self.python_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
        # glog reads GLOG_* when _caffe.so loads; set it for the import only, so that Caffe binaries run
        # later from this process still log (their logs are what the toolkit parses).
        saved = os.environ.get("GLOG_minloglevel")
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            import caffe  # noqa: PLC0415 (the point of this function)
        finally:
            if saved is None:
                os.environ.pop("GLOG_minloglevel", None)
        where = Path(caffe.__file__).resolve()
        if self.python_dir.resolve() not in where.parents:
            raise CaffeNotFound(f"`import caffe` found {where}, not the pycaffe of {self.root}; "
                                f"remove the other one from PYTHONPATH/sys.path")
        return caffe

    @property
    def cuda(self) -> dict:
        """What BUILD_INFO.json says of a CUDA build (version, sass, ptx, cudnn, libraries); {} for a CPU build."""
        return self.info.get("cuda") or {}

    @property
    def bundle(self) -> bool:
        """Whether this is a relocatable bundle (caffe_bundle): bin/caffe is a script running libexec/caffe with
        the machine's CUDA libraries."""
        return (self.root / BUNDLE_INFO_FILE).is_file()

    def describe(self) -> str:
        commit = self.info.get("commit", "")
        return (f"{self.caffe} ({self.version or 'version unknown'}"
                f"{', commit ' + commit[:7] if commit else ''}; found through {self.how})")


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _root_of(binary: Path) -> Path:
    """Install prefix of a caffe binary: <root>/bin/caffe, <root>/build/tools/caffe[.bin]."""
    d = binary.parent
    if d.name == "tools" and d.parent.name == "build":
        return d.parent.parent
    return d.parent


def _python_dir(root: Path) -> Path | None:
    for d in (root / "python", root / "build" / "install" / "python"):
        if (d / "caffe" / "__init__.py").is_file():
            return d
    return None


def _binary_in(root: Path) -> Path | None:
    for candidate in (root / "bin" / "caffe", root / "build" / "tools" / "caffe",
                      root / "build" / "tools" / "caffe.bin", root / "build" / "install" / "bin" / "caffe"):
        if candidate.is_file():
            return candidate
    return None


def inspect_caffe(root: Path, binary: Path | None = None, how: str = "prefix") -> CaffeInstall:
    """The build at `root` (its `binary`, else the one found under it), `.ok` when `caffe --version` runs."""
    root = root.resolve()
    binary = binary or _binary_in(root)
    found = CaffeInstall(root=root, caffe=binary or root / "bin" / "caffe", how=how, python_dir=_python_dir(root))
    for info_path in (root / INFO_FILE, root / BUNDLE_INFO_FILE):
        if info_path.is_file():
            try:
                found.info = json.loads(info_path.read_text())
            except ValueError:
                pass
            break
    if binary is None:
        found.problem = f"no caffe binary under {root} (looked in bin/ and build/tools/)"
        return found
    if not os.access(binary, os.X_OK):
        found.problem = f"{binary} is not executable"
        return found
    found.version, found.problem = _probe(str(binary), binary.stat().st_mtime_ns,
                                          tuple(sorted(found.env().items())))
    found.ok = not found.problem
    return found


@functools.lru_cache(maxsize=16)
def _probe(binary: str, mtime_ns: int, env: tuple) -> tuple[str, str]:
    """(version, problem) of `binary --version`; cached per binary, file version and environment."""
    try:
        proc = subprocess.run([binary, "--version"], env=dict(env), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return "", f"{binary} does not run: {err}"
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or "caffe version" not in out.lower():
        return "", f"{binary} --version failed (exit {proc.returncode}): {out[-500:]}"
    return next(line.strip() for line in out.splitlines() if "caffe version" in line.lower()), ""


def find_caffe(gpu: bool | None = None) -> CaffeInstall | None:
    """The real Caffe this machine has, or None.

    Looked for in order: $CAFFE_ROOT (an install prefix or a built source tree), $CAFFE (the `caffe` binary,
    as train.sh uses it; ignored when it names our own engine or another script), `caffe` on PATH, and
    the default prefixes of tools/install_caffe: a CUDA build (cuda_prefixes()) first when `gpu` is True, or
    None and this machine has an NVIDIA driver; else the CPU build (then a CUDA build, when it is the only one).
    The first one found is returned, `.ok` False with `.problem` saying why when it does not run.
    """
    if os.environ.get("CAFFE_ROOT"):
        root = Path(os.environ["CAFFE_ROOT"]).expanduser()
        return inspect_caffe(root, None, "CAFFE_ROOT")
    if os.environ.get("CAFFE"):
        named = os.environ["CAFFE"]
        path = Path(named).expanduser() if os.sep in named else Path(shutil.which(named) or named)
        if path.is_file() and _is_elf(path.resolve()):
            return inspect_caffe(_root_of(path.resolve()), path.resolve(), "CAFFE")
    on_path = shutil.which("caffe")
    if on_path and _is_elf(Path(on_path).resolve()):
        binary = Path(on_path).resolve()
        return inspect_caffe(_root_of(binary), binary, "PATH")
    prefixes = [default_prefix(), *cuda_prefixes()]
    if gpu or (gpu is None and gpu_driver_present()):
        prefixes = prefixes[1:] + prefixes[:1]
    for prefix in prefixes:
        if _binary_in(prefix):
            return inspect_caffe(prefix, None, "default prefix")
    return None


def caffe_command(engine: str = "auto", gpu: bool | None = None) -> list[str]:
    """The argv prefix that runs `caffe` (train/test/time ...): see resolve_engine."""
    return resolve_engine(engine, gpu)[0]


def resolve_engine(engine: str = "auto", gpu: bool | None = None) -> tuple[list[str], CaffeInstall | None]:
    """(the argv prefix that runs `caffe`, the real Caffe it runs or None): engine "caffe" (real Caffe; raises
    CaffeNotFound when there is none), "torch" (our engine, caffe_torch) or "auto" (real Caffe when
    find_caffe(gpu) finds a working one, else our engine). Run real Caffe with its `.env()`."""
    if engine not in ("auto", "caffe", "torch"):
        raise ValueError(f"engine must be 'auto', 'caffe' or 'torch', not {engine!r}")
    if engine in ("auto", "caffe"):
        found = find_caffe(gpu)
        if found is not None and found.ok:
            return [str(found.caffe)], found
        if engine == "caffe":
            why = "no Caffe build found" if found is None else found.problem
            raise CaffeNotFound(f"real Caffe was asked for but {why}; build it with tools/install_caffe and "
                                f"set the environment lines it prints (or choose engine 'torch')")
        if found is not None:   # a Caffe was named (CAFFE_ROOT, ...) but does not run: say so, then go on
            warnings.warn(f"real Caffe at {found.root} (found through {found.how}) does not run: {found.problem}; "
                          f"using our engine caffe_torch instead", RuntimeWarning, stacklevel=3)
    return _torch_command(), None


def _torch_command() -> list[str]:
    tool = resources.REPO_ROOT / "tools" / "caffe_torch"
    if tool.is_file():
        return [sys.executable, str(tool)]
    script = shutil.which("caffe_torch")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from convnet_transfer.cli.caffe_torch import main; "
                                  "sys.argv[0] = 'caffe_torch'; main()"]


def env_lines(prefix: Path) -> list[str]:
    """The shell lines that make a build at `prefix` the one the toolkit (and a shell) uses."""
    from convnet_transfer.nets.netgen import shell_word
    prefix = Path(prefix)
    return [f"export CAFFE_ROOT={shell_word(prefix)}",
            f"export PATH={shell_word(prefix / 'bin')}:$PATH "
            f"PYTHONPATH={shell_word(prefix / 'python')}${{PYTHONPATH:+:$PYTHONPATH}}"]


@dataclasses.dataclass
class DeviceQuery:
    """`caffe device_query -gpu N`: ok (the GPU answered), message (one line: the device, or why none),
    output (Caffe's whole output, glog's abort trace included)."""
    ok: bool
    message: str
    output: str


def device_query(found: CaffeInstall, gpu: int = 0, timeout: float = 120) -> DeviceQuery:
    """Run `caffe device_query -gpu <gpu>` and say in one line what it found. Caffe itself aborts with glog's
    stack trace when there is no usable GPU (CUDA_CHECK in Caffe::SetDevice); that becomes one line here: the
    CUDA error it checked (e.g. "CUDA driver version is insufficient for CUDA runtime version": no NVIDIA
    driver), or "CPU-only build"."""
    return _device_query([str(found.caffe)], found.env(), gpu, timeout)


def query_devices(caffe: list[str], gpus: list[str], env: dict | None = None) -> str:
    """"" when `caffe` (an argv prefix, run with `env`) answers `device_query` for each of the GPU ids `gpus`,
    else the one line of device_query saying why not for the first that fails."""
    env = {**(os.environ if env is None else env), "GLOG_logtostderr": "1"}   # its answer on stderr, not in /tmp
    for gpu in dict.fromkeys(str(g) for g in gpus):       # each id once: "0,0,0,0" is four slots on one GPU
        query = _remembered_device_query(tuple(caffe), tuple(sorted(env.items())), gpu)
        if not query.ok:
            return query.message
    return ""


@functools.lru_cache(maxsize=32)
def _remembered_device_query(caffe: tuple[str, ...], env: tuple, gpu: str) -> DeviceQuery:
    """_device_query once per command, environment and GPU id in a process: a run checks its trainers' GPUs as it
    starts and again where its stages and the local runner take the trainer (experiment.trainer_env, run_local)."""
    return _device_query(list(caffe), dict(env), gpu)


def _device_query(caffe: list[str], env: dict | None, gpu: int | str, timeout: float = 120) -> DeviceQuery:
    try:
        proc = subprocess.run([*caffe, "device_query", "-gpu", str(gpu)], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return DeviceQuery(False, f"caffe device_query does not run: {err}", "")
    out = proc.stdout + proc.stderr
    fields = dict(re.findall(r"\]\s*(Name|Major revision number|Minor revision number|Total global memory):\s*(.*)",
                             out))
    if proc.returncode == 0 and "Name" in fields:
        memory = int(fields.get("Total global memory", "0") or 0) / 2 ** 30
        capability = f"{fields.get('Major revision number', '?')}.{fields.get('Minor revision number', '?')}"
        return DeviceQuery(True, f"GPU {gpu}: {fields['Name'].strip()} (compute capability {capability}, "
                                 f"{memory:.0f} GiB)", out)
    if "CPU-only" in out or "Cannot use GPU in CPU-only Caffe" in out:
        return DeviceQuery(False, "this Caffe is a CPU-only build (build one with tools/install_caffe --cuda)", out)
    check = re.search(r"No usable GPU: (.+)", out) or re.search(r"Check failed: [^\n]*?\)\s+(.+)", out)
    why = check.group(1).strip() if check else (out.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    hint = "" if gpu_driver_present() else " (this machine has no NVIDIA driver)"
    return DeviceQuery(False, f"no usable GPU {gpu}: {why}{hint}", out)
