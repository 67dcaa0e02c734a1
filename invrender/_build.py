"""What the compiled extension contains."""

import torch

from . import _C


def build_info():
    """Describe the compiled backends.

    Returns:
        dict with ``version`` (invrender), ``torch_version`` (the torch the extension was compiled
        against), ``cpu`` (always True), ``cuda`` (CUDA kernels compiled), ``cuda_archs`` (list of
        compiled CUDA architectures, e.g. ``["8.0", "9.0+PTX"]``) and ``cuda_available``
        (whether a GPU is usable right now: compiled in and visible to torch).
    """
    from . import __version__

    cuda = bool(_C.built_with_cuda())
    archs = [a for a in _C.cuda_archs().replace(" ", ";").split(";") if a] if cuda else []
    return {
        "version": __version__,
        "torch_version": getattr(_C, "torch_version", None),
        "cpu": True,
        "cuda": cuda,
        "cuda_archs": archs,
        "cuda_available": cuda and torch.cuda.is_available(),
    }
