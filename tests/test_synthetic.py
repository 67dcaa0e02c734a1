"""Procedural objects and their renders (invrender.synthetic): closed outward parts, normalisation,
determinism, and masks equal to ray casting the ground-truth mesh by trimesh."""

import math
import os

import numpy as np
import pytest
import torch

from invrender import synthetic as syn

from .optional import optional_import

trimesh = optional_import("trimesh")


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
    hit = trimesh.ray.ray_triangle.RayMeshIntersector(mesh).intersects_any(origins, dirs).reshape(H, H)
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


# ------------------------------------------------------------------------------------------------
# The dataset writer and the ShapeNet-NMR loader


def _tree(root):
    import os

    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    kw = dict(objects_per_category=3, categories=("mug", "chair"), views=3, image_size=24, seed=7, points=400,
              voxel_resolution=16, progress=False)
    syn.generate_dataset(root / "a", **kw)
    syn.generate_dataset(root / "b", **kw)
    return root, kw


def test_generation_is_byte_identical_and_complete(tiny_dataset):
    root, kw = tiny_dataset
    a, b = _tree(root / "a"), _tree(root / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert "metadata.yaml" in a
    for cat in kw["categories"]:
        splits = [a[f"{cat}/softras_{s}.lst"].decode().split() for s in ("train", "val", "test")]
        names = sum(splits, [])
        assert sorted(names) == [f"{cat}_{k:05d}" for k in range(3)]
        for n in names:
            for f in ("cameras.npz", "pointcloud.npz", "voxels.npy", "mesh.npz", "image/0002.png", "mask/0002.png",
                      "parts/0002.png"):
                assert f"{cat}/{n}/{f}" in a


def test_loader_reads_it_and_ground_truth_agrees_with_the_images(tiny_dataset):
    import invrender
    from invrender.data import ShapeNetNMR

    root, kw = tiny_dataset
    ds = ShapeNetNMR(root / "a", split="train", load_pointcloud=True, load_voxels=True)
    assert len(ds) == 2 * 2 * 3  # 2 categories x 2 train objects x 3 views
    item = ds[4]
    assert item["image"].shape == (3, 24, 24) and item["mask"].shape == (1, 24, 24)
    mesh = np.load(root / "a" / item["synset"] / item["object"] / "mesh.npz")
    verts, faces = torch.from_numpy(mesh["verts"]), torch.from_numpy(mesh["faces"])
    # Project with the stored cameras and rasterize: the silhouette is the stored mask.
    world, cam = item["camera"]["world_mat"].double(), item["camera"]["camera_mat"].double()
    p = verts @ world[:, :3].T + world[:, 3]
    depth = -p[:, 2]
    ndc = torch.stack([cam[0, 0] * p[:, 0] / depth, cam[1, 1] * p[:, 1] / depth, depth], -1)
    sil = torch.nn.functional.avg_pool2d(
        (invrender.rasterize(ndc[None], faces, 48, layers=1, sigma=0.0).face_idx[..., 0] >= 0).double()[:, None], 2)
    from PIL import Image

    png = root / "a" / item["synset"] / item["object"] / "mask" / f"{int(item['view']):04d}.png"
    stored = torch.from_numpy(np.array(Image.open(png))).double() / 255  # antialiased coverage
    assert (sil[0, 0] - stored).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(item["mask"][0] > 0.5, stored > 0.5)
    # Points lie on the mesh, inside occupied voxels (or next to them: they are on the surface).
    pts = item["pointcloud"]["points"].double()
    tm = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    _, dist, _ = trimesh.proximity.closest_point(tm, pts[:200].numpy())
    assert dist.max() < 1e-6
    vox = item["voxels"]
    R = vox.shape[0]
    w = ((pts[:, 0] + 0.5) * R).floor().long().clamp(0, R - 1)
    h = ((0.5 - pts[:, 1]) * R).floor().long().clamp(0, R - 1)
    d = ((0.5 - pts[:, 2]) * R).floor().long().clamp(0, R - 1)
    near = torch.nn.functional.max_pool3d(vox.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    assert near[d, h, w].float().mean() == 1.0
    assert 0.02 < vox.float().mean() < 0.8


def test_cli_generates(tmp_path):
    from invrender.cli import main

    assert main(["data", "synth", "--root", str(tmp_path / "d"), "--objects", "1", "--views", "2", "--size", "16",
                 "--categories", "car", "--points", "100", "--voxels", "8", "--quiet"]) == 0
    assert (tmp_path / "d" / "car" / "car_00000" / "image" / "0001.png").exists()


def test_default_dataset_is_generated_once_and_reused(tmp_path, capsys):
    root = syn.default_dataset(str(tmp_path), objects_per_category=1, categories=("car",), views=1, image_size=8,
                               points=50, voxel_resolution=8, progress=False)
    assert "generating the default synthetic dataset" in capsys.readouterr().out
    before = _tree(root)
    assert syn.default_dataset(str(tmp_path), objects_per_category=1, categories=("car",), views=1, image_size=8,
                               points=50, voxel_resolution=8, progress=False) == root
    assert capsys.readouterr().out == ""
    assert _tree(root) == before


def test_grayscale_views_for_the_voxel_models(tiny_dataset):
    from invrender.data import GrayscaleViews, ShapeNetNMR

    root, _ = tiny_dataset
    base = ShapeNetNMR(root / "a", split="train")
    views = GrayscaleViews(base, image_size=12)
    item = views[3]
    assert item["image"].shape == (1, 12, 12) and item["mask"].shape == (1, 12, 12) and int(item["index"]) == 3
    src = base[3]
    luma = (src["image"] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0) * src["mask"][0]
    expect = torch.nn.functional.avg_pool2d(luma[None, None], 2)[0]  # 24 -> 12 by area averaging
    assert torch.allclose(item["image"], expect, atol=1e-6)
    assert (item["image"][item["mask"] == 0] == 0).all()  # black background
    with pytest.raises(ValueError, match="image_size"):
        GrayscaleViews(base, image_size=0)


# ------------------------------------------------------------------------------------------------
# Semantic parts (UMR's part segmentations)


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_semantic_parts_are_the_category_list_on_every_object(category):
    names = syn.SEMANTIC_PARTS[category]
    assert len(names) >= 2 and len(set(names)) == len(names)
    for seed in range(6):  # tables come with legs or a pedestal: both give the same semantic parts
        obj = syn.make_object(category, seed)
        labels = obj.semantic_labels()
        assert obj.semantic_names == names
        assert labels.shape == (obj.mesh()[1].shape[0],) and labels.dtype == torch.long
        assert sorted(set(labels.tolist())) == list(range(len(names)))
        assert obj.part_centers().shape == (len(names), 3)


def test_semantic_grouping_of_a_chair():
    obj = syn.make_object("chair", 0)
    assert [p.semantic for p in obj.parts] == ["seat", "back"] + ["legs"] * 4
    assert obj.semantic_of_parts().tolist() == [0, 1, 2, 2, 2, 2]
    obj.parts[0].semantic = "cushion"
    with pytest.raises(ValueError, match="cushion"):
        obj.semantic_labels()


def test_part_centers_are_area_weighted_surface_centroids():
    obj = syn.make_object("airplane", 4)
    verts, faces, _ = obj.mesh()
    labels = obj.semantic_labels().numpy()
    tm = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    for k in range(len(obj.semantic_names)):
        sel = labels == k
        expect = (tm.area_faces[sel, None] * tm.triangles_center[sel]).sum(0) / tm.area_faces[sel].sum()
        assert np.allclose(obj.part_centers()[k].numpy(), expect, atol=1e-12)
    # The mean of many uniform surface samples of the part converges to it.
    seat = syn.make_object("chair", 1)
    v, f, _ = seat.mesh()
    keep = seat.semantic_labels() == 0
    from invrender.mesh import sample_points

    pts = sample_points(v, f[keep], 200_000, generator=torch.Generator().manual_seed(0)).reshape(-1, 3)
    assert torch.allclose(pts.mean(0), seat.part_centers()[0], atol=3e-3)


def test_part_labels_follow_the_mask_and_the_front_most_face():
    obj = syn.make_object("chair", 2)
    az, el = torch.tensor([0.4, 2.5, 4.0]), torch.full((3,), math.radians(30))
    _, mask = syn.render_object(obj, az, el, 32)
    labels = syn.render_part_labels(obj, az, el, 32)
    assert labels.shape == (3, 32, 32) and labels.dtype == torch.uint8
    assert torch.equal(labels > 0, mask[:, 0] >= 0.5)  # the mask PNG's > 127
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}
    # Without supersampling each pixel is the semantic part of the first face a ray through its centre hits.
    H = 40
    lab1 = syn.render_part_labels(obj, az[:1], el[:1], H, supersample=1)[0].numpy()
    verts, faces, _ = obj.mesh()
    R = syn.camera_pose(az[:1].double(), el[:1].double())[0].numpy()
    mesh = trimesh.Trimesh(verts.numpy() @ R.T, faces.numpy(), process=False)
    c = (2 * np.arange(H) + 1 - H) / H
    x, y = np.meshgrid(c, -c)
    dirs = np.stack([x / syn.FOCAL, y / syn.FOCAL, -np.ones_like(x)], -1).reshape(-1, 3)
    origins = np.tile([0.0, 0.0, syn.DISTANCE], (H * H, 1))
    tri = trimesh.ray.ray_triangle.RayMeshIntersector(mesh).intersects_first(origins, dirs).reshape(H, H)
    expect = np.where(tri >= 0, obj.semantic_labels().numpy()[np.maximum(tri, 0)] + 1, 0)
    assert (expect > 0).sum() > 200
    assert (lab1 != expect).sum() <= 6  # rays grazing an edge or a seam between parts may go either way


def test_generated_part_maps_and_centres(tiny_dataset):
    import yaml
    from PIL import Image

    root, kw = tiny_dataset
    meta = yaml.safe_load((root / "a" / "metadata.yaml").read_text())
    for cat in kw["categories"]:
        assert meta[cat]["parts"] == list(syn.SEMANTIC_PARTS[cat])
        obj_dir = root / "a" / cat / f"{cat}_00001"
        mesh = np.load(obj_dir / "mesh.npz")
        obj = syn.make_object(cat, 7 * 1_000_003 + kw["categories"].index(cat) * 10_007 + 1)
        assert np.array_equal(mesh["semantic"], obj.semantic_labels().numpy())
        assert mesh["part_centers"].shape == (len(syn.SEMANTIC_PARTS[cat]), 3)
        assert np.allclose(mesh["part_centers"], obj.part_centers().numpy())
        for v in range(kw["views"]):
            parts = np.array(Image.open(obj_dir / "parts" / f"{v:04d}.png"))
            mask = np.array(Image.open(obj_dir / "mask" / f"{v:04d}.png"))
            assert parts.dtype == np.uint8 and parts.shape == mask.shape == (24, 24)
            assert np.array_equal(parts > 0, mask > 127)
            assert parts.max() <= len(syn.SEMANTIC_PARTS[cat])


def test_loader_part_maps_and_keypoints(tiny_dataset):
    from invrender.data import ShapeNetNMR

    root, kw = tiny_dataset
    ds = ShapeNetNMR(root / "a", split="train", load_parts=True)
    assert ds.part_names == [list(syn.SEMANTIC_PARTS[c]) for c in ds.categories]
    assert ds.num_parts == 3  # chair 3, mug 2: the mug's third channel is empty
    for i in range(len(ds)):
        item = ds[i]
        parts, kp, mask = item["parts"], item["keypoints"], item["mask"]
        assert parts.shape == (3, 24, 24) and parts.dtype == torch.float32
        assert kp.shape == (3, 3) and kp.dtype == torch.float32
        assert torch.equal(parts.sum(0), mask[0])  # one-hot on the silhouette, zero on the background
        present = parts.flatten(1).amax(1)
        assert torch.equal(kp[:, 2], present)
        assert (kp[present == 0] == 0).all() and (kp[:, :2].abs() <= 1).all()
        if ds.categories[int(item["category"])] == "mug":
            assert (parts[2] == 0).all() and (kp[2] == 0).all()
    # Resized with nearest-neighbour filtering, like the mask; keypoints do not depend on the size.
    big = ShapeNetNMR(root / "a", split="train", load_parts=True, image_size=48)
    item, small = big[5], ds[5]
    assert torch.equal(item["parts"], small["parts"].repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert torch.equal(item["keypoints"], small["keypoints"])
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["parts"].shape == (len(ds), 3, 24, 24) and batch["keypoints"].shape == (len(ds), 3, 3)


@pytest.fixture(scope="module")
def chairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chairs")
    syn.generate_dataset(root, objects_per_category=4, categories=("chair",), views=8, image_size=32, seed=3,
                         points=0, voxel_resolution=0, progress=False)
    return root


def test_projected_part_centres_land_on_their_parts(chairs):
    """A chair's back (a thin plate, rarely hidden) and seat (a flat box, partly hidden behind the back from some
    views) are convex: their centres project onto, or next to, their own pixels in the rendered part map."""
    from invrender.data import ShapeNetNMR

    S = 32
    dist = {0: [], 1: []}
    for split in ("train", "test"):
        ds = ShapeNetNMR(chairs, split=split, load_parts=True)
        for i in range(len(ds)):
            item = ds[i]
            for k in dist:
                if item["keypoints"][k, 2] == 0:
                    continue
                rows, cols = np.nonzero(item["parts"][k].numpy())
                x, y = item["keypoints"][k, :2].tolist()
                j, r = (x + 1) * S / 2 - 0.5, (1 - y) * S / 2 - 0.5  # NDC to pixel indices (design.md)
                dist[k].append(np.sqrt((rows - r) ** 2 + (cols - j) ** 2).min())
    seat, back = np.array(dist[0]), np.array(dist[1])
    assert len(seat) >= 24 and len(back) >= 24
    assert back.max() <= 1.0  # on the back's pixels, or within a pixel of them
    assert seat.max() <= 4.0 and np.median(seat) <= 1.0


def test_default_dataset_folder_names_the_version_and_the_settings(tmp_path):
    kw = dict(objects_per_category=1, categories=("mug",), views=1, image_size=8, points=20, voxel_resolution=4,
              progress=False)
    a = syn.default_dataset(str(tmp_path), **kw)
    assert os.path.basename(a).startswith(f"synthetic-v{syn.DATASET_VERSION}-") and syn.DATASET_VERSION >= 2
    assert (tmp_path / os.path.basename(a) / "mug" / "mug_00000" / "parts" / "0000.png").exists()
    b = syn.default_dataset(str(tmp_path), **dict(kw, views=2))
    assert a != b and os.path.exists(os.path.join(b, "mug", "mug_00000", "image", "0001.png"))
    c = syn.default_dataset(str(tmp_path), **dict(kw, progress=True, seed=0))  # explicit default seed, progress
    assert c == a
    with pytest.raises(TypeError):
        syn.default_dataset(str(tmp_path), colour="red")


def test_loader_part_noise_is_a_fixed_corruption_inside_the_mask(tiny_dataset):
    from invrender.data import PartNoise, ShapeNetNMR

    root, _ = tiny_dataset
    clean = ShapeNetNMR(root / "a", split="train", load_parts=True)
    noise = dict(grow=2, shrink=2, swap_fraction=0.3, seed=5)
    noisy = ShapeNetNMR(root / "a", split="train", load_parts=True, part_noise=PartNoise(**noise))
    again = ShapeNetNMR(root / "a", split="train", load_parts=True, part_noise=PartNoise(**noise))
    changed = 0
    for i in range(len(clean)):
        c, n = clean[i], noisy[i]
        assert torch.equal(n["parts"].sum(0), c["mask"][0])  # relabelled inside the silhouette only
        assert torch.equal(n["keypoints"], c["keypoints"])  # the keypoints stay the ground truth
        assert torch.equal(n["parts"], again[i]["parts"]) and torch.equal(n["parts"], noisy[i]["parts"])
        changed += not torch.equal(n["parts"], c["parts"])
    assert changed >= len(clean) // 2
