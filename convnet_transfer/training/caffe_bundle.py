"""A relocatable CUDA Caffe for GPU machines without root or apt (`tools/install_caffe --cuda --bundle FILE`).

    make_bundle(prefix, out)     a lean CUDA build (caffe_cuda.CudaSpec(lean=True)) -> FILE (.tar.xz)
    dependencies(binaries, env)  {soname: path} of the libraries a bundle carries (ldd)

The bundle unpacks anywhere into one folder: bin/caffe, bin/convert_imageset, bin/compute_image_mean (scripts
that run libexec/<tool> with the bundle's lib/ and the machine's CUDA libraries on LD_LIBRARY_PATH),
bin/caffe-cuda-libs (says which CUDA libraries it uses and where it looked), lib/ (libcaffe and every library it
and the tools link that is not glibc, the C++ runtime or CUDA's), BUNDLE_INFO.json. It needs glibc 2.36 or newer
(Debian 12, Ubuntu 23.04, RHEL 10) and the CUDA runtime, cuBLAS and cuRAND of the build's CUDA major version: from
$CAFFE_CUDA_LIBS, $LD_LIBRARY_PATH, the nvidia-* wheels of `python3` (as PyTorch's CUDA wheels install them), or
a CUDA toolkit (/usr/local/cuda*). Built without OpenCV: convert_imageset and compute_image_mean then only say
that they need OpenCV (in Caffe 9b89154 both do), and the ImageData and WindowData layers and encoded Datums are
lost; training from raw Datum LMDBs and mean files (what tools/make_dbs writes) is not.
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from .caffe_build import InstallError
from .caffe_cuda import CUDA_LIBRARY, ldd
from .realcaffe import BUNDLE_INFO_FILE, INFO_FILE

__all__ = ["BUNDLE_TOOLS", "MAX_BYTES", "make_bundle", "dependencies", "cuda_libs_script", "wrapper_script"]

BUNDLE_TOOLS = ("caffe", "convert_imageset", "compute_image_mean")
MAX_BYTES = 40 * 2 ** 20
# Left to the machine: glibc and its loader, the C++ runtime (and caffe_cuda.CUDA_LIBRARY, found when run)
_SYSTEM = re.compile(r"^(linux-vdso|ld-linux[-\w]*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|"
                     r"libgcc_s)\.so")


def dependencies(binaries: list[Path], env: dict | None = None) -> tuple[dict[str, Path], list[str]]:
    """({soname: resolved path} of the libraries to carry, [sonames of the CUDA libraries they need])."""
    carry, cuda = {}, set()
    for binary in binaries:
        for name, path in ldd(binary, env).items():
            if CUDA_LIBRARY.match(name):
                cuda.add(name)
            elif not _SYSTEM.match(name):
                if path == "not found":
                    raise InstallError(f"{binary} needs {name}, which ldd does not find")
                carry[name] = Path(path).resolve()
    return carry, sorted(cuda)


def cuda_libs_script(need: list[str], major: str, pip: str, cudnn_pip: str = "") -> str:
    """bin/caffe-cuda-libs: the first folder holding all of `need`, and where it came from; a build with cuDNN
    (libcudnn.so.9 in `need`) also looks for cuDNN on its own (PyTorch's wheels keep it in nvidia/cudnn/lib)."""
    cudnn = [n for n in need if n.startswith("libcudnn")]
    need = [n for n in need if not n.startswith("libcudnn")]
    if cudnn and cudnn_pip:
        pip = f"{pip} {cudnn_pip}"          # all that this bundle needs, in one pip command
    also = (f", and cuDNN ({' '.join(cudnn)}) on its own", " (cuDNN: $CAFFE_CUDNN_LIBS, then beside the CUDA ones)",
            ", nvidia/cudnn/lib", "s (CUDA:cuDNN)") if cudnn else ("", "", "", "")
    script = f"""#!/bin/sh
# Which CUDA {major} libraries this Caffe bundle runs with ({' '.join(need)}){also[0]}:
# the first folder holding all of them among $CAFFE_CUDA_LIBS{also[1]}, the folders of
# $LD_LIBRARY_PATH, the nvidia-* wheels of python3/python (nvidia/cu{major}/lib{also[2]}), $CUDA_HOME,
# /usr/local/cuda*, the system's. --dir prints the folder{also[3]} alone.
IFS='
'
try() {{   # try FOLDER HOW: take FOLDER when nothing is taken yet and it holds every one of $need
  [ -z "$found" ] && [ -n "$1" ] || return 0
  for n in $need; do [ -e "$1/$n" ] || return 0; done
  found=$1; how=$2
}}
search() {{   # search NAMES FOLDER HOW WHEEL WHEEL-WORDS SYSTEM-WORDS: sets $found and $how ("" when none)
  need=$1; found=""; how=""
  try "$2" "$3"
  try "${{beside:-}}" "${{beside_how:-}}"
  for d in $(printf '%s\\n' "${{LD_LIBRARY_PATH:-}}" | tr ':' '\\n'); do try "$d" '$LD_LIBRARY_PATH'; done
  for py in python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    for d in $("$py" -c "import sys, os
for p in sys.path:
    print(os.path.join(p or '.', 'nvidia', '$4', 'lib'))" 2>/dev/null); do
      try "$d" "$5 of $(command -v "$py")"
    done
  done
  for d in "${{CUDA_HOME:-/nonexistent}}/lib64" /usr/local/cuda/lib64 /usr/local/cuda-{major}*/lib64 \\
           /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    try "$d" "$6"
  done
}}
search "{chr(10).join(need)}" "${{CAFFE_CUDA_LIBS:-}}" '$CAFFE_CUDA_LIBS' cu{major} "the nvidia-* wheels" \\
  "a CUDA installation"
if [ -z "$found" ]; then
  echo "caffe bundle: the CUDA {major} libraries ({' '.join(need)}) are not here (looked at \\$CAFFE_CUDA_LIBS," \\
       "\\$LD_LIBRARY_PATH, python3's nvidia-* wheels, \\$CUDA_HOME, /usr/local/cuda*, /usr/lib*)." \\
       "Install them: python3 -m pip install {pip}; or set CAFFE_CUDA_LIBS to their folder." >&2
  exit 1
fi
cuda=$found; cuda_how=$how
"""
    if not cudnn:
        return script + """if [ "${1:-}" = --dir ]; then printf '%s\\n' "$cuda"
else printf 'CUDA libraries: %s (from %s)\\n' "$cuda" "$cuda_how"; fi
"""
    return script + f"""beside=$cuda; beside_how=$cuda_how
search "{chr(10).join(cudnn)}" "${{CAFFE_CUDNN_LIBS:-}}" '$CAFFE_CUDNN_LIBS' cudnn "the nvidia-cudnn wheel" \\
  "a cuDNN installation"
if [ -z "$found" ]; then
  echo "caffe bundle: cuDNN ({' '.join(cudnn)}) is not here (looked at \\$CAFFE_CUDNN_LIBS, beside the CUDA" \\
       "libraries, \\$LD_LIBRARY_PATH, python3's nvidia-cudnn wheel, /usr/local/cuda*, /usr/lib*)." \\
       "Install it: python3 -m pip install {cudnn_pip or 'cuDNN'}; or set CAFFE_CUDNN_LIBS to its folder." >&2
  exit 1
fi
if [ "${{1:-}}" = --dir ]; then printf '%s:%s\\n' "$cuda" "$found"
else printf 'CUDA libraries: %s (from %s)\\ncuDNN libraries: %s (from %s)\\n' "$cuda" "$cuda_how" "$found" \\
  "$how"; fi
"""


def wrapper_script(tool: str) -> str:
    """bin/<tool>: run libexec/<tool> with the bundle's lib/ and the machine's CUDA libraries."""
    return f"""#!/bin/sh
# {tool} of a relocatable BVLC Caffe bundle: its libraries in ../lib, the CUDA libraries that
# bin/caffe-cuda-libs finds on this machine.
here=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd) || exit 1
cuda=$("$here/bin/caffe-cuda-libs" --dir) || exit 1
LD_LIBRARY_PATH="$here/lib:$cuda${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
export LD_LIBRARY_PATH
exec "$here/libexec/{tool}" "$@"
"""


def make_bundle(prefix: Path, out: Path, say=print, max_bytes: int = MAX_BYTES) -> dict:
    """Pack the lean CUDA build in `prefix` into the .tar.xz `out` (one top folder named after it); returns what
    its BUNDLE_INFO.json says (libraries carried, CUDA libraries needed, sizes). InstallError above MAX_BYTES."""
    from .caffe_cuda import CUDA_DIR, CUDA_WHEELS, CUDNN_WHEELS
    info = json.loads((prefix / INFO_FILE).read_text())
    cuda = info["cuda"]
    major = cuda["version"].split(".")[0]
    name = re.sub(r"\.tar\.xz$", "", Path(out).name)
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / name
        for sub in ("bin", "libexec", "lib"):
            (top / sub).mkdir(parents=True)
        for tool in BUNDLE_TOOLS:
            shutil.copy2(prefix / "bin" / tool, top / "libexec" / tool)
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": f"{prefix / 'lib'}:{prefix / CUDA_DIR / 'lib'}"}
        carry, need = dependencies(sorted((top / "libexec").iterdir()), env)
        for soname, path in carry.items():
            shutil.copy2(path, top / "lib" / soname)
        wheels = CUDA_WHEELS.get(cuda["version"], {})
        pip = " ".join(f"{n}=={wheels[n]}" for n in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand")
                       if n in wheels) or f"the CUDA {major} runtime, cuBLAS and cuRAND"
        cudnn_pip = " ".join(f"{n}=={v}" for n, v in CUDNN_WHEELS.get(major, {}).items())
        scripts = {"caffe-cuda-libs": cuda_libs_script(need, major, pip, cudnn_pip),
                   **{tool: wrapper_script(tool) for tool in BUNDLE_TOOLS}}
        for script, text in scripts.items():
            (top / "bin" / script).write_text(text)
            (top / "bin" / script).chmod(0o755)
        unpacked = sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
        bundle = {"commit": info["commit"], "version": info["version"], "fixes": info["fixes"],
                  "cuda": {k: cuda[k] for k in ("version", "sass", "ptx", "cudnn")}, "cuda_libraries_needed": need,
                  "carried": sorted(carry), "lost": "OpenCV: convert_imageset, compute_image_mean, ImageData and "
                  "WindowData layers, encoded Datums", "unpacked_bytes": unpacked}
        (top / BUNDLE_INFO_FILE).write_text(json.dumps(bundle, indent=2) + "\n")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:xz") as tar:
            tar.add(top, arcname=name)
    size = Path(out).stat().st_size
    if size > max_bytes:
        raise InstallError(f"{out} is {size / 2 ** 20:.1f} MiB, over the {max_bytes / 2 ** 20:.0f} MiB a bundle may be")
    say(f"bundle {out}: {size / 2 ** 20:.1f} MiB ({unpacked / 2 ** 20:.0f} MiB unpacked), {len(carry)} libraries "
        f"carried; needs {', '.join(need)} of the machine")
    return {**bundle, "bytes": size}
