"""Registration helpers shared by the op wrappers."""

import torch


def forbid_double_backward(op: str, name: str) -> None:
    """Registers an autograd formula on the backward op ``invrender::<op>`` that raises, so that a
    double backward fails loudly instead of silently returning zeros."""

    def backward(ctx, *grads):
        raise NotImplementedError(f"invrender: double backward through {name} is not implemented")

    torch.library.register_autograd(f"invrender::{op}", backward, setup_context=lambda ctx, inputs, output: None)
