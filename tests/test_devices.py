"""Every op refuses tensors on different devices, naming the odd argument (issue 13).

A tensor on the ``meta`` device beside CPU tensors sends a call to the fake kernel, which would
return uninitialised memory; CPU is the only real device here, so ``meta`` stands in for "another
device". The calls are recorded from real uses of the public functions (forward and backward), so
every registered op is covered, the backward ops included, with valid arguments.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import invrender

D64 = dict(dtype=torch.float64)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "invrender":
            self.calls.setdefault(func.__name__.split(".")[0], (func, args, kwargs))
        return func(*args, **kwargs)


def _uses():
    g = torch.Generator().manual_seed(0)
    vox = torch.rand(2, 2, 4, 4, 4, generator=g, **D64).requires_grad_()
    az = torch.rand(2, generator=g, **D64).requires_grad_()
    R = lambda: invrender.rotation_matrix(az, 0.3)  # noqa: E731
    yield lambda: (invrender.rotate_voxels(vox, R()).sum() + invrender.project_voxels(vox, R()).sum())
    a = torch.rand(2, 1, 4, 4, 4, generator=g, **D64).requires_grad_()
    yield lambda: sum(o.sum() for o in invrender.raymarch(a, vox, R(), background=0.5))
    verts = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.5], [0.0, 0.8, 2.0]]], **D64).requires_grad_()
    faces = torch.tensor([[0, 1, 2]])
    attrs = torch.rand(1, 3, 2, generator=g, **D64).requires_grad_()

    def raster():
        frag = invrender.rasterize(verts, faces, 6, layers=2, sigma=1e-2)
        colors = invrender.interpolate(frag, attrs, faces)
        alpha = invrender.layer_alpha(frag, 1e-2)
        out = invrender.composite_layers(alpha, colors)
        soft = invrender.softras_blend(frag, colors, sigma=1e-2, gamma=1e-2)
        return out.image.sum() + out.mask.sum() + soft.image.sum() + soft.silhouette.sum() + frag.depth.sum()

    yield raster
    x = torch.rand(2, 5, 3, generator=g, **D64).requires_grad_()
    y = torch.rand(2, 4, 3, generator=g, **D64).requires_grad_()
    yield lambda: invrender.chamfer_distance(x, y, x_lengths=torch.tensor([5, 3]))


def _recorded_calls():
    rec = _Recorder()
    for use in _uses():
        with rec:
            use().backward()
    return rec.calls


CALLS = _recorded_calls()
OPS = sorted(n for n in dir(torch.ops.invrender) if n.endswith(("_forward", "_backward")))


def test_every_registered_op_was_recorded():
    assert sorted(CALLS) == OPS


def _cases():
    for name, (func, args, kwargs) in sorted(CALLS.items()):
        for k, arg in enumerate(func._schema.arguments):
            if k < len(args) and isinstance(args[k], torch.Tensor):
                yield pytest.param(name, k, arg.name, id=f"{name}-{arg.name}")


@pytest.mark.parametrize("name,k,argname", list(_cases()))
def test_registered_op_names_the_tensor_on_another_device(name, k, argname):
    func, args, kwargs = CALLS[name]
    args = list(args)
    args[k] = args[k].detach().to("meta")
    with pytest.raises(ValueError, match=f"'{argname}' is on meta"):
        func(*args, **kwargs)


def test_all_meta_still_traces():
    # One device for all (meta everywhere) is legitimate: shapes come out of the fake kernels.
    func, args, kwargs = CALLS["rasterize_forward"]
    args = [a.detach().to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    assert func(*args, **kwargs)[0].device.type == "meta"


def test_public_functions_name_the_tensor_on_another_device():
    x = torch.rand(2, 5, 3)
    m = lambda t: t.to("meta")  # noqa: E731
    v = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.5], [0.0, 0.8, 2.0]]])
    f = torch.tensor([[0, 1, 2]])
    frag = invrender.rasterize(v, f, 4, layers=1)
    attrs = torch.rand(1, 3, 2)
    colors = invrender.interpolate(frag, attrs, f)
    alpha = invrender.layer_alpha(frag, 1e-4)
    cases = [
        (lambda: invrender.nearest_neighbors(x, x, x_lengths=m(torch.tensor([5, 5]))), "x_lengths"),
        (lambda: invrender.rotation_matrix(torch.zeros(2), m(torch.zeros(2))), "elevation"),
        (lambda: invrender.interpolate(frag, attrs, m(f)), "faces"),
        (lambda: invrender.interpolate(frag, m(attrs), f), "attrs"),
        (lambda: invrender.softras_blend(frag._replace(depth=m(frag.depth)), colors), "depth"),
        (lambda: invrender.composite_layers(alpha, m(colors)), "colors"),
        (lambda: invrender.rasterize([v[0], v[0]], [f, m(f)], 4), "faces[1]"),
        (lambda: invrender.rasterize([v[0], m(v[0])], [f, f], 4), "verts[1]"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=f"'{name.replace('[', '.').replace(']', '.')}'"):
            call()
