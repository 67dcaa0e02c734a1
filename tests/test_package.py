"""Package layout: the extension, build info and the models package resolve after install."""

import importlib

import torch

import invrender


def test_models_package_is_installed_under_invrender():
    models = importlib.import_module("invrender.models")
    assert models.__name__ == "invrender.models"
    assert models.__file__.replace("\\", "/").endswith("models/__init__.py")


def test_build_info_reports_backends():
    info = invrender.build_info()
    assert set(info) >= {"version", "torch_version", "cpu", "cuda", "cuda_archs", "cuda_available"}
    assert info["cpu"] is True
    if not info["cuda"]:
        assert info["cuda_archs"] == [] and info["cuda_available"] is False
    assert info["cuda_available"] <= torch.cuda.is_available()


def test_public_api_has_docstrings_with_shapes():
    for name in ("rotation_matrix", "rotate_voxels", "project_voxels"):
        fn = getattr(invrender, name)
        doc = fn.__doc__ or ""
        assert "Args:" in doc and "Returns:" in doc and ", 3, 3)" in doc, name
        assert getattr(invrender.reference, name).__doc__, name
