"""Real BVLC Caffe with cuDNN 9 (`tools/install_caffe --cuda --cudnn`, caffe_cuda.CUDNN_FIXES and CUDNN_WHEELS).

The first tests need no build: the port of Caffe's cuDNN code on Caffe's own lines (9b89154, verbatim), the CMake
command, the cuDNN wheel in the toolkit, the bundle's search for cuDNN. The last ones check the cuDNN build in the
cache (caffe-9b89154-cuda13.0-sm80-sm90-cudnn9): they skip, saying so, when it is not built, and fail instead where
$CONVNET_TRANSFER_REQUIRE_CAFFE_CUDNN=1. They need no GPU, and none has run this build on one yet.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convnet_transfer.training import caffe_build, caffe_cuda, realcaffe
from conftest import missing
from test_caffe_cuda_build import (FACTS, VERSION, _fake_build, _wheel, assert_device_query_fails_in_one_line,
                                   assert_trains_as_the_cpu_build, caffe_check_says)

REQUIRE_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE_CUDNN"
CUDNN_PIN = "nvidia-cudnn-cu13==9.19.0.56"

# ------------------------------------------------------------------------------------------ no build needed


def test_cudnn_cmake_command_and_prefix():
    spec = caffe_cuda.CudaSpec(cudnn=True)
    cmake = caffe_build.cmake_command(Path("/src"), Path("/prefix"), FACTS,
                                      caffe_cuda.cmake_options(spec, Path("/cuda")))
    assert "-DUSE_CUDNN=OFF" not in cmake and "-DCPU_ONLY=ON" not in cmake
    assert cmake[-9:] == ["-DCPU_ONLY=OFF", "-DCUDA_TOOLKIT_ROOT_DIR=/cuda", "-DCUDA_USE_STATIC_CUDA_RUNTIME=OFF",
                          "-DCUDA_ARCH_NAME=Manual", "-DCUDA_ARCH_BIN=80 90", "-DCUDA_ARCH_PTX=90", "-DUSE_CUDNN=ON",
                          "-DCUDNN_INCLUDE=/cuda/include", "-DCUDNN_LIBRARY=/cuda/lib/libcudnn.so"]
    beside = caffe_cuda.cmake_options(spec, Path("/usr/local/cuda"), Path("/prefix/cudnn"))   # --cuda-root
    assert "-DCUDNN_LIBRARY=/prefix/cudnn/lib/libcudnn.so" in beside
    assert spec.prefix_name == "caffe-9b89154-cuda13.0-sm80-sm90-cudnn9"
    assert caffe_cuda.CudaSpec(cudnn=True, lean=True).prefix_name.endswith("-sm90-cudnn9-lean")
    assert spec.wheels == caffe_cuda.CudaSpec().wheels + [CUDNN_PIN]
    assert spec.tops == ("nvidia/cu13/", "nvidia/cudnn/") and caffe_cuda.CudaSpec().tops == ("nvidia/cu13/",)
    # the build without cuDNN is untouched: no cuDNN wheel, no cuDNN option
    assert not any("cudnn" in w for w in caffe_cuda.CudaSpec().wheels)
    assert not any("CUDNN" in o for o in caffe_cuda.cmake_options(caffe_cuda.CudaSpec(), Path("/cuda")))


# Caffe's own lines (9b89154) that the cuDNN port changes, verbatim.
CUDNN_HPP = ('''
inline const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
    case CUDNN_STATUS_SUCCESS:
      return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED:
      return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_ALLOC_FAILED:
      return "CUDNN_STATUS_ALLOC_FAILED";
    case CUDNN_STATUS_BAD_PARAM:
      return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_INTERNAL_ERROR:
      return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_INVALID_VALUE:
      return "CUDNN_STATUS_INVALID_VALUE";
    case CUDNN_STATUS_ARCH_MISMATCH:
      return "CUDNN_STATUS_ARCH_MISMATCH";
    case CUDNN_STATUS_MAPPING_ERROR:
      return "CUDNN_STATUS_MAPPING_ERROR";
    case CUDNN_STATUS_EXECUTION_FAILED:
      return "CUDNN_STATUS_EXECUTION_FAILED";
    case CUDNN_STATUS_NOT_SUPPORTED:
      return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_LICENSE_ERROR:
      return "CUDNN_STATUS_LICENSE_ERROR";
#if CUDNN_VERSION_MIN(6, 0, 0)
    case CUDNN_STATUS_RUNTIME_PREREQUISITE_MISSING:
      return "CUDNN_STATUS_RUNTIME_PREREQUISITE_MISSING";
#endif
#if CUDNN_VERSION_MIN(7, 0, 0)
    case CUDNN_STATUS_RUNTIME_IN_PROGRESS:
      return "CUDNN_STATUS_RUNTIME_IN_PROGRESS";
    case CUDNN_STATUS_RUNTIME_FP_OVERFLOW:
      return "CUDNN_STATUS_RUNTIME_FP_OVERFLOW";
#endif
  }
  return "Unknown cudnn status";
}

template <typename Dtype>
inline void setConvolutionDesc(cudnnConvolutionDescriptor_t* conv,
    cudnnTensorDescriptor_t bottom, cudnnFilterDescriptor_t filter,
    int pad_h, int pad_w, int stride_h, int stride_w) {
#if CUDNN_VERSION_MIN(6, 0, 0)
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(*conv,
      pad_h, pad_w, stride_h, stride_w, 1, 1, CUDNN_CROSS_CORRELATION,
      dataType<Dtype>::type));
#else
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(*conv,
      pad_h, pad_w, stride_h, stride_w, 1, 1, CUDNN_CROSS_CORRELATION));
#endif
}

}  // namespace cudnn

}  // namespace caffe

#endif  // USE_CUDNN
#endif  // CAFFE_UTIL_CUDNN_H_
''')
CONV_CALLS = '''
    // choose forward and backward algorithms + workspace(s)
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm(handle_[0],
      bottom_descs_[i],
      filter_desc_,
      conv_descs_[i],
      top_descs_[i],
      CUDNN_CONVOLUTION_FWD_SPECIFY_WORKSPACE_LIMIT,
      workspace_limit_bytes,
      &fwd_algo_[i]));

    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle_[0],
      bottom_descs_[i],
      filter_desc_,
      conv_descs_[i],
      top_descs_[i],
      fwd_algo_[i],
      &(workspace_fwd_sizes_[i])));

    // choose backward algorithm for filter
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm(handle_[0],
          bottom_descs_[i], top_descs_[i], conv_descs_[i], filter_desc_,
          CUDNN_CONVOLUTION_BWD_FILTER_SPECIFY_WORKSPACE_LIMIT,
          workspace_limit_bytes, &bwd_filter_algo_[i]) );

    // get workspace for backwards filter algorithm
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(handle_[0],
          bottom_descs_[i], top_descs_[i], conv_descs_[i], filter_desc_,
          bwd_filter_algo_[i], &workspace_bwd_filter_sizes_[i]));

    // choose backward algo for data
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm(handle_[0],
          filter_desc_, top_descs_[i], conv_descs_[i], bottom_descs_[i],
          CUDNN_CONVOLUTION_BWD_DATA_SPECIFY_WORKSPACE_LIMIT,
        workspace_limit_bytes, &bwd_data_algo_[i]));

'''
DECONV_CALL = '''
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm(
        handle_[0],
        top_descs_[i],
        filter_desc_,
        conv_descs_[i],
        bottom_descs_[i],
        CUDNN_CONVOLUTION_FWD_SPECIFY_WORKSPACE_LIMIT,
        workspace_limit_bytes,
        &fwd_algo_[i]));

'''
LAYER_FACTORY = '''
  if (engine == LRNParameter_Engine_DEFAULT) {
#ifdef USE_CUDNN
    engine = LRNParameter_Engine_CUDNN;
#else
    engine = LRNParameter_Engine_CAFFE;
#endif
  }

  if (engine == ReLUParameter_Engine_DEFAULT) {
    engine = ReLUParameter_Engine_CAFFE;
#ifdef USE_CUDNN
    engine = ReLUParameter_Engine_CUDNN;
#endif
  }
'''
CUDA_CMAKE = "    file(READ ${CUDNN_INCLUDE}/cudnn.h CUDNN_VERSION_FILE_CONTENTS)\n"
SOFTMAX = ('#ifdef USE_CUDNN\n#include <vector>\n\n#include "thrust/device_vector.h"\n\n'
           '#include "caffe/layers/cudnn_softmax_layer.hpp"\n')


def _port(tmp_path):
    files = {"include/caffe/util/cudnn.hpp": CUDNN_HPP, "src/caffe/layers/cudnn_conv_layer.cpp": CONV_CALLS,
             "src/caffe/layers/cudnn_deconv_layer.cpp": DECONV_CALL, "src/caffe/layer_factory.cpp": LAYER_FACTORY,
             "cmake/Cuda.cmake": CUDA_CMAKE, "src/caffe/layers/cudnn_softmax_layer.cpp": SOFTMAX}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    done = caffe_build.apply_fixes(tmp_path, caffe_cuda.CUDNN_FIXES)
    return done, {rel: (tmp_path / rel).read_text() for rel in files}


def test_cudnn_fixes_on_caffes_lines(tmp_path):
    done, out = _port(tmp_path)
    assert len(done) == len(caffe_cuda.CUDNN_FIXES)
    assert any("(4 edits)" in line for line in done) and any("(2 edits)" in line for line in done)   # 3 + 1; LRN + ReLU
    # the algorithm choice: no call to what cuDNN 8 removed, the same arguments less the preference
    for rel in ("src/caffe/layers/cudnn_conv_layer.cpp", "src/caffe/layers/cudnn_deconv_layer.cpp"):
        assert "SPECIFY_WORKSPACE_LIMIT" not in out[rel] and "cudnnGetConvolutionForwardAlgorithm(" not in out[rel]
    conv = out["src/caffe/layers/cudnn_conv_layer.cpp"]
    assert ("CUDNN_CHECK(cudnn::getConvolutionForwardAlgorithm(handle_[0],\n      bottom_descs_[i],\n"
            "      filter_desc_,\n      conv_descs_[i],\n      top_descs_[i],\n      workspace_limit_bytes,\n"
            "      &fwd_algo_[i]));") in conv
    assert ("cudnn::getConvolutionBackwardFilterAlgorithm(handle_[0],\n          bottom_descs_[i], top_descs_[i], "
            "conv_descs_[i], filter_desc_,\n          workspace_limit_bytes, &bwd_filter_algo_[i]) );") in conv
    assert ("cudnn::getConvolutionBackwardDataAlgorithm(handle_[0],\n          filter_desc_, top_descs_[i], "
            "conv_descs_[i], bottom_descs_[i],\n          workspace_limit_bytes, &bwd_data_algo_[i]));") in conv
    assert "cudnnGetConvolutionForwardWorkspaceSize(handle_[0]," in conv      # untouched: still in cuDNN 9
    assert "cudnn::getConvolutionForwardAlgorithm(\n        handle_[0],\n        top_descs_[i]," in \
        out["src/caffe/layers/cudnn_deconv_layer.cpp"]
    hpp = out["include/caffe/util/cudnn.hpp"]
    # ... which cudnn.hpp now defines, inside namespace caffe::cudnn, on the _v7 heuristics
    helpers = hpp[hpp.index("inline cudnnStatus_t getConvolutionForwardAlgorithm"):hpp.index("}  // namespace cudnn")]
    for kind, none in (("Forward", "CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM"),
                       ("BackwardFilter", "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0"),
                       ("BackwardData", "CUDNN_CONVOLUTION_BWD_DATA_ALGO_0")):
        assert f"cudnnGetConvolution{kind}Algorithm_v7(" in helpers and none in helpers
    assert "perf[i].memory <= limit" in hpp and hpp.index("fastestWithin") < hpp.index("}  // namespace cudnn")
    # fp32 convolutions stay fp32; cuDNN names its own statuses
    assert ("dataType<Dtype>::type));\n  CUDNN_CHECK(cudnnSetConvolutionMathType(*conv, CUDNN_FMA_MATH));\n#else"
            in hpp)
    assert "inline const char* cudnnGetErrorString" not in hpp and "CUDNN_STATUS_MAPPING_ERROR" not in hpp
    # the version from cudnn_version.h
    assert "if(EXISTS ${CUDNN_INCLUDE}/cudnn_version.h)\n      file(READ ${CUDNN_INCLUDE}/cudnn_version.h " \
        "CUDNN_VERSION_FILE_CONTENTS)\n    else()" in out["cmake/Cuda.cmake"]
    # cuDNN layers in GPU mode only; both shapes of Caffe's engine choice (LRN's #else too) keep a CAFFE engine
    factory = out["src/caffe/layer_factory.cpp"]
    assert ("#ifdef USE_CUDNN\n    engine = Caffe::mode() == Caffe::GPU ? LRNParameter_Engine_CUDNN : "
            "LRNParameter_Engine_CAFFE;\n#else") in factory
    assert "engine = Caffe::mode() == Caffe::GPU ? ReLUParameter_Engine_CUDNN : ReLUParameter_Engine_CAFFE;" in factory
    # Thrust, which the C++ compiler does not find in CUDA 13 (include/cccl), is not included where it is not used
    assert out["src/caffe/layers/cudnn_softmax_layer.cpp"] == \
        '#ifdef USE_CUDNN\n#include <vector>\n\n#include "caffe/layers/cudnn_softmax_layer.hpp"\n'
    with pytest.raises(caffe_build.InstallError, match="not applicable"):    # a second time: nothing to edit
        caffe_build.apply_fixes(tmp_path, caffe_cuda.CUDNN_FIXES)


def test_cudnn_port_compiles_where_a_cudnn_header_is(tmp_path):
    # The helpers against cuDNN 9's own headers: those of the build's wheel while it is being built, or any
    # cudnn.h given in $CUDNN_INCLUDE (the finished build keeps no headers; the build itself compiles them)
    include = os.environ.get("CUDNN_INCLUDE")
    if not include or not (Path(include) / "cudnn.h").is_file():
        pytest.skip("no cuDNN headers here ($CUDNN_INCLUDE); the --cudnn build compiles the port itself")
    _, out = _port(tmp_path)
    hpp = out["include/caffe/util/cudnn.hpp"]
    helpers = hpp[hpp.index("// cuDNN 8 removed"):hpp.index("}  // namespace cudnn")]
    source = tmp_path / "port.cpp"
    source.write_text("#include <cstddef>\n#include <cudnn.h>\nnamespace cudnn {\n" + helpers + "}\n")
    cuda_include = Path(include).parent / "include"
    proc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", f"-I{include}", f"-I{cuda_include}", str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cudnn_version_from_its_header(tmp_path):
    (tmp_path / "cudnn_version.h").write_text("#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 19\n"
                                              "#define CUDNN_PATCHLEVEL 0\n")
    assert caffe_cuda.cudnn_version(tmp_path) == "9.19.0"
    with pytest.raises(caffe_build.InstallError, match="no cuDNN version"):
        caffe_cuda.cudnn_version(tmp_path / "none")


def test_toolkit_assembled_with_the_cudnn_wheel(tmp_path):
    wheels = [_wheel(tmp_path / "nvcc.whl", {"nvidia/cu13/bin/nvcc": b"#!/bin/sh\n"}),
              _wheel(tmp_path / "rt.whl", {"nvidia/cu13/lib/libcudart.so.13": b"elf"}),
              _wheel(tmp_path / "cudnn.whl", {"nvidia/cudnn/lib/libcudnn.so.9": b"elf",
                                              "nvidia/cudnn/lib/libcudnn_cnn.so.9": b"elf",
                                              "nvidia/cudnn/include/cudnn_version.h": b"//"})]
    root = caffe_cuda.assemble_toolkit(wheels, tmp_path / "root", caffe_cuda.CudaSpec(cudnn=True).tops)
    assert os.readlink(root / "lib" / "libcudnn.so") == "libcudnn.so.9"     # beside libcudart: one rpath
    assert (root / "lib" / "libcudnn_cnn.so.9").is_file() and (root / "lib" / "libcudart.so.13").is_file()
    assert (root / "targets" / "x86_64-linux" / "include" / "cudnn_version.h").is_file()
    alone = caffe_cuda.assemble_toolkit(wheels[2:], tmp_path / "cudnn", ("nvidia/cudnn/",), toolkit=False)
    assert sorted(os.listdir(alone)) == ["include", "lib"]                   # cuDNN beside an installed toolkit


def test_install_caffe_cli_cudnn():
    from click.testing import CliRunner
    from convnet_transfer.cli import install_caffe
    help_text = CliRunner().invoke(install_caffe.main, ["--help"]).output
    assert "caffe-9b89154-cuda13.0-sm80-sm90-cudnn9" in help_text and "not yet" in help_text
    spec = install_caffe._cuda_spec(True, "13.0", None, "80,90", True)
    assert spec.cudnn and spec.prefix_name == "caffe-9b89154-cuda13.0-sm80-sm90-cudnn9"
    assert not install_caffe._cuda_spec(True, "13.0", None, "80,90", False).cudnn


def test_gpu_runs_prefer_the_build_without_cudnn(monkeypatch, tmp_path):
    for name in ("CAFFE_ROOT", "CAFFE", realcaffe.PREFIX_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "convnet_transfer"
    cudnn = _fake_build(cache / "caffe-9b89154-cuda13.0-sm80-sm90-cudnn9", VERSION,
                        {"version": "13.0", "cudnn": "9.19.0"})
    assert realcaffe.cuda_prefixes() == [cudnn]
    plain = _fake_build(cache / "caffe-9b89154-cuda13.0-sm80-sm90", VERSION, {"version": "13.0"})
    assert realcaffe.cuda_prefixes() == [plain, cudnn]          # the cuDNN build has not run on a GPU yet


def _libs_script(tmp_path, need):
    from convnet_transfer.training import caffe_bundle
    script = tmp_path / "caffe-cuda-libs"
    script.write_text(caffe_bundle.cuda_libs_script(need, "13", "nvidia-cuda-runtime==13.0.96", CUDNN_PIN))
    script.chmod(0o755)
    return script


def test_bundle_finds_cudnn_in_its_own_wheel(tmp_path):
    cuda_need, cudnn_need = ["libcudart.so.13", "libcublas.so.13", "libcurand.so.10"], ["libcudnn.so.9"]
    script = _libs_script(tmp_path, sorted(cuda_need + cudnn_need))
    site = tmp_path / "site" / "nvidia"
    for folder, names in ((site / "cu13" / "lib", cuda_need), (site / "cudnn" / "lib", cudnn_need)):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).touch()
    python = tmp_path / "bin" / "python3"          # a python3 whose sys.path holds the wheels' site-packages
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'site'} exec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "CUDA_HOME": str(tmp_path)}
    run = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (f"CUDA libraries: {site / 'cu13' / 'lib'} (from the nvidia-* wheels of {python})\n"
                          f"cuDNN libraries: {site / 'cudnn' / 'lib'} (from the nvidia-cudnn wheel of {python})\n")
    folders = subprocess.run([str(script), "--dir"], env=env, capture_output=True, text=True).stdout
    assert folders == f"{site / 'cu13' / 'lib'}:{site / 'cudnn' / 'lib'}\n"     # for LD_LIBRARY_PATH
    (site / "cu13" / "lib" / "libcudnn.so.9").touch()                           # beside the CUDA libraries
    said = subprocess.run([str(script)], env=env, capture_output=True, text=True).stdout
    assert said.splitlines()[1] == f"cuDNN libraries: {site / 'cu13' / 'lib'} (from the nvidia-* wheels of {python})"
    chosen = subprocess.run([str(script), "--dir"], env={**env, "CAFFE_CUDNN_LIBS": str(site / "cudnn" / "lib")},
                            capture_output=True, text=True).stdout
    assert chosen.endswith(f":{site / 'cudnn' / 'lib'}\n")


def test_bundle_says_when_cudnn_is_missing(tmp_path):
    cuda = tmp_path / "cuda"
    cuda.mkdir()
    for name in ("libcudart.so.13", "libcublas.so.13", "libcurand.so.10"):
        (cuda / name).touch()
    script = _libs_script(tmp_path, ["libcublas.so.13", "libcudart.so.13", "libcudnn.so.9", "libcurand.so.10"])
    run = subprocess.run([str(script), "--dir"], env={"PATH": "/usr/bin:/bin", "CAFFE_CUDA_LIBS": str(cuda)},
                         capture_output=True, text=True)
    if run.returncode == 0:       # this machine has cuDNN 9 in a system folder
        assert run.stdout.startswith(f"{cuda}:")
    else:
        assert run.stdout == "" and run.stderr.count("\n") == 1 and f"pip install {CUDNN_PIN}" in run.stderr


# ------------------------------------------------------------------------------------------ the cuDNN build


@pytest.fixture(scope="module")
def cudnn_build():
    prefix = realcaffe.builds_dir() / caffe_cuda.CudaSpec(cudnn=True).prefix_name
    found = realcaffe.inspect_caffe(prefix) if caffe_build.is_built(prefix) else None
    if found is None or not found.ok:
        why = f"no cuDNN build in {prefix}" if found is None else found.problem
        message = (f"the cuDNN Caffe build is needed ({why}); build it with tools/install_caffe --cuda --cudnn "
                   f"(~20 min)")
        missing(message, REQUIRE_ENV)
    return found


def _libcaffe(found):
    return next(p for p in sorted((found.root / "lib").glob("libcaffe.so*")) if not p.is_symlink())


def test_cudnn_build_links_the_wheels_cudnn(cudnn_build):
    libs = caffe_cuda.linked_libraries(cudnn_build.caffe)       # the binary's own rpath, no LD_LIBRARY_PATH
    toolkit = (cudnn_build.root / caffe_cuda.CUDA_DIR / "lib").resolve()
    for name in ("libcudnn.so.9", "libcudart.so.13", "libcublas.so.13", "libcurand.so.10"):
        assert name in libs and Path(libs[name]).resolve().parent == toolkit, libs
    # libcudnn.so.9 loads its sub-libraries from its own folder when first used: all of them are there
    for part in ("cnn", "ops", "graph", "heuristic", "engines_precompiled"):
        assert (toolkit / f"libcudnn_{part}.so.9").is_file(), part
    needed = subprocess.run(["readelf", "-d", str(_libcaffe(cudnn_build))], capture_output=True, text=True).stdout
    assert "[libcudnn.so.9]" in needed
    for part in toolkit.glob("libcudnn*.so.9"):            # what the sub-libraries link resolves too
        assert "not found" not in subprocess.run(["ldd", str(part)], capture_output=True, text=True).stdout, part
    # it loads, and is 9.19.0 (cudnnGetVersion needs no GPU; cudnnCreate without one: CUDNN_STATUS_NOT_INITIALIZED)
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.cudnnGetVersion.restype = ctypes.c_size_t; "
            "print(lib.cudnnGetVersion())")
    version = subprocess.run([sys.executable, "-c", code, str(toolkit / "libcudnn.so.9")], capture_output=True,
                             text=True, timeout=120)
    assert version.stdout.strip() == "91900", version.stderr[-2000:]
    info = cudnn_build.cuda
    assert info["cudnn"] == "9.19.0" and info["wheels"]["nvidia-cudnn-cu13"] == "9.19.0.56"
    assert (info["sass"], info["ptx"]) == (["sm_80", "sm_90"], ["compute_90"])
    assert info["libraries"].keys() == libs.keys()


def test_cudnn_build_imports_only_what_cudnn9_has(cudnn_build):
    libcudnn = cudnn_build.root / caffe_cuda.CUDA_DIR / "lib" / "libcudnn.so.9"
    imported, missing = caffe_cuda.undefined_cudnn_symbols(_libcaffe(cudnn_build), libcudnn)
    assert missing == [], missing
    assert {"cudnnGetConvolutionForwardAlgorithm_v7", "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
            "cudnnGetConvolutionBackwardDataAlgorithm_v7", "cudnnSetConvolutionMathType", "cudnnConvolutionForward",
            "cudnnPoolingForward", "cudnnLRNCrossChannelForward", "cudnnActivationForward", "cudnnSoftmaxForward",
            "cudnnGetErrorString"} <= set(imported)
    assert "cudnnGetConvolutionForwardAlgorithm" not in imported       # what cuDNN 8 removed


def test_cudnn_build_device_query_is_one_clean_line(cudnn_build):
    if realcaffe.gpu_driver_present():
        assert realcaffe.device_query(cudnn_build, 0).ok
        return
    assert_device_query_fails_in_one_line(cudnn_build)


def test_caffe_check_reports_cudnn(cudnn_build):
    said = caffe_check_says(cudnn_build.root)
    assert "CUDA:    13.0; GPU code sm_80 sm_90 compute_90; cuDNN 9.19.0; toolkit: PyPI wheels" in said
    libs = next(line for line in said.splitlines() if line.startswith("  libs:"))
    assert "libcudnn.so.9 => " in libs and "not found" not in libs


@pytest.mark.slow
def test_cudnn_build_trains_on_the_cpu_as_the_cpu_build(cudnn_build, tmp_path):
    # In CPU mode the engine DEFAULT takes Caffe's own layers (CUDNN_FIXES: the cuDNN ones need a GPU to set up),
    # so without a GPU a CPU solver trains, and its weights are the CPU build's byte for byte.
    assert_trains_as_the_cpu_build(cudnn_build, tmp_path)


# ------------------------------------------------------------------------------------------ its bundle

BUNDLE_ENV = "CONVNET_TRANSFER_REQUIRE_CAFFE_CUDNN_BUNDLE"


@pytest.mark.slow
def test_cudnn_bundle_finds_and_runs_with_cudnn(tmp_path):
    """The bundle packed from the lean cuDNN build (tools/install_caffe --cuda --cudnn --bundle FILE): it needs
    libcudnn.so.9 of the machine, bin/caffe-cuda-libs finds it and says where, and it trains on the CPU as the CPU
    build does."""
    import tarfile
    from convnet_transfer.training import caffe_bundle
    prefix = realcaffe.builds_dir() / caffe_cuda.CudaSpec(cudnn=True, lean=True).prefix_name
    if not caffe_build.is_built(prefix):
        message = f"no lean cuDNN build in {prefix}: tools/install_caffe --cuda --cudnn --bundle FILE builds it"
        missing(message, BUNDLE_ENV)
    out = tmp_path / "caffe-cudnn-bundle.tar.xz"
    info = caffe_bundle.make_bundle(prefix, out, say=lambda line: None)
    assert out.stat().st_size <= caffe_bundle.MAX_BYTES and info["cuda"]["cudnn"] == "9.19.0"
    assert "libcudnn.so.9" in info["cuda_libraries_needed"] and not any("cudnn" in n for n in info["carried"])
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    top, cuda = tmp_path / "unpacked" / "caffe-cudnn-bundle", prefix / caffe_cuda.CUDA_DIR / "lib"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "CAFFE_CUDA_LIBS": str(cuda)}
    said = subprocess.run([str(top / "bin" / "caffe-cuda-libs")], env=env, capture_output=True, text=True)
    assert said.stdout == (f"CUDA libraries: {cuda} (from $CAFFE_CUDA_LIBS)\n"
                           f"cuDNN libraries: {cuda} (from $CAFFE_CUDA_LIBS)\n"), said.stderr
    found = realcaffe.CaffeInstall(root=top, caffe=top / "bin" / "caffe", how="bundle", python_dir=None, ok=True)
    assert_trains_as_the_cpu_build(found, tmp_path, env={**env, "GLOG_logtostderr": "1"})
