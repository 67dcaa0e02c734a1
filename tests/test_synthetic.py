"""Procedural objects and their renders (invrender.synthetic): closed outward parts, normalisation,
determinism, and masks equal to ray casting the ground-truth mesh by trimesh."""

import math

import numpy as np
import pytest
import torch
import trimesh
from trimesh.ray.ray_triangle import RayMeshIntersector

from invrender import synthetic as syn


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_parts_are_closed_outward_and_normalised(category):
    obj = syn.make_object(category, seed=3)
    assert len(obj.parts) >= 2
    for part in obj.parts:
        mesh = trimesh.Trimesh(part.verts.numpy(), part.faces.numpy(), process=False)
        assert mesh.is_watertight
        assert mesh.volume > 0  # counter-clockwise from outside
    verts, faces, part_of = obj.mesh()
    lo, hi = verts.min(0).values, verts.max(0).values
    assert torch.allclose((hi - lo).max(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose((hi + lo) / 2, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert part_of.shape[0] == faces.shape[0] and int(faces.max()) < verts.shape[0]


def test_objects_vary_with_the_seed_and_are_deterministic():
    a, b, c = (syn.make_object("chair", s) for s in (1, 1, 2))
    assert all(torch.equal(p.verts, q.verts) for p, q in zip(a.parts, b.parts))
    assert not torch.equal(a.mesh()[0], c.mesh()[0])
    az, el = torch.tensor([0.3, 2.0]), torch.full((2,), math.radians(30))
    i1, m1 = syn.render_object(a, az, el, 32)
    i2, m2 = syn.render_object(b, az, el, 32)
    assert torch.equal(i1, i2) and torch.equal(m1, m2)
    assert i1.shape == (2, 3, 32, 32) and m1.shape == (2, 1, 32, 32)
    assert (i1 >= 0).all() and (i1 <= 1).all() and 0 < m1.mean() < 1


@pytest.mark.parametrize("category", ["mug", "airplane"])
def test_mask_equals_ray_casting_the_ground_truth_mesh(category):
    obj = syn.make_object(category, seed=5)
    verts, faces, _ = obj.mesh()
    az, el = torch.tensor([1.1]), torch.tensor([math.radians(30)])
    H = 40
    _, mask = syn.render_object(obj, az, el, H, supersample=1)
    # Camera at distance 2.732 on the view axis; pixel centres on the image plane at focal 3.732.
    R = syn.camera_pose(az.double(), el.double())[0].numpy()
    pv = verts.numpy() @ R.T
    mesh = trimesh.Trimesh(pv, faces.numpy(), process=False)
    c = (2 * np.arange(H) + 1 - H) / H
    x, y = np.meshgrid(c, -c)
    dirs = np.stack([x / syn.FOCAL, y / syn.FOCAL, -np.ones_like(x)], -1).reshape(-1, 3)
    origins = np.tile([0.0, 0.0, syn.DISTANCE], (H * H, 1))
    hit = RayMeshIntersector(mesh).intersects_any(origins, dirs).reshape(H, H)
    got = mask[0, 0].numpy() > 0.5
    assert hit.sum() > 100
    assert (got != hit).sum() <= 3  # rays grazing an edge may go either way


def test_background_image_shows_where_the_mask_is_empty():
    obj = syn.make_object("table", seed=0)
    bg = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    img, mask = syn.render_object(obj, torch.tensor([0.5]), torch.tensor([0.5]), 16, supersample=1, background=bg)
    empty = mask[0, 0] == 0
    assert torch.allclose(img[0][:, empty], bg[0][:, empty], atol=1e-6)


def test_unknown_category():
    with pytest.raises(ValueError, match="category"):
        syn.make_object("teapot", 0)
