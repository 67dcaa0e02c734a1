"""Registration helpers shared by the op wrappers."""

import torch


def check_like(t, name: str, ref, ref_name: str, op: str) -> None:
    """Raises unless tensor ``t`` has the device and dtype of ``ref`` (messages name both arguments).
    Used by the fake kernels, where the C++ checks do not run."""
    if t.device != ref.device:
        raise ValueError(f"{op}: argument '{name}' is on {t.device} but '{ref_name}' is on {ref.device}; "
                         "they must be on one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: argument '{name}' has dtype {t.dtype} but '{ref_name}' has dtype {ref.dtype}")


def forbid_double_backward(op: str, name: str) -> None:
    """Registers an autograd formula on the backward op ``invrender::<op>`` that raises, so that a
    double backward fails loudly instead of silently returning zeros."""

    def backward(ctx, *grads):
        raise NotImplementedError(f"invrender: double backward through {name} is not implemented")

    torch.library.register_autograd(f"invrender::{op}", backward, setup_context=lambda ctx, inputs, output: None)
