"""Build of invrender: the package and its compiled kernels (invrender._C).

Environment variables:
  INVRENDER_FORCE_CPU=1   build the CPU kernels only, even where CUDA is available.
  FORCE_CUDA=1            build the CUDA kernels even when no GPU is visible (needs nvcc).
  TORCH_CUDA_ARCH_LIST    CUDA architectures, e.g. "8.0;9.0". Without it and without a visible GPU,
                          a default list for the toolkit's version is used.
  MAX_JOBS                parallel compile jobs (ninja).
  INVRENDER_DEBUG=1       build with -O0 -g.
"""

import glob
import os
import re
import subprocess

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _nvcc_version():
    if CUDA_HOME is None:
        return None
    try:
        out = subprocess.check_output([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _want_cuda():
    if _env_flag("INVRENDER_FORCE_CPU"):
        return False
    if _env_flag("FORCE_CUDA"):
        if _nvcc_version() is None:
            raise RuntimeError("FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        if torch.version.cuda is None:
            raise RuntimeError("FORCE_CUDA=1 needs a CUDA build of torch; this torch is CPU-only "
                               f"({torch.__version__}). Install a CUDA torch or unset FORCE_CUDA.")
        return True
    return torch.version.cuda is not None and _nvcc_version() is not None


def _default_arch_list(nvcc):
    # CUDA 13 dropped architectures below sm_75; CUDA 12 still has Volta.
    if nvcc >= (13, 0):
        return "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    if nvcc >= (12, 8):
        return "7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    return "7.0;7.5;8.0;8.6;8.9;9.0+PTX"


def _extension():
    sources = ["csrc/ops.cpp", "csrc/bindings.cpp"] + sorted(glob.glob("csrc/*/*.cpp"))
    debug = _env_flag("INVRENDER_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [("TORCH_VERSION_STRING", '"%s"' % torch.__version__.split("+")[0])]
    # -fopenmp: at::parallel_for is inline OpenMP in the headers; without it the loops run serially.
    cxx = opt + ["-Wall", "-Wno-unknown-pragmas", "-fopenmp"]
    if not _want_cuda():
        return CppExtension("invrender._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
                            define_macros=defines, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"])
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU visible at build time: torch would guess an empty or host-specific list.
        os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(_nvcc_version())
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    if archs == "visible GPUs":
        archs = ";".join("%d.%d" % torch.cuda.get_device_capability(i)
                         for i in range(torch.cuda.device_count()))
    defines += [("WITH_CUDA", None), ("INVRENDER_CUDA_ARCHS", '"%s"' % archs)]
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr"]
    sources += sorted(glob.glob("csrc/*/*.cu"))
    return CUDAExtension("invrender._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
                         define_macros=defines, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                         extra_link_args=["-fopenmp"])


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
