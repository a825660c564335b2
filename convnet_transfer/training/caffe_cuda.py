"""Real BVLC Caffe for NVIDIA GPUs (`tools/install_caffe --cuda`): the CUDA toolkit from PyPI's wheels, the CUDA
edits to Caffe's source, the CMake options, and what a built CUDA Caffe holds (GPU code, CUDA libraries).

    CudaSpec(version, sass, ptx, root, cudnn)   what to build for; .prefix_name: caffe-9b89154-cuda13.0-sm80-sm90
                                          (-cudnn9 with cuDNN)
    fetch_toolkit(root, wheels, spec, python)   the toolkit's wheels (pip download) unpacked into one CUDA root
    fetch_cudnn(dest, wheels, spec, python)     cuDNN's wheel alone (with an installed toolkit, --cuda-root)
    cmake_options(spec, root, cudnn_root) the CMake options of the CUDA build (added to the CPU build's)
    CUDA_FIXES                            the edits CUDA 13 needs (applied by caffe_build.apply_fixes)
    CUDNN_FIXES                           the port of Caffe's cuDNN layers to cuDNN 9 (with --cudnn)
    cudnn_version(include) / undefined_cudnn_symbols(library, cudnn_lib)   what a cuDNN build uses
    gpu_code(library, cuobjdump)          the SASS and PTX a library carries (cuobjdump --list-elf/--list-ptx)
    ldd(binary, env)                      every library a binary loads, as ldd resolves it
    linked_libraries(binary, env)         the CUDA libraries a binary loads (ldd)

Why CUDA 13 from PyPI: NVIDIA's CUDA 12 compiler wheels (nvidia-cuda-nvcc-cu12, every version 12.4-12.9) hold only
`ptxas`, not `nvcc`, `cicc`, `cudafe++` or `fatbinary`, so CUDA 12 cannot compile from PyPI; CUDA 13's wheels
(nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, ...) hold the whole compiler, no root or GPU needed. An installed
CUDA 11.8+ toolkit (e.g. /usr/local/cuda-12.x) builds too: `--cuda-root`.

cuDNN (`--cudnn`, off by default): cuDNN 9 from PyPI's wheel (nvidia-cudnn-cu13, the version PyTorch 2.11's CUDA 13
builds pin), unpacked into the same CUDA root; Caffe's cuDNN layers written for cuDNN 5-7 are ported by CUDNN_FIXES
(cuDNN 8 removed the algorithm choice Caffe's convolutions used). Compiled and linked without a GPU; not yet run on one.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from .caffe_build import Fix, InstallError
from .realcaffe import CAFFE_COMMIT

__all__ = ["CUDA_WHEELS", "CUDNN_WHEELS", "DEFAULT_CUDA", "DEFAULT_SASS", "DEFAULT_PTX", "CUDA_FIXES", "CUDNN_FIXES",
           "CUDA_DIR", "CUDNN_DIR", "CUDA_LIBRARY", "CudaSpec", "fetch_toolkit", "fetch_cudnn", "assemble_toolkit",
           "toolkit_version", "cudnn_version", "cmake_options", "prune_toolkit", "gpu_code", "ldd", "linked_libraries", "cuobjdump_path",
           "undefined_cudnn_symbols", "check_build"]

# The CUDA 13.0 toolkit as PyPI wheels (the release PyTorch's cu130 builds use, so a GPU machine's driver runs it),
# each pinned; cuobjdump is a tool only (the first version on PyPI is 13.2). Wheels unpack under nvidia/cu13/.
CUDA_WHEELS = {
    "13.0": {
        "nvidia-cuda-nvcc": "13.0.88", "nvidia-nvvm": "13.0.88", "nvidia-cuda-crt": "13.0.88",
        "nvidia-cuda-runtime": "13.0.96", "nvidia-cublas": "13.0.2.14", "nvidia-curand": "10.4.0.35",
        "nvidia-cuda-cccl": "13.0.85", "nvidia-cuda-cuobjdump": "13.2.51",
    },
}
WHEEL_TOP = {"13.0": "nvidia/cu13/"}
# cuDNN 9 for CUDA 12 and 13 (by the toolkit's major version): the release PyTorch 2.11's CUDA 13 wheels pin, about
# 370 MB; its wheel unpacks under nvidia/cudnn/ (include/, lib/: libcudnn.so.9 loads its sub-libraries beside it)
CUDNN_WHEELS = {"13": {"nvidia-cudnn-cu13": "9.19.0.56"}, "12": {"nvidia-cudnn-cu12": "9.19.0.56"}}
CUDNN_TOP = "nvidia/cudnn/"
CUDNN_MAJOR = "9"
DEFAULT_CUDA = "13.0"
DEFAULT_SASS = ("80", "90")      # Ampere (A100) and Hopper (H100, H200) machine code
DEFAULT_PTX = ("90",)            # plus compute_90 PTX, which the driver compiles for newer GPUs (Blackwell)
# A lean build (for a bundle): without OpenCV (whose Debian libraries, GDAL and GTK among them, would not fit),
# without pycaffe; the later -D wins over the CPU build's -DBUILD_python=ON
LEAN_OPTIONS = ["-DUSE_OPENCV=OFF", "-DBUILD_python=OFF", "-DBUILD_python_layer=OFF"]
CUDA_DIR = "cuda"                # <prefix>/cuda: the toolkit unpacked from the wheels (its libraries stay there)
CUDNN_DIR = "cudnn"              # <prefix>/cudnn: cuDNN's wheel alone, when the toolkit is an installed one


def _attribute(field: str, attribute: str) -> Fix:
    return Fix(f"CUDA 13 removed cudaDeviceProp::{field}: read it with cudaDeviceGetAttribute({attribute})",
               ("src/caffe/common.cpp", "src/caffe/test/test_platform.cpp"),
               rf"\b(?:prop|CAFFE_TEST_CUDA_PROP)\.{field}\b",
               f"[] {{ int d = 0, v = 0; cudaGetDevice(&d); cudaDeviceGetAttribute(&v, {attribute}, d); return v; }}()")


# Edits for the CUDA build (after caffe_build.FIXES); each also builds with CUDA 11-12.
CUDA_FIXES = (
    _attribute("clockRate", "cudaDevAttrClockRate"),
    _attribute("deviceOverlap", "cudaDevAttrGpuOverlap"),
    _attribute("kernelExecTimeoutEnabled", "cudaDevAttrKernelExecTimeout"),
    Fix("CUDA 13 deprecates <math_functions.h> (an internal header): <cuda_runtime.h> declares the same",
        ("src/caffe/util/math_functions.cu",), r"#include <math_functions.h>", "#include <cuda_runtime.h>"),
    Fix("cmake/Cuda.cmake compares CUDA versions as strings (\"13.0\" < \"9.0\") and drops arch \"20\" from "
        "inside \"120\": compare as versions, remove whole items", ("cmake/Cuda.cmake",),
        r'string\(COMPARE LESS "\$\{CUDA_VERSION\}" "9\.0" iscudaolderthan90\)\n\s*if\(NOT iscudaolderthan90\)\n'
        r'\s*string\(REPLACE "21\(20\)" "" __cuda_arch_bin "\$\{__cuda_arch_bin\}"\)\n'
        r'\s*string\(REPLACE "20" "" __cuda_arch_bin "\$\{__cuda_arch_bin\}"\)\n\s*endif\(\)',
        'if(NOT CUDA_VERSION VERSION_LESS "9.0")\n    list(REMOVE_ITEM __cuda_arch_bin "20" "21(20)")\n  endif()'),
    # Two edits for machines without a GPU (a login node, CI); nothing changes where there is one.
    Fix("without a GPU, a CPU solver aborted as the data layers' prefetch thread started (it asked the driver for "
        "the current device in any mode): ask in GPU mode only", ("src/caffe/internal_thread.cpp",),
        r"(CUDA_CHECK\(cudaGetDevice\(&device\)\);)", r"if (Caffe::mode() == Caffe::GPU) \1"),
    Fix("... and the prefetch thread sets its device in GPU mode only", ("src/caffe/internal_thread.cpp",),
        r"(CUDA_CHECK\(cudaSetDevice\(device\)\);)", r"if (mode == Caffe::GPU) \1"),
    Fix("without a GPU, `caffe device_query` aborted with glog's stack trace: it says why in one line and exits 1",
        ("tools/caffe.cpp",), r'(int device_query\(\) \{\n  LOG\(INFO\) << "Querying GPUs " << FLAGS_gpu;\n)',
        r'\1  int count = 0;\n  cudaError_t error = cudaGetDeviceCount(&count);\n  if (error != cudaSuccess) {\n'
        r'    LOG(ERROR) << "No usable GPU: " << cudaGetErrorString(error);\n    return 1;\n  }\n'),
)


# Caffe's cuDNN code (cuDNN 5-7) against cuDNN 9 (with --cudnn). Every other cuDNN call Caffe makes (descriptors,
# pooling, LRN, LCN, ReLU, sigmoid, tanh, softmax, the convolutions themselves) is still in cuDNN 9's legacy API with
# the same arguments; Caffe's CUDNN_VERSION_MIN (major * 1000) still holds, as cuDNN 9's CUDNN_VERSION is 9xxxx.
_PICK_ALGORITHM = """
// cuDNN 8 removed cudnnGetConvolution*Algorithm(..., *_SPECIFY_WORKSPACE_LIMIT, limit, &algo): the same choice
// from the *_v7 heuristics, which rank the algorithms fastest first: the first that runs within `limit` bytes
// of workspace without tensor-op math, else the algorithm Caffe falls back to when it has no workspace.
template <typename Perf, typename Algo>
inline Algo fastestWithin(const Perf* perf, int count, size_t limit, Algo none) {
  for (int i = 0; i < count; ++i) {
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= limit &&
        perf[i].mathType != CUDNN_TENSOR_OP_MATH &&
        perf[i].mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) {
      return perf[i].algo;
    }
  }
  return none;
}

inline cudnnStatus_t getConvolutionForwardAlgorithm(cudnnHandle_t handle,
    cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
    cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t y,
    size_t limit, cudnnConvolutionFwdAlgo_t* algo) {
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionForwardAlgorithm_v7(handle, x, w,
      conv, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf);
  if (status != CUDNN_STATUS_SUCCESS) count = 0;
  *algo = fastestWithin(perf, count, limit,
                        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM);
  return status;
}

inline cudnnStatus_t getConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t handle, cudnnTensorDescriptor_t x,
    cudnnTensorDescriptor_t dy, cudnnConvolutionDescriptor_t conv,
    cudnnFilterDescriptor_t dw, size_t limit,
    cudnnConvolutionBwdFilterAlgo_t* algo) {
  cudnnConvolutionBwdFilterAlgoPerf_t
      perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle,
      x, dy, conv, dw, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf);
  if (status != CUDNN_STATUS_SUCCESS) count = 0;
  *algo = fastestWithin(perf, count, limit,
                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  return status;
}

inline cudnnStatus_t getConvolutionBackwardDataAlgorithm(
    cudnnHandle_t handle, cudnnFilterDescriptor_t w,
    cudnnTensorDescriptor_t dy, cudnnConvolutionDescriptor_t conv,
    cudnnTensorDescriptor_t dx, size_t limit,
    cudnnConvolutionBwdDataAlgo_t* algo) {
  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionBackwardDataAlgorithm_v7(handle,
      w, dy, conv, dx, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf);
  if (status != CUDNN_STATUS_SUCCESS) count = 0;
  *algo = fastestWithin(perf, count, limit, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
  return status;
}

}  // namespace cudnn
"""

CUDNN_FIXES = (
    Fix("cuDNN 8+ declares CUDNN_MAJOR/MINOR/PATCHLEVEL in cudnn_version.h, not cudnn.h: cmake/Cuda.cmake reads the "
        "version from there (else it stops: `cuDNN version >3 is required`)", ("cmake/Cuda.cmake",),
        r"file\(READ \$\{CUDNN_INCLUDE\}/cudnn\.h CUDNN_VERSION_FILE_CONTENTS\)",
        "if(EXISTS ${CUDNN_INCLUDE}/cudnn_version.h)\n      file(READ ${CUDNN_INCLUDE}/cudnn_version.h "
        "CUDNN_VERSION_FILE_CONTENTS)\n    else()\n      file(READ ${CUDNN_INCLUDE}/cudnn.h "
        "CUDNN_VERSION_FILE_CONTENTS)\n    endif()"),
    Fix("cuDNN 8 removed cudnnGetConvolution{Forward,BackwardFilter,BackwardData}Algorithm and their "
        "*_SPECIFY_WORKSPACE_LIMIT preference: cudnn.hpp gains cudnn::getConvolution*Algorithm, the fastest of the "
        "*_v7 heuristics' ranking within the same workspace limit", ("include/caffe/util/cudnn.hpp",),
        r"\n\}  // namespace cudnn\n", _PICK_ALGORITHM),
    Fix("... and the convolution and deconvolution layers call them (same arguments, less the preference)",
        ("src/caffe/layers/cudnn_conv_layer.cpp", "src/caffe/layers/cudnn_deconv_layer.cpp"),
        r"cudnnGetConvolution(Forward|BackwardFilter|BackwardData)Algorithm\(([^;]*?)"
        r"CUDNN_CONVOLUTION_(?:FWD|BWD_FILTER|BWD_DATA)_SPECIFY_WORKSPACE_LIMIT,\s*",
        r"cudnn::getConvolution\1Algorithm(\2"),
    Fix("cuDNN 8+ may run float convolutions on TF32 tensor cores on Ampere and later (CUDNN_DEFAULT_MATH): "
        "CUDNN_FMA_MATH keeps them fp32, as Caffe's cuDNN 5-7 ran them", ("include/caffe/util/cudnn.hpp",),
        r"(CUDNN_CROSS_CORRELATION,\n\s*dataType<Dtype>::type\)\);\n)",
        r"\1  CUDNN_CHECK(cudnnSetConvolutionMathType(*conv, CUDNN_FMA_MATH));\n"),
    Fix("cuDNN 9 splits its statuses into ~50 codes (5 of the 14 Caffe's own cudnnGetErrorString names are "
        "deprecated aliases): CUDNN_CHECK says cuDNN's own name for each", ("include/caffe/util/cudnn.hpp",),
        r"(?s)inline const char\* cudnnGetErrorString\(cudnnStatus_t status\) \{\n.*?"
        r"return \"Unknown cudnn status\";\n\}\n",
        "// cudnnGetErrorString: cuDNN's own (cudnn_graph.h), which names every cuDNN 9 status\n"),
    Fix("with USE_CUDNN, engine DEFAULT picked the cuDNN layers in CPU mode too, whose setup needs a GPU (a CPU "
        "solver aborted without one): pick them in GPU mode only, Caffe's own layers on the CPU",
        ("src/caffe/layer_factory.cpp",), r"(?m)^(\s*)engine = (\w+Parameter)_Engine_CUDNN;$",
        r"\1engine = Caffe::mode() == Caffe::GPU ? \2_Engine_CUDNN : \2_Engine_CAFFE;"),
    Fix("CUDA 13 keeps Thrust under include/cccl/, which only nvcc searches: cudnn_softmax_layer.cpp (built by the C++ "
        "compiler) included thrust/device_vector.h and uses none of it: the include goes",
        ("src/caffe/layers/cudnn_softmax_layer.cpp",), r'#include "thrust/device_vector\.h"\n\n', ""),
)


@dataclasses.dataclass(frozen=True)
class CudaSpec:
    """A CUDA build: toolkit version, SASS archs ("80", "90"), PTX archs; `root`: an installed toolkit to use
    instead of the wheels (its version is then nvcc's)."""
    version: str = DEFAULT_CUDA
    sass: tuple[str, ...] = DEFAULT_SASS
    ptx: tuple[str, ...] = DEFAULT_PTX
    root: Path | None = None
    lean: bool = False           # no OpenCV, no pycaffe: what a relocatable bundle holds (caffe_bundle)
    cudnn: bool = False          # USE_CUDNN with cuDNN 9 from PyPI's wheel (CUDNN_WHEELS, CUDNN_FIXES)

    @property
    def prefix_name(self) -> str:
        return (f"caffe-{CAFFE_COMMIT[:7]}-cuda{self.version}-" + "-".join(f"sm{a}" for a in self.sass)
                + (f"-cudnn{CUDNN_MAJOR}" if self.cudnn else "") + ("-lean" if self.lean else ""))

    @property
    def wheels(self) -> list[str]:
        if self.version not in CUDA_WHEELS:
            raise InstallError(f"no CUDA {self.version} wheels known (PyPI's CUDA wheels that hold a whole compiler: "
                               f"{', '.join(CUDA_WHEELS)}); pass --cuda-root with an installed CUDA toolkit instead")
        return [f"{name}=={version}" for name, version in CUDA_WHEELS[self.version].items()] + \
            (self.cudnn_wheels if self.cudnn else [])

    @property
    def cudnn_wheels(self) -> list[str]:
        """The pinned cuDNN 9 wheel for this CUDA major version."""
        major = self.version.split(".")[0]
        if major not in CUDNN_WHEELS:
            raise InstallError(f"no cuDNN wheel known for CUDA {self.version} (known: CUDA {', '.join(CUDNN_WHEELS)})")
        return [f"{name}=={version}" for name, version in CUDNN_WHEELS[major].items()]

    @property
    def fixes(self) -> tuple[Fix, ...]:
        """The edits of Caffe's source this build makes after caffe_build.FIXES: CUDA_FIXES, and CUDNN_FIXES with
        cuDNN."""
        return CUDA_FIXES + (CUDNN_FIXES if self.cudnn else ())

    @property
    def tops(self) -> tuple[str, ...]:
        """The folders of the wheels that make the CUDA root."""
        return (WHEEL_TOP[self.version],) + ((CUDNN_TOP,) if self.cudnn else ())


def fetch_toolkit(root: Path, wheels: Path, spec: CudaSpec, python: str, say=print) -> int:
    """Download the toolkit's wheels with `python -m pip download` (PyPI, or the index pip is set up with) into
    `wheels` and unpack them into the CUDA root `root`; returns the bytes downloaded."""
    say(f"downloading the CUDA {spec.version} toolkit from PyPI ({len(spec.wheels)} wheels, about "
        f"{960 if spec.cudnn else 590} MB{' with cuDNN' if spec.cudnn else ''})")
    files = _download(wheels, spec.wheels, python)
    assemble_toolkit(files, root, spec.tops)
    return sum(f.stat().st_size for f in files)


def fetch_cudnn(dest: Path, wheels: Path, spec: CudaSpec, python: str, say=print) -> int:
    """cuDNN's wheel alone unpacked into `dest` (include/, lib/), for a build with an installed toolkit; returns
    the bytes downloaded."""
    say(f"downloading cuDNN from PyPI ({', '.join(spec.cudnn_wheels)}, about 370 MB)")
    files = _download(wheels, spec.cudnn_wheels, python)
    assemble_toolkit(files, dest, (CUDNN_TOP,), toolkit=False)
    return sum(f.stat().st_size for f in files)


def _download(wheels: Path, pins: list[str], python: str) -> list[Path]:
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"`{' '.join(cmd)}` failed:\n{(proc.stdout + proc.stderr)[-1500:]}")
    names = {re.sub(r"[-_.]+", "_", pin.split("==")[0]).lower() + "-" + pin.split("==")[1] for pin in pins}
    return sorted(f for f in wheels.glob("*.whl") if "-".join(f.name.lower().split("-")[:2]) in names)


def assemble_toolkit(wheels: list[Path], root: Path, top: str | tuple[str, ...], toolkit: bool = True) -> Path:
    """Unpack the wheels' `top` folders (nvidia/cu13/, and nvidia/cudnn/ with cuDNN) into one CUDA root laid out
    as NVIDIA's installers do (bin/nvcc, nvvm/, include/, lib/ + lib64 and targets/x86_64-linux/ links, libX.so
    links for CMake); toolkit=False: no compiler expected (cuDNN alone), only include/, lib/ and the links."""
    tops = (top,) if isinstance(top, str) else tuple(top)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for item in z.infolist():
                top = next((t for t in tops if item.filename.startswith(t)), None)
                if top is None or item.is_dir():
                    continue
                target = root / item.filename[len(top):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(item) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                mode = (item.external_attr >> 16) & 0o777
                if mode:
                    target.chmod(mode)
    if toolkit and not (root / "bin" / "nvcc").is_file():
        raise InstallError(f"the CUDA wheels left no bin/nvcc in {root}")
    if toolkit:
        (root / "lib64").symlink_to("lib")
        (root / "targets" / "x86_64-linux").mkdir(parents=True)
        for name in ("include", "lib"):
            (root / "targets" / "x86_64-linux" / name).symlink_to(Path("..") / ".." / name)
    for versioned in sorted((root / "lib").glob("lib*.so.*")):
        plain = versioned.parent / (versioned.name.split(".so.")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(versioned.name)
    return root


def toolkit_version(root: Path) -> str:
    """"13.0" from `<root>/bin/nvcc --version`."""
    nvcc = Path(root) / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as err:
        raise InstallError(f"{nvcc} does not run: {err}") from None
    m = re.search(r"release (\d+\.\d+)", out)
    if not m:
        raise InstallError(f"{nvcc} --version does not say its release:\n{out[-500:]}")
    return m.group(1)


def cudnn_version(include: Path) -> str:
    """"9.19.0" from cuDNN's cudnn_version.h (cuDNN 8+) or cudnn.h in `include`."""
    for name in ("cudnn_version.h", "cudnn.h"):
        path = Path(include) / name
        if path.is_file():
            found = dict(re.findall(r"#define CUDNN_(MAJOR|MINOR|PATCHLEVEL)\s+(\d+)", path.read_text()))
            if len(found) == 3:
                return f"{found['MAJOR']}.{found['MINOR']}.{found['PATCHLEVEL']}"
    raise InstallError(f"no cuDNN version in {include} (cudnn_version.h, cudnn.h)")


def cmake_options(spec: CudaSpec, root: Path, cudnn_root: Path | None = None) -> list[str]:
    """The CMake options of the CUDA build: Caffe's FindCUDA pointed at `root`, the shared CUDA runtime (the
    libraries the binaries load are the toolkit's, found through the rpath), exactly the archs asked for; with
    cuDNN, USE_CUDNN and cuDNN's header folder and library (in `cudnn_root`, default `root`)."""
    cudnn_root = Path(cudnn_root or root)
    cudnn = ["-DUSE_CUDNN=ON", f"-DCUDNN_INCLUDE={cudnn_root / 'include'}",
             f"-DCUDNN_LIBRARY={cudnn_root / 'lib' / 'libcudnn.so'}"] if spec.cudnn else []
    return ["-DCPU_ONLY=OFF", f"-DCUDA_TOOLKIT_ROOT_DIR={root}", "-DCUDA_USE_STATIC_CUDA_RUNTIME=OFF",
            "-DCUDA_ARCH_NAME=Manual", f"-DCUDA_ARCH_BIN={' '.join(spec.sass)}",
            f"-DCUDA_ARCH_PTX={' '.join(spec.ptx)}"] + cudnn + (LEAN_OPTIONS if spec.lean else [])


def prune_toolkit(root: Path) -> None:
    """After the build, keep only what the binaries load (lib/*.so*) and cuobjdump: the compiler, headers and
    static libraries go (about 330 MB)."""
    for name in ("include", "nvvm", "targets", ".metadata"):
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
    for path in (root / "bin").glob("*"):
        if path.name != "cuobjdump":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in list((root / "lib").glob("*.a")) + list((root / "lib").glob("libnv*")) + [root / "lib" / "cmake"]:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def gpu_code(library: Path, cuobjdump: Path | str) -> dict:
    """{"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}: the GPU code in `library`'s fat binaries."""
    found = {}
    for key, flag, prefix in (("sass", "--list-elf", "sm_"), ("ptx", "--list-ptx", "compute_")):
        proc = subprocess.run([str(cuobjdump), flag, str(library)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"`{cuobjdump} {flag} {library}` failed: {(proc.stderr or proc.stdout)[-500:]}")
        archs = {int(a) for a in re.findall(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)", proc.stdout)}
        found[key] = [f"{prefix}{a}" for a in sorted(archs)]
    return found


def ldd(binary: Path, env: dict | None = None) -> dict[str, str]:
    """{soname: resolved path, or "not found"} of every library `binary` loads, as ldd prints them."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"^\s*(\S+)\s+=>\s+(.+?)(?:\s+\(0x[0-9a-f]+\))?$", out, re.M))


# The CUDA libraries: the driver's and the toolkit's that Caffe links (a machine's own, never carried by a bundle)
CUDA_LIBRARY = re.compile(r"^lib(?:cuda|cudart|cublas|cublasLt|curand|cudnn)\.so")


def linked_libraries(binary: Path, env: dict | None = None) -> dict[str, str]:
    """{soname: resolved path} of the CUDA libraries `binary` loads (ldd, CUDA_LIBRARY): libcudart, libcublas(Lt),
    libcurand, libcudnn; "not found" when ldd cannot resolve one."""
    return {name: path for name, path in ldd(binary, env).items() if CUDA_LIBRARY.match(name)}


def _dynamic_symbols(binary: Path, defined: bool) -> set[str]:
    proc = subprocess.run(["nm", "-D", "--defined-only" if defined else "--undefined-only", str(binary)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"`nm -D {binary}` failed: {(proc.stderr or proc.stdout)[-500:]}")
    return {line.split()[-1].split("@")[0] for line in proc.stdout.splitlines() if line.split()}


def undefined_cudnn_symbols(library: Path, cudnn_lib: Path) -> tuple[list[str], list[str]]:
    """(the cudnn* functions `library` imports, those of them `cudnn_lib` (libcudnn.so.9) does not define): what
    would fail to bind at run time (nm -D)."""
    imported = sorted(s for s in _dynamic_symbols(library, False) if s.startswith("cudnn"))
    defined = _dynamic_symbols(cudnn_lib, True)
    return imported, [s for s in imported if s not in defined]


def cuobjdump_path(prefix: Path) -> Path | None:
    """The cuobjdump kept in a CUDA build's prefix, else the one on PATH."""
    kept = Path(prefix) / CUDA_DIR / "bin" / "cuobjdump"
    if kept.is_file() and os.access(kept, os.X_OK):
        return kept
    return Path(shutil.which("cuobjdump")) if shutil.which("cuobjdump") else None


def check_build(prefix: Path, spec: CudaSpec, toolkit: dict, say=print) -> dict:
    """Check a finished CUDA build (the GPU code asked for is in libcaffe, `caffe` loads the CUDA libraries), drop
    the wheels' compiler, and return what BUILD_INFO.json records under "cuda"."""
    from . import realcaffe
    library = next((p for p in sorted((prefix / "lib").glob("libcaffe.so*")) if not p.is_symlink()), None)
    cuobjdump = cuobjdump_path(prefix) or Path(toolkit["root"]) / "bin" / "cuobjdump"
    if library is None:
        raise InstallError(f"the build left no libcaffe.so in {prefix / 'lib'}")
    code = gpu_code(library, cuobjdump)
    missing = [f"sm_{a}" for a in spec.sass if f"sm_{a}" not in code["sass"]] + \
              [f"compute_{a}" for a in spec.ptx if f"compute_{a}" not in code["ptx"]]
    if missing:
        raise InstallError(f"{library} lacks GPU code for {', '.join(missing)} (cuobjdump finds {code})")
    if toolkit["from"] == "PyPI wheels":
        prune_toolkit(Path(toolkit["root"]))
    elif spec.cudnn:             # cuDNN's wheel beside an installed toolkit: its headers go
        shutil.rmtree(Path(toolkit["cudnn_root"]) / "include", ignore_errors=True)
    libs = linked_libraries(prefix / "bin" / "caffe")
    unresolved = [n for n in ("libcudart", "libcublas", "libcurand") + (("libcudnn",) if spec.cudnn else ())
                  if not any(k.startswith(n + ".") and v != "not found" for k, v in libs.items())]
    if unresolved:
        raise InstallError(f"{prefix / 'bin' / 'caffe'} does not find {', '.join(unresolved)} (ldd: {libs})")
    cudnn = ""
    if spec.cudnn:
        cudnn_lib = next(Path(v) for k, v in libs.items() if k.startswith("libcudnn."))
        imported, missing = undefined_cudnn_symbols(library, cudnn_lib)
        if not imported or missing:
            raise InstallError(f"{library} imports {len(imported)} cuDNN functions; {cudnn_lib} lacks "
                               f"{', '.join(missing) or 'none'}")
        cudnn = f"; cuDNN {toolkit['cudnn']} ({len(imported)} functions, all in {cudnn_lib.name})"
    query = realcaffe.device_query(realcaffe.inspect_caffe(prefix))
    say(f"GPU code: {' '.join(code['sass'] + code['ptx'])}; CUDA libraries: "
        f"{', '.join(sorted(libs))}{cudnn}; device_query here: {query.message}")
    info = {"version": spec.version, "sass": code["sass"], "ptx": code["ptx"],
            "cudnn": toolkit["cudnn"] if spec.cudnn else False,
            "toolkit": toolkit["from"], "root": toolkit["root"], "libraries": libs,
            "download_bytes": toolkit["download_bytes"]}
    if spec.cudnn:
        info["cudnn_root"] = toolkit["cudnn_root"]
    if "wheels" in toolkit:
        info["wheels"] = toolkit["wheels"]
    return info
