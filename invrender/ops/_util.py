"""Argument checks and registration helpers shared by the op wrappers."""

import inspect
import math
from numbers import Real
from typing import Optional

import torch
from torch import Tensor


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


def require_tensor(x, name: str, op: str) -> Tensor:
    """``x`` if it is a tensor, else a TypeError naming the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    return x


def fake_check(cond: bool, msg: str) -> None:
    """A shape check inside a fake kernel (``torch._check`` with a fixed message)."""
    torch._check(cond, lambda: msg)


def check_same_device(op: str, named_tensors) -> None:
    """Raises a ValueError naming the odd one out unless all the tensors among ``(name, value)``
    pairs (values that are not tensors are skipped) are on one device. A tensor on the ``meta``
    device beside CPU tensors would otherwise send the call to the fake kernel, which returns
    uninitialised memory."""
    first = None
    for name, t in named_tensors:
        if not isinstance(t, Tensor):
            continue
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but '{first[0]}' is on {first[1]}; "
                             "they must be on one device")


def register_fake(qualname: str):
    """``torch.library.register_fake`` for ``invrender::<op>``, with the device check of
    :func:`check_same_device` on every tensor argument first: a registered op called directly with
    tensors on different devices (one of them ``meta``) raises instead of returning garbage."""
    op = qualname.split("::", 1)[1].removesuffix("_forward")

    def decorator(fn):
        sig = inspect.signature(fn)

        def checked(*args, **kwargs):
            check_same_device(op, sig.bind(*args, **kwargs).arguments.items())
            return fn(*args, **kwargs)

        torch.library.register_fake(qualname, checked)
        return fn

    return decorator


def check_real(value, name: str, op: str, dtype: Optional[torch.dtype] = None, positive: bool = False,
               lo: Optional[float] = None) -> float:
    """``value`` as a float, after checking that it is a finite real number (> 0 with ``positive``)
    and, given the ``dtype`` the op computes in, representable there: a positive parameter must lie
    in ``[finfo.tiny, finfo.max]`` (1e-50 is 0 in float32 and 1e300 is inf, and either turns into
    NaN through 0/0 or inf * 0), any other in ``[-finfo.max, finfo.max]``; ``lo`` raises the lower
    bound. Errors name the argument and the usable range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{op}: argument '{name}' must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{op}: argument '{name}' must be {'finite and positive' if positive else 'finite'}, "
                         f"got {value}")
    if dtype is not None:
        fi = torch.finfo(dtype)
        lo = max(lo, fi.tiny) if lo is not None else fi.tiny if positive else -fi.max
        if not lo <= value <= fi.max:
            raise ValueError(f"{op}: argument '{name}' = {value:g} does not fit {dtype}; usable range "
                             f"[{lo:g}, {fi.max:g}]")
    return value


def fragment_field(fragments, name: str, op: str) -> Tensor:
    """``fragments.<name>``, a tensor, or a TypeError naming the argument (any object with the
    attribute will do, e.g. :class:`invrender.Fragments`)."""
    if not hasattr(fragments, name):
        raise TypeError(f"{op}: argument 'fragments' must have a '{name}' attribute (a tensor, as in "
                        f"invrender.Fragments), got {type(fragments).__name__}")
    return require_tensor(getattr(fragments, name), f"fragments.{name}", op)
