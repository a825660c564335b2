"""Real BVLC Caffe for NVIDIA GPUs (`tools/install_caffe --cuda`, convnet_transfer.training.caffe_cuda).

The first tests need no build: the CMake command lines (the CPU one unchanged), the CUDA edits on Caffe's own
lines, the toolkit assembled from wheels, how a build is found and how `caffe device_query` is read. The last
ones check the CUDA build in the cache (caffe-9b89154-cuda13.0-sm80-sm90): they skip, saying so, when it is not
built, and fail instead where $CONVNET_TRANSFER_REQUIRE_CAFFE_CUDA=1 (CI once it builds the CUDA variant). They
need no GPU: on a machine without one, device_query must end with one clean line.
"""
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from convnet_transfer.training import caffe_build, caffe_cuda, realcaffe
from conftest import missing

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE_CUDA"
FACTS = {"executable": "/py/bin/python", "include": "/py/include/python3.11", "numpy_include": "/np/include",
         "shared": True, "libdir": "/py/lib", "ldlibrary": "libpython3.11.so"}

# ------------------------------------------------------------------------------------------ no build needed


def test_cpu_cmake_command_is_unchanged():
    expected = ["cmake", "/src", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_INSTALL_PREFIX=/prefix", "-DCPU_ONLY=ON",
                "-DUSE_CUDNN=OFF", "-DUSE_NCCL=OFF", "-DBLAS=Open", "-DBUILD_docs=OFF", "-DBUILD_matlab=OFF",
                "-DBUILD_python=ON", "-DBUILD_python_layer=ON", "-Dpython_version=3",
                "-DPYTHON_EXECUTABLE=/py/bin/python", "-DPYTHON_INCLUDE_DIR=/py/include/python3.11",
                "-DNUMPY_INCLUDE_DIR=/np/include", "-Wno-dev", "-DPYTHON_LIBRARY=/py/lib/libpython3.11.so"]
    assert caffe_build.cmake_command(Path("/src"), Path("/prefix"), FACTS) == expected


def test_cuda_cmake_command():
    spec = caffe_cuda.CudaSpec()
    cmake = caffe_build.cmake_command(Path("/src"), Path("/prefix"), FACTS,
                                      caffe_cuda.cmake_options(spec, Path("/cuda")))
    assert "-DCPU_ONLY=ON" not in cmake and "-DUSE_CUDNN=OFF" in cmake
    assert cmake[-6:] == ["-DCPU_ONLY=OFF", "-DCUDA_TOOLKIT_ROOT_DIR=/cuda", "-DCUDA_USE_STATIC_CUDA_RUNTIME=OFF",
                          "-DCUDA_ARCH_NAME=Manual", "-DCUDA_ARCH_BIN=80 90", "-DCUDA_ARCH_PTX=90"]
    assert spec.prefix_name == "caffe-9b89154-cuda13.0-sm80-sm90"
    assert all("==" in w for w in spec.wheels) and any(w.startswith("nvidia-cuda-nvcc==13.0") for w in spec.wheels)


# Caffe's own lines (9b89154) that the CUDA edits change, verbatim.
CAFFE_LINES = {
    "src/caffe/common.cpp": (
        '  LOG(INFO) << "Clock rate:                    " << prop.clockRate;\n'
        '  LOG(INFO) << "Concurrent copy and execution: "\n      << (prop.deviceOverlap ? "Yes" : "No");\n'
        '  LOG(INFO) << "Kernel execution timeout:      "\n      << (prop.kernelExecTimeoutEnabled ? "Yes" : "No");\n'),
    "src/caffe/test/test_platform.cpp": (
        '  printf("Clock rate:                    %d\\n", CAFFE_TEST_CUDA_PROP.clockRate);\n'
        '         (CAFFE_TEST_CUDA_PROP.deviceOverlap ? "Yes" : "No"));\n'
        '         (CAFFE_TEST_CUDA_PROP.kernelExecTimeoutEnabled ? "Yes" : "No"));\n'),
    "src/caffe/util/math_functions.cu": "#include <math_functions.h>  // CUDA's, not caffe's, for fabs, signbit\n",
    "cmake/Cuda.cmake": (
        '  string(COMPARE LESS "${CUDA_VERSION}" "9.0" iscudaolderthan90)\n  if(NOT iscudaolderthan90)\n'
        '    string(REPLACE "21(20)" "" __cuda_arch_bin "${__cuda_arch_bin}")\n'
        '    string(REPLACE "20" "" __cuda_arch_bin "${__cuda_arch_bin}")\n  endif()\n'),
    "src/caffe/internal_thread.cpp": (
        "  int device = 0;\n#ifndef CPU_ONLY\n  CUDA_CHECK(cudaGetDevice(&device));\n#endif\n"
        "    int solver_count, int solver_rank, bool multiprocess) {\n#ifndef CPU_ONLY\n"
        "  CUDA_CHECK(cudaSetDevice(device));\n#endif\n"),
    "tools/caffe.cpp": ('int device_query() {\n  LOG(INFO) << "Querying GPUs " << FLAGS_gpu;\n  vector<int> gpus;\n'),
}


def test_cuda_fixes_on_caffes_lines(tmp_path):
    for rel, text in CAFFE_LINES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    done = caffe_build.apply_fixes(tmp_path, caffe_cuda.CUDA_FIXES)
    assert len(done) == len(caffe_cuda.CUDA_FIXES)
    common = (tmp_path / "src/caffe/common.cpp").read_text()
    assert "prop." not in common and common.count("cudaDeviceGetAttribute(&v, cudaDevAttr") == 3
    assert "CAFFE_TEST_CUDA_PROP." not in (tmp_path / "src/caffe/test/test_platform.cpp").read_text()
    assert "<cuda_runtime.h>" in (tmp_path / "src/caffe/util/math_functions.cu").read_text()
    cmake = (tmp_path / "cmake/Cuda.cmake").read_text()
    assert 'VERSION_LESS "9.0"' in cmake and 'REMOVE_ITEM __cuda_arch_bin "20" "21(20)"' in cmake
    thread = (tmp_path / "src/caffe/internal_thread.cpp").read_text()
    assert "if (Caffe::mode() == Caffe::GPU) CUDA_CHECK(cudaGetDevice" in thread
    assert "if (mode == Caffe::GPU) CUDA_CHECK(cudaSetDevice" in thread
    assert 'LOG(ERROR) << "No usable GPU: " << cudaGetErrorString(error);\n    return 1;' in \
        (tmp_path / "tools/caffe.cpp").read_text()
    with pytest.raises(caffe_build.InstallError, match="not applicable"):    # a second time: nothing to edit
        caffe_build.apply_fixes(tmp_path, caffe_cuda.CUDA_FIXES)


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if "/bin/" in name else 0o644) << 16
            z.writestr(info, data)
    return path


def test_toolkit_assembled_from_wheels(tmp_path):
    wheels = [_wheel(tmp_path / "nvcc.whl", {"nvidia/cu13/bin/nvcc": b"#!/bin/sh\n", "nvidia/__init__.py": b""}),
              _wheel(tmp_path / "rt.whl", {"nvidia/cu13/lib/libcudart.so.13": b"elf",
                                           "nvidia/cu13/include/cuda_runtime.h": b"//"})]
    root = caffe_cuda.assemble_toolkit(wheels, tmp_path / "root", "nvidia/cu13/")
    assert os.access(root / "bin" / "nvcc", os.X_OK)
    assert os.readlink(root / "lib" / "libcudart.so") == "libcudart.so.13"
    assert (root / "lib64" / "libcudart.so.13").is_file()
    assert (root / "targets" / "x86_64-linux" / "include" / "cuda_runtime.h").is_file()
    assert not (root / "__init__.py").exists()


def _fake_build(prefix: Path, script: str, cuda: dict | None = None) -> Path:
    (prefix / "bin").mkdir(parents=True)
    caffe = prefix / "bin" / "caffe"
    caffe.write_text("#!/bin/sh\n" + script)
    caffe.chmod(caffe.stat().st_mode | stat.S_IXUSR)
    info = {"commit": realcaffe.CAFFE_COMMIT, **({"cuda": cuda} if cuda else {})}
    (prefix / realcaffe.INFO_FILE).write_text(json.dumps(info))
    return prefix


VERSION = 'if [ "$1" = --version ]; then echo "caffe version 1.0.0"; exit 0; fi\n'
ABORT = (VERSION + 'echo "I1205 02:50:00.1 1 caffe.cpp:138] Querying GPUs 0" >&2\n'
         'echo "F1205 02:50:00.2 1 common.cpp:152] Check failed: error == cudaSuccess (35 vs. 0)  CUDA driver '
         'version is insufficient for CUDA runtime version" >&2\necho "*** Check failure stack trace: ***" >&2\n'
         'echo "    @     0x7f00 google::LogMessage::Fail()" >&2\nexit 134\n')


def test_cuda_build_preferred_when_a_gpu_is_asked_for(monkeypatch, tmp_path):
    for name in ("CAFFE_ROOT", "CAFFE", realcaffe.PREFIX_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "convnet_transfer"
    _fake_build(cache / "caffe-9b89154", VERSION)
    cuda = _fake_build(cache / "caffe-9b89154-cuda13.0-sm80-sm90", VERSION, {"version": "13.0"})
    _fake_build(cache / "caffe-9b89154-cuda13.0-sm80-sm90-lean", VERSION, {"version": "13.0"})   # a bundle's
    assert realcaffe.cuda_prefixes() == [cuda]
    assert realcaffe.find_caffe(gpu=False).root == (cache / "caffe-9b89154").resolve()
    assert realcaffe.find_caffe(gpu=True).root == cuda.resolve()
    assert realcaffe.find_caffe(gpu=True).cuda == {"version": "13.0"}
    monkeypatch.setattr(realcaffe, "gpu_driver_present", lambda: True)
    assert realcaffe.resolve_engine("caffe")[1].root == cuda.resolve()     # --engine caffe on a GPU machine
    monkeypatch.setattr(realcaffe, "gpu_driver_present", lambda: False)
    assert realcaffe.resolve_engine("caffe")[1].root == (cache / "caffe-9b89154").resolve()


def test_device_query_abort_is_one_line(tmp_path):
    found = realcaffe.inspect_caffe(_fake_build(tmp_path / "p", ABORT))
    query = realcaffe.device_query(found, 0)
    assert not query.ok and "\n" not in query.message
    assert query.message.startswith("no usable GPU 0: CUDA driver version is insufficient for CUDA runtime version")
    assert "stack trace" in query.output


def test_device_query_clean_failure_is_one_line(tmp_path):
    # what the CUDA build's own device_query says without a GPU (CUDA_FIXES): an error line, exit status 1
    script = (VERSION + 'echo "I1205 02:50:00.1 1 caffe.cpp:138] Querying GPUs 0" >&2\n'
              'echo "E1205 02:50:00.2 1 caffe.cpp:142] No usable GPU: no CUDA-capable device is detected" >&2\n'
              'exit 1\n')
    query = realcaffe.device_query(realcaffe.inspect_caffe(_fake_build(tmp_path / "p", script)), 0)
    assert not query.ok and query.message.startswith("no usable GPU 0: no CUDA-capable device is detected")


def test_device_query_answer(tmp_path):
    lines = ["Device id:                     0", "Major revision number:         9",
             "Minor revision number:         0", "Name:                          NVIDIA H200",
             f"Total global memory:           {141 * 2 ** 30}"]
    script = VERSION + "".join(f'echo "I1205 02:50:00.3 1 common.cpp:178] {line}" >&2\n' for line in lines)
    query = realcaffe.device_query(realcaffe.inspect_caffe(_fake_build(tmp_path / "p", script)), 0)
    assert query.ok and query.message == "GPU 0: NVIDIA H200 (compute capability 9.0, 141 GiB)"


def test_gpu_code_from_cuobjdump(tmp_path):
    fake = tmp_path / "cuobjdump"
    fake.write_text('#!/bin/sh\nif [ "$1" = --list-elf ]; then\n'
                    'echo "ELF file    1: libcaffe.1.sm_80.cubin"; echo "ELF file    2: libcaffe.2.sm_90.cubin"\n'
                    'else echo "PTX file    1: libcaffe.1.sm_90.ptx"; fi\n')
    fake.chmod(0o755)
    assert caffe_cuda.gpu_code(tmp_path / "libcaffe.so", fake) == {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}


def test_install_caffe_cli_cuda_options():
    from click.testing import CliRunner
    from convnet_transfer.cli import install_caffe
    runner = CliRunner()
    assert "--cuda-arch" in runner.invoke(install_caffe.main, ["--help"]).output
    for args, message in ((["--cudnn"], "go with --cuda"), (["--cuda", "--cuda-arch", "eighty"], "compute capabilities")):
        result = runner.invoke(install_caffe.main, args)
        assert result.exit_code == 2 and message in result.output, result.output
    spec = install_caffe._cuda_spec(True, "13.0", None, "sm_90, 8.0,90", False)
    assert (spec.sass, spec.ptx) == (("80", "90"), ("90",))


def test_bundle_finds_the_machines_cuda_libraries(tmp_path):
    from convnet_transfer.training import caffe_bundle
    need = ["libcudart.so.13", "libcublas.so.13", "libcurand.so.10"]
    script = tmp_path / "caffe-cuda-libs"
    script.write_text(caffe_bundle.cuda_libs_script(need, "13", "nvidia-cuda-runtime==13.0.96"))
    script.chmod(0o755)
    wheels = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    partial = tmp_path / "partial"
    for folder, names in ((wheels, need), (partial, need[:2])):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).touch()
    python = tmp_path / "bin" / "python3"          # a python3 whose sys.path holds the wheels' site-packages
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'site'} exec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "LD_LIBRARY_PATH": str(partial), "CUDA_HOME": str(tmp_path)}
    run = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == f"CUDA libraries: {wheels} (from the nvidia-* wheels of {python})\n"
    chosen = subprocess.run([str(script), "--dir"], env={**env, "CAFFE_CUDA_LIBS": str(wheels)},
                            capture_output=True, text=True)
    assert chosen.stdout == f"{wheels}\n"
    none = subprocess.run([str(script), "--dir"], env={**env, "PATH": "/nonexistent"}, capture_output=True, text=True)
    if none.returncode == 0:       # this machine has CUDA 13 in a system folder
        assert none.stdout.strip() != str(wheels)
    else:
        assert none.stdout == "" and "pip install nvidia-cuda-runtime==13.0.96" in none.stderr


def test_bundle_carries_what_is_not_glibc_or_cuda():
    from convnet_transfer.training import caffe_bundle
    ls = Path(subprocess.run(["sh", "-c", "command -v ls"], capture_output=True, text=True).stdout.strip())
    carry, cuda = caffe_bundle.dependencies([ls.resolve()])
    assert cuda == [] and not any(name.startswith(("libc.so", "ld-linux", "libm.so")) for name in carry)
    assert all(path.is_file() for path in carry.values())


# ------------------------------------------------------------------------------------------ the CUDA build


@pytest.fixture(scope="module")
def cuda_build():
    prefix = realcaffe.builds_dir() / caffe_cuda.CudaSpec().prefix_name
    found = realcaffe.inspect_caffe(prefix) if caffe_build.is_built(prefix) else None
    if found is None or not found.ok:
        why = f"no CUDA build in {prefix}" if found is None else found.problem
        message = f"the CUDA Caffe build is needed ({why}); build it with tools/install_caffe --cuda (~15 min)"
        missing(message, REQUIRE_ENV)
    return found


def test_cuda_build_links_the_wheels_libraries(cuda_build):
    libs = caffe_cuda.linked_libraries(cuda_build.caffe)       # the binary's own rpath, no LD_LIBRARY_PATH
    toolkit = (cuda_build.root / caffe_cuda.CUDA_DIR / "lib").resolve()
    for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        assert name in libs and Path(libs[name]).resolve().parent == toolkit, libs
    assert not any(name.startswith("libcudnn") for name in libs)
    assert cuda_build.cuda["libraries"].keys() == libs.keys()


def test_cuda_build_carries_sm80_sm90_and_ptx(cuda_build):
    cuobjdump = caffe_cuda.cuobjdump_path(cuda_build.root)
    library = next(p for p in sorted((cuda_build.root / "lib").glob("libcaffe.so*")) if not p.is_symlink())
    elf = subprocess.run([str(cuobjdump), "--list-elf", str(library)], capture_output=True, text=True).stdout
    ptx = subprocess.run([str(cuobjdump), "--list-ptx", str(library)], capture_output=True, text=True).stdout
    assert ".sm_80.cubin" in elf and ".sm_90.cubin" in elf
    assert ".sm_90.ptx" in ptx and ".sm_80.ptx" not in ptx
    assert caffe_cuda.gpu_code(library, cuobjdump) == {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}
    info = cuda_build.cuda
    assert (info["version"], info["sass"], info["ptx"], info["cudnn"]) == \
        ("13.0", ["sm_80", "sm_90"], ["compute_90"], False)


def test_cuda_build_device_query(cuda_build):
    query = realcaffe.device_query(cuda_build, 0)
    if realcaffe.gpu_driver_present():
        assert query.ok, query.output[-2000:]
        return
    assert not query.ok and "\n" not in query.message and query.message.startswith("no usable GPU 0: ")
    assert "this machine has no NVIDIA driver" in query.message
    assert_device_query_fails_in_one_line(cuda_build)


def assert_device_query_fails_in_one_line(found) -> None:
    """The binary itself, on a machine without a GPU: one error line and exit status 1, not glog's abort (SIGABRT)
    and its stack trace."""
    proc = subprocess.run([str(found.caffe), "device_query", "-gpu", "0"], env=found.env(),
                          capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1 and "stack trace" not in proc.stderr, proc.stderr[-2000:]
    assert "] No usable GPU: " in lines[-1] and not any(line.startswith("F") for line in lines)


@pytest.mark.parametrize("line, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024", "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16-I3-B03-4-3)"
     "  Tue Sep 23 09:55:41 UTC 2025", "580.95.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86  Release Build", "570.86"),
    ("", ""), ("something else 1.2.3 ", "")])
def test_driver_version_from_the_kernel_modules_line(line, version):
    assert realcaffe.driver_version(line + "\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n") == version


def caffe_check_says(root: Path, **env: str) -> str:
    """What `tools/caffe_check --no-python --gpu 0` prints about the Caffe at `root` (CAFFE_ROOT), `env` added;
    it must succeed."""
    env = {**os.environ, "CAFFE_ROOT": str(root), "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "caffe_check"), "--no-python", "--gpu", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_caffe_check_reports_the_cuda_build(cuda_build):
    said = caffe_check_says(cuda_build.root)
    assert "CUDA:    13.0; GPU code sm_80 sm_90 compute_90; no cuDNN; toolkit: PyPI wheels" in said
    device = next(line for line in said.splitlines() if line.startswith("device:"))
    assert "Check failure stack trace" not in said and device.count("\n") == 0
    driver = next(line for line in said.splitlines() if line.startswith("driver:"))
    assert driver == "driver:  " + (realcaffe.gpu_driver() or "none (no NVIDIA driver loaded on this machine)")
    if realcaffe.gpu_driver_present():
        assert driver.startswith("driver:  NVIDIA driver ")


def _train_tiny(found, folder: Path, env: dict | None = None) -> bytes:
    from test_realcaffe import write_tiny_training
    folder.mkdir()
    write_tiny_training(folder)
    proc = subprocess.run([str(found.caffe), "train", "-solver", "solver.prototxt"], cwd=folder, env=env or found.env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Optimization Done." in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return (folder / "snap" / "tiny_iter_5.caffemodel").read_bytes()


def assert_trains_as_the_cpu_build(found, tmp_path: Path, env: dict | None = None) -> None:
    """The tiny CPU training with `found` (run with `env`) ends with the CPU build's weights, byte for byte, where
    the CPU build is there (the same C++ code and BLAS); it must train in any case."""
    trained = _train_tiny(found, tmp_path / "under_test", env)
    cpu = realcaffe.default_prefix()
    if caffe_build.is_built(cpu):
        assert trained == _train_tiny(realcaffe.inspect_caffe(cpu), tmp_path / "cpu")


@pytest.mark.slow
def test_cuda_build_trains_on_the_cpu_as_the_cpu_build(cuda_build, tmp_path):
    # Without a GPU the CUDA build still trains a CPU solver (it logs that cuBLAS/cuRAND are unavailable); its
    # weights are the CPU build's, byte for byte (the same C++ code and BLAS).
    assert_trains_as_the_cpu_build(cuda_build, tmp_path)


# ------------------------------------------------------------------------------------------ the bundle

BUNDLE_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE_BUNDLE"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The bundle packed from the lean CUDA build (tools/install_caffe --cuda --bundle FILE builds it), unpacked."""
    from convnet_transfer.training import caffe_bundle
    prefix = realcaffe.builds_dir() / caffe_cuda.CudaSpec(lean=True).prefix_name
    if not caffe_build.is_built(prefix):
        message = f"no lean CUDA build in {prefix}: tools/install_caffe --cuda --bundle FILE builds it (~15 min)"
        missing(message, BUNDLE_ENV)
    folder = tmp_path_factory.mktemp("bundle")
    out = folder / "caffe-bundle.tar.xz"
    info = caffe_bundle.make_bundle(prefix, out, say=lambda line: None)
    with tarfile.open(out) as tar:
        tar.extractall(folder / "unpacked", filter="data")
    return {"info": info, "file": out, "top": folder / "unpacked" / "caffe-bundle",
            "cuda": prefix / caffe_cuda.CUDA_DIR / "lib"}


def _bare_env(**extra):
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **extra}


@pytest.mark.slow
def test_bundle_size_and_libraries(bundle):
    from convnet_transfer.training import caffe_bundle
    info, top = bundle["info"], bundle["top"]
    assert bundle["file"].stat().st_size == info["bytes"] <= caffe_bundle.MAX_BYTES
    carried = set(os.listdir(top / "lib"))
    assert carried == set(info["carried"]) and "libcaffe.so.1.0.0" in carried
    assert {"libglog.so.1", "libprotobuf.so.32", "libopenblas.so.0"} <= carried
    assert not any(name.startswith(("libopencv", "libcudart", "libcublas", "libc.so", "libstdc++")) for name in carried)
    assert info["cuda_libraries_needed"] == ["libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13",
                                             "libcurand.so.10"]
    # every library of the tools resolves inside the bundle, the CUDA folder or glibc/the C++ runtime
    env = _bare_env(LD_LIBRARY_PATH=f"{top / 'lib'}:{bundle['cuda']}")
    for tool in caffe_bundle.BUNDLE_TOOLS:
        out = subprocess.run(["ldd", str(top / "libexec" / tool)], env=env, capture_output=True, text=True).stdout
        for name, path in re.findall(r"^\s*(\S+)\s+=>\s+(\S+)", out, re.M):
            assert path != "not found", (tool, name)
            where = Path(path).resolve().parent
            assert where in ((top / "lib").resolve(), bundle["cuda"].resolve()) or \
                caffe_bundle._SYSTEM.match(name), (tool, name, path)


@pytest.mark.slow
def test_bundle_runs_with_the_machines_cuda_libraries(bundle, tmp_path):
    top = bundle["top"]
    env = _bare_env(CAFFE_CUDA_LIBS=str(bundle["cuda"]))
    said = subprocess.run([str(top / "bin" / "caffe-cuda-libs")], env=env, capture_output=True, text=True)
    assert said.stdout == f"CUDA libraries: {bundle['cuda']} (from $CAFFE_CUDA_LIBS)\n"
    version = subprocess.run([str(top / "bin" / "caffe"), "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and "caffe version 1.0.0" in version.stdout + version.stderr
    if not realcaffe.gpu_driver_present():
        query = subprocess.run([str(top / "bin" / "caffe"), "device_query", "-gpu", "0"],
                               env={**env, "GLOG_logtostderr": "1"}, capture_output=True, text=True)
        assert query.returncode == 1 and "] No usable GPU: " in query.stderr.strip().splitlines()[-1]
    found = realcaffe.CaffeInstall(root=top, caffe=top / "bin" / "caffe", how="bundle", python_dir=None, ok=True)
    assert_trains_as_the_cpu_build(found, tmp_path, env={**env, "GLOG_logtostderr": "1"})
    missing = subprocess.run([str(top / "bin" / "caffe"), "--version"], env=_bare_env(), capture_output=True,
                             text=True)
    if missing.returncode != 0:      # no CUDA 13 libraries on this machine's own paths: one line says so
        assert missing.stderr.count("\n") == 1 and "CAFFE_CUDA_LIBS" in missing.stderr


@pytest.mark.slow
def test_caffe_check_reports_a_bundle(bundle):
    """A bundle's bin/caffe is a script: caffe_check reads BUNDLE_INFO.json and the libraries of libexec/caffe with
    the CUDA folder bin/caffe-cuda-libs finds, not "a CPU-only build"."""
    said = caffe_check_says(bundle["top"], CAFFE_CUDA_LIBS=str(bundle["cuda"]))
    assert "CUDA:    13.0; GPU code sm_80 sm_90 compute_90; no cuDNN; toolkit: this machine's (a bundle)" in said
    assert f"commit {realcaffe.CAFFE_COMMIT}" in said and "built:" not in said
    libs = next(line for line in said.splitlines() if line.startswith("  libs:"))
    assert f"libcudart.so.13 => {bundle['cuda']}/libcudart.so.13" in libs and "not found" not in libs
