"""ShadedViews (IG-GAN's grey renders) and render_shaded's orthographic camera."""

import math

import pytest
import torch

import invrender
from invrender.data import ShadedViews
from invrender.renderers import render_shaded
from invrender.synthetic import box


def test_orthographic_render_of_a_face_on_cube_covers_its_exact_area():
    verts, faces = box((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    R = invrender.rotation_matrix(torch.zeros(1, dtype=torch.float64))
    _, mask = render_shaded(verts, faces, R, image_size=32, supersample=1, orthographic=1.0)
    # The front face spans [-0.5, 0.5]^2 of the window [-1, 1]^2: the middle 16 x 16 pixels, exactly.
    expected = torch.zeros(32, 32)
    expected[8:24, 8:24] = 1
    assert torch.equal(mask[0, 0], expected)
    _, wide = render_shaded(verts, faces, R, image_size=32, supersample=1, orthographic=2.0)
    assert float(wide.sum()) == 64.0  # twice the window: a quarter of the side, 8 x 8 pixels


def test_orthographic_argument_is_checked():
    verts, faces = box((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    R = invrender.rotation_matrix(torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="orthographic"):
        render_shaded(verts, faces, R, orthographic=-1.0)


def test_items_are_grey_on_black_and_deterministic():
    ds = ShadedViews("chair", objects=3, image_size=32)
    assert len(ds) == 3
    a, b = ds[1], ds[1]
    assert a["image"].shape == (1, 32, 32) and a["mask"].shape == (1, 32, 32)
    assert torch.equal(a["image"], b["image"]) and a["category"] == "chair"
    assert float(a["image"][a["mask"] == 0].abs().max()) == 0.0  # black background
    lit = a["image"][a["mask"] == 1]
    assert lit.numel() > 20 and float(lit.min()) > 0.2  # ambient 0.3 times albedo 0.7 at least
    assert a["label"] == invrender.synthetic.CATEGORIES.index("chair")


def test_item_matches_a_direct_render_of_its_mesh_and_view():
    ds = ShadedViews(["car", "mug"], objects=4, image_size=24)
    item = ds[3]
    k, az, el = ds.view(3)
    assert item["category"] == "mug" and int(item["object"]) == ds.object_seed(k)
    verts, faces, _ = invrender.synthetic.make_object("mug", ds.object_seed(k)).mesh()
    R = invrender.rotation_matrix(torch.tensor([az], dtype=torch.float64), torch.tensor([el], dtype=torch.float64))
    image, _ = render_shaded(verts * 1.8, faces, R, 24, supersample=2, background=torch.zeros(1, 3, 48, 48),
                             orthographic=2.0)
    torch.testing.assert_close(item["image"], image[0, :1])
    torch.testing.assert_close(item["rotation"], R[0].float())


def test_regimes_splits_and_viewpoint_ranges():
    views = ShadedViews("sofa", objects=5, views_per_object=4, image_size=16)
    assert len(views) == 20 and [views.view(i)[0] for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    unlimited = ShadedViews("sofa", objects=5, regime="unlimited", length=50, viewpoints="lvp", image_size=16)
    assert len(unlimited) == 50
    angles = torch.tensor([unlimited.view(i)[1:] for i in range(50)]).rad2deg()
    assert angles[:, 0].min() >= -60 and angles[:, 0].max() <= 60
    assert angles[:, 1].min() >= 15 and angles[:, 1].max() <= 60
    assert len({unlimited.view(i)[1] for i in range(50)}) == 50  # a new view at every index
    test = ShadedViews("sofa", objects=5, split="test", image_size=16)
    assert {test.object_seed(k) for k in range(5)}.isdisjoint({views.object_seed(k) for k in range(5)})


def test_objects_fit_the_generator_cube_and_the_window():
    ds = ShadedViews(list(invrender.synthetic.CATEGORIES), objects=6, image_size=16)
    for k in range(6):
        verts, _ = ds.mesh(k)
        extent = verts.abs().max()
        assert extent <= 0.9 + 1e-9  # longest side 1.8, centred: inside [-1, 1]^3
        assert math.isclose(float((verts.max(0).values - verts.min(0).values).max()), 1.8, rel_tol=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    (dict(categories="spoon"), "categories"), (dict(objects=0), "objects"), (dict(regime="many"), "regime"),
    (dict(viewpoints="top"), "viewpoints"), (dict(viewpoints=((0, 360), (50, 10))), "elevation"),
    (dict(split="val"), "split"), (dict(extent=0), "extent"), (dict(length=0), "length"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShadedViews(**kwargs)
