"""Dataset loaders on tiny datasets written to tmp_path (no downloads)."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from invrender.data import MNIST, ImageFolder, KatoShapeNet, PartNoise, ShapeNetNMR, one_hot_parts, project_to_ndc

SYNSETS = {"02691156": "airplane,aeroplane,plane", "03001627": "chair"}


# --------------------------------------------------------------------------- ShapeNet-NMR


def _img(seed, size=8, channels=3):
    return np.random.RandomState(seed).randint(0, 256, (size, size, channels), dtype=np.uint8)


def _mask(seed, size=8):
    m = np.zeros((size, size), np.uint8)
    m[seed % 3: size - 1, 1: size - (seed % 2)] = 255
    return m


def _world(view):
    w = np.eye(4, dtype=np.float32)
    w[:3, 3] = [0.1 * view, -0.2, 2.0 + view]
    return w


def _cam(view):
    c = np.eye(4, dtype=np.float32)
    c[0, 0] = c[1, 1] = 2.0 + view
    return c


def make_nmr(root, objects=None, views=3, size=8, rgba=False, mask=True, pointcloud=False, voxels=False,
             world4x4=True):
    """objects: {synset: {split: [names]}}; returns {(synset, name, view): (rgb uint8, mask bool)}."""
    objects = objects or {"02691156": {"train": ["a0", "a1"], "test": ["a2"]},
                          "03001627": {"train": ["c0"], "test": ["c1"]}}
    with open(root / "metadata.yaml", "w") as f:
        yaml.safe_dump({s: {"id": s, "name": n} for s, n in SYNSETS.items()}, f)
    truth = {}
    seed = 0
    for synset, splits in objects.items():
        (root / synset).mkdir()
        for split, names in splits.items():
            (root / synset / f"softras_{split}.lst").write_text("\n".join(names) + "\n")
            for name in names:
                d = root / synset / name
                (d / "image").mkdir(parents=True)
                if mask:
                    (d / "mask").mkdir()
                cams = {}
                for v in range(views):
                    seed += 1
                    rgb, m = _img(seed, size), _mask(seed, size)
                    if rgba:
                        Image.fromarray(np.dstack([rgb, m])).save(d / "image" / f"{v:04d}.png")
                    else:
                        Image.fromarray(rgb).save(d / "image" / f"{v:04d}.png")
                    if mask:
                        Image.fromarray(m).save(d / "mask" / f"{v:04d}.png")
                    cams[f"world_mat_{v}"] = _world(v) if world4x4 else _world(v)[:3]
                    cams[f"camera_mat_{v}"] = _cam(v)
                    cams[f"scale_mat_{v}"] = np.eye(4)
                    truth[(synset, name, v)] = (rgb, m > 0)
                np.savez(d / "cameras.npz", **cams)
                if pointcloud:
                    p = np.random.RandomState(seed).rand(5, 3).astype(np.float32) - 0.5
                    np.savez(d / "pointcloud.npz", points=p, normals=-p)
                if voxels:
                    np.save(d / "voxels.npy", (np.arange(8 ** 3).reshape(8, 8, 8) % (seed + 2) == 0))
    return truth


def test_nmr_items_round_trip(tmp_path):
    truth = make_nmr(tmp_path)
    ds = ShapeNetNMR(tmp_path, split="train")
    assert ds.categories == ["02691156", "03001627"]
    assert len(ds) == 3 * 3  # a0, a1, c0 x 3 views
    seen = set()
    for i in range(len(ds)):
        it = ds[i]
        assert it["image"].shape == (3, 8, 8) and it["image"].dtype == torch.float32
        assert it["mask"].shape == (1, 8, 8) and it["mask"].dtype == torch.float32
        assert set(it["mask"].unique().tolist()) <= {0.0, 1.0}
        v = int(it["view"])
        key = (it["synset"], it["object"], v)
        rgb, m = truth[key]
        assert torch.equal((it["image"] * 255).round().byte(), torch.from_numpy(rgb).permute(2, 0, 1))
        assert torch.equal(it["mask"][0].bool(), torch.from_numpy(m))
        assert torch.equal(it["camera"]["world_mat"], torch.from_numpy(_world(v)[:3]))
        assert torch.equal(it["camera"]["camera_mat"], torch.from_numpy(_cam(v)))
        assert it["camera"]["world_mat"].dtype == torch.float32
        assert int(it["category"]) == ds.categories.index(it["synset"])
        assert it["category"].dtype == torch.int64 and it["view"].dtype == torch.int64
        seen.add(key)
    assert {k[1] for k in seen} == {"a0", "a1", "c0"}  # test objects excluded
    assert ds[-1]["object"] == "c0"
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_nmr_split_categories_views(tmp_path):
    make_nmr(tmp_path, world4x4=False)
    test = ShapeNetNMR(tmp_path, split="test")
    assert len(test) == 6 and {test[i]["object"] for i in range(6)} == {"a2", "c1"}
    chairs = ShapeNetNMR(tmp_path, categories=["chair"], split="train", views=2)
    assert chairs.categories == ["03001627"] and len(chairs) == 2
    assert int(chairs[0]["category"]) == 0 and chairs[1]["object"] == "c0"
    assert chairs[0]["camera"]["world_mat"].shape == (3, 4)
    # order of the categories argument defines the category index
    both = ShapeNetNMR(tmp_path, categories=["03001627", "airplane"], views=[2])
    assert len(both) == 3 and [int(both[i]["view"]) for i in range(3)] == [2, 2, 2]
    assert int(both[0]["category"]) == 0 and both[0]["synset"] == "03001627"
    assert int(both[1]["category"]) == 1 and both[1]["object"] == "a0"
    with pytest.raises(FileNotFoundError, match="0003.png"):
        ShapeNetNMR(tmp_path, views=6)
    with pytest.raises(ValueError, match="unknown or ambiguous category 'sofa'"):
        ShapeNetNMR(tmp_path, categories=["sofa"])


def test_nmr_alpha_mask_resize_pointcloud_voxels(tmp_path):
    truth = make_nmr(tmp_path, rgba=True, mask=False, size=16, pointcloud=True, voxels=True)
    ds = ShapeNetNMR(tmp_path, load_pointcloud=True, load_voxels=True)
    it = ds[0]
    rgb, m = truth[(it["synset"], it["object"], int(it["view"]))]
    assert torch.equal((it["image"] * 255).round().byte(), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(it["mask"][0].bool(), torch.from_numpy(m))
    assert it["pointcloud"]["points"].shape == (5, 3) and it["pointcloud"]["normals"].dtype == torch.float32
    assert torch.equal(it["pointcloud"]["normals"], -it["pointcloud"]["points"])
    assert it["voxels"].shape == (8, 8, 8) and it["voxels"].dtype == torch.float32
    small = ShapeNetNMR(tmp_path, image_size=8)
    s = small[0]
    assert s["image"].shape == (3, 8, 8) and s["mask"].shape == (1, 8, 8)
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    # nearest-neighbour: PIL samples the pixel at source coordinate 2 * i + 1 for a 2x shrink
    assert torch.equal(s["mask"][0].bool(), torch.from_numpy(np.ascontiguousarray(m[1::2, 1::2])))
    big = ShapeNetNMR(tmp_path, image_size=(32, 24))
    assert big[0]["image"].shape == (3, 32, 24) and big[0]["mask"].shape == (1, 32, 24)
    assert 0.0 <= float(big[0]["image"].min()) and float(big[0]["image"].max()) <= 1.0


def test_nmr_resize_constant_image(tmp_path):
    make_nmr(tmp_path, objects={"03001627": {"train": ["c0"]}})
    d = tmp_path / "03001627" / "c0"
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(d / "image" / "0000.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(d / "mask" / "0000.png")
    it = ShapeNetNMR(tmp_path, categories="03001627", image_size=16)[0]
    assert it["image"].shape == (3, 16, 16)
    assert torch.allclose(it["image"], torch.full((3, 16, 16), 77 / 255))
    assert torch.equal(it["mask"], torch.ones(1, 16, 16))


def test_nmr_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.yaml"):
        ShapeNetNMR(tmp_path)
    make_nmr(tmp_path)
    with pytest.raises(FileNotFoundError, match="softras_val.lst"):
        ShapeNetNMR(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="pointcloud.npz"):
        ShapeNetNMR(tmp_path, load_pointcloud=True)
    with pytest.raises(FileNotFoundError, match="voxels.npy"):
        ShapeNetNMR(tmp_path, load_voxels=True)
    # a listed object whose folder is missing
    with open(tmp_path / "03001627" / "softras_train.lst", "a") as f:
        f.write("ghost\n")
    with pytest.raises(FileNotFoundError, match=r"ghost.*softras_train.lst"):
        ShapeNetNMR(tmp_path)
    (tmp_path / "03001627" / "softras_train.lst").write_text("c0\n")
    # malformed cameras: wrong shape, missing key
    d = tmp_path / "03001627" / "c0"
    np.savez(d / "cameras.npz", world_mat_0=np.eye(3), camera_mat_0=np.eye(4))
    ds = ShapeNetNMR(tmp_path, categories=["chair"])
    with pytest.raises(ValueError, match=r"world_mat_0.*\(3, 3\)"):
        ds[0]
    with pytest.raises(ValueError, match="world_mat_1"):
        ds[1]
    # malformed metadata
    (tmp_path / "metadata.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="metadata.yaml"):
        ShapeNetNMR(tmp_path)


def test_nmr_no_mask_no_alpha(tmp_path):
    make_nmr(tmp_path, mask=False)
    with pytest.raises(ValueError, match="no alpha channel"):
        ShapeNetNMR(tmp_path)[0]


# --------------------------------------------------------------------------- Kato


def make_kato(root, synset, split, n_obj, seed, voxels=True):
    imgs = np.random.RandomState(seed).randint(0, 256, (n_obj * 24, 4, 64, 64), dtype=np.uint8)
    imgs[:, 3] = np.where(imgs[:, 3] > 127, 255, 0)
    np.savez_compressed(root / f"{synset}_{split}_images.npz", imgs)
    vox = None
    if voxels:
        vox = (np.random.RandomState(seed + 1).rand(n_obj, 32, 32, 32) > 0.5).astype(np.int32)
        np.savez_compressed(root / f"{synset}_{split}_voxels.npz", vox)
    return imgs, vox


def test_kato(tmp_path):
    ia, va = make_kato(tmp_path, "02691156", "train", 2, 0)
    ic, vc = make_kato(tmp_path, "03001627", "train", 1, 5)
    make_kato(tmp_path, "03001627", "val", 1, 9)
    ds = KatoShapeNet(tmp_path, ["03001627", "02691156"], split="train")
    assert len(ds) == 72 and ds.load_voxels
    it = ds[30]  # airplane row 6: object 0, view 6
    assert it["image"].shape == (3, 64, 64) and it["image"].dtype == torch.float32
    assert it["mask"].shape == (1, 64, 64)
    assert torch.equal((it["image"] * 255).round().byte(), torch.from_numpy(ia[6, :3]))
    assert torch.equal((it["mask"][0] * 255).round().byte(), torch.from_numpy(ia[6, 3]))
    assert set(it["mask"].unique().tolist()) == {0.0, 1.0}
    assert int(it["category"]) == 1 and it["synset"] == "02691156"
    assert int(it["object"]) == 0 and int(it["view"]) == 6
    assert float(it["azimuth"]) == 90.0 and float(it["elevation"]) == 30.0
    assert float(it["distance"]) == pytest.approx(2.732)
    assert torch.equal(it["voxels"], torch.from_numpy(va[0]).float())
    it = ds[71]
    assert int(it["object"]) == 1 and int(it["view"]) == 23 and torch.equal(it["voxels"], torch.from_numpy(va[1]).float())
    assert int(ds[23]["category"]) == 0 and torch.equal(ds[23]["voxels"], torch.from_numpy(vc[0]).float())
    # categories=None discovers the files of the split
    assert KatoShapeNet(tmp_path, split="val").categories == ["03001627"]
    assert len(KatoShapeNet(tmp_path, split="val")) == 24


def test_kato_optional_voxels_and_errors(tmp_path):
    make_kato(tmp_path, "02691156", "test", 1, 0, voxels=False)
    ds = KatoShapeNet(tmp_path, "02691156", split="test")
    assert not ds.load_voxels and "voxels" not in ds[0]
    with pytest.raises(FileNotFoundError, match="02691156_test_voxels.npz"):
        KatoShapeNet(tmp_path, "02691156", split="test", load_voxels=True)
    with pytest.raises(FileNotFoundError, match="02691156_train_images.npz"):
        KatoShapeNet(tmp_path, "02691156", split="train")
    np.savez(tmp_path / "bad_test_images.npz", np.zeros((25, 4, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="multiple of 24"):
        KatoShapeNet(tmp_path, "bad", split="test")
    np.savez(tmp_path / "bad_test_images.npz", np.zeros((24, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 \(N\*24, 4"):
        KatoShapeNet(tmp_path, "bad", split="test")
    np.savez(tmp_path / "bad_test_images.npz", images=np.zeros((24, 4, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="no array 'arr_0'"):
        KatoShapeNet(tmp_path, "bad", split="test")
    np.savez(tmp_path / "bad_test_images.npz", np.zeros((48, 4, 64, 64), np.uint8))
    np.savez(tmp_path / "bad_test_voxels.npz", np.zeros((3, 32, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="3 voxel grids"):
        KatoShapeNet(tmp_path, "bad", split="test")


# --------------------------------------------------------------------------- MNIST


def idx_bytes(arr, magic):
    return struct.pack(">i", magic) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.astype(np.uint8).tobytes()


def make_mnist(root, n=5, gz=False, prefix="train"):
    rs = np.random.RandomState(n)
    imgs = rs.randint(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rs.randint(0, 10, n).astype(np.uint8)
    for name, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(imgs, 2051)),
                       (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049))):
        if gz:
            with gzip.open(root / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (root / name).write_bytes(data)
    return imgs, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    imgs, labels = make_mnist(tmp_path, 5, gz=gz)
    ti, tl = make_mnist(tmp_path, 3, gz=gz, prefix="t10k")
    ds = MNIST(tmp_path)
    assert len(ds) == 5
    for i in range(5):
        it = ds[i]
        assert it["image"].shape == (1, 28, 28) and it["image"].dtype == torch.float32
        assert torch.equal((it["image"][0] * 255).round().byte(), torch.from_numpy(imgs[i]))
        assert it["label"].dtype == torch.int64 and int(it["label"]) == labels[i]
    test = MNIST(tmp_path, split="test", kind="fashion")
    assert len(test) == 3 and int(test[2]["label"]) == tl[2]


def test_mnist_resize_and_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    make_mnist(raw, 2)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.full((2, 28, 28), 51, np.uint8), 2051))
    ds = MNIST(tmp_path, kind="fashion", image_size=64)
    assert ds[0]["image"].shape == (1, 64, 64)
    assert torch.allclose(ds[0]["image"], torch.full((1, 64, 64), 0.2))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MNIST(tmp_path, kind="mnist")


def test_mnist_errors(tmp_path):
    imgs, labels = make_mnist(tmp_path, 4)
    good = idx_bytes(imgs, 2051)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(imgs, 2049))
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated"):
        MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(good[:10])
    with pytest.raises(ValueError, match="truncated"):
        MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(good)
    blob = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cannot read IDX"):
        MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:3], 2049))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        MNIST(tmp_path)
    with pytest.raises(ValueError, match="split"):
        MNIST(tmp_path, split="val")


# --------------------------------------------------------------------------- ImageFolder


def test_image_folder(tmp_path):
    (tmp_path / "b" / "sub").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    a = _img(1, 16)
    Image.fromarray(a).save(tmp_path / "a.png")
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, 4:12] = 200  # centre square is uniform
    Image.fromarray(wide).save(tmp_path / "b" / "wide.PNG")
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(tmp_path / "b" / "sub" / "grey.jpg")
    Image.fromarray(np.dstack([a, np.full((16, 16), 10, np.uint8)])).save(tmp_path / "b" / "sub" / "z.png")
    Image.fromarray(a).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, image_size=8)
    rel = [os.path.relpath(p, tmp_path) for p in ds.files]
    assert rel == ["a.png", os.path.join("b", "sub", "grey.jpg"), os.path.join("b", "sub", "z.png"),
                   os.path.join("b", "wide.PNG")]
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 8, 8) and ds[i]["image"].dtype == torch.float32
    assert torch.allclose(ds[3]["image"], torch.full((3, 8, 8), 200 / 255))  # centre crop then resize
    assert torch.allclose(ds[1]["image"], torch.full((3, 8, 8), 100 / 255), atol=2 / 255)  # grey -> RGB
    assert ds[0]["path"] == str(tmp_path / "a.png")
    full = ImageFolder(tmp_path, image_size=None, extensions=(".png",))
    assert len(full) == 3
    assert torch.equal((full[0]["image"] * 255).round().byte(), torch.from_numpy(a).permute(2, 0, 1))
    assert torch.equal(full[1]["image"], full[0]["image"])  # RGBA: alpha dropped
    nocrop = ImageFolder(tmp_path / "b", image_size=(8, 16), extensions=("png",), center_crop=False)
    assert len(nocrop) == 2 and nocrop[1]["image"].shape == (3, 8, 16)  # b/sub/z.png, b/wide.PNG
    assert torch.equal((nocrop[1]["image"] * 255).round().byte(), torch.from_numpy(wide).permute(2, 0, 1))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"\.png"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    ds = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]


# --------------------------------------------------------------------------- DataLoader


def test_dataloader_collate(tmp_path):
    (tmp_path / "nmr").mkdir()
    make_nmr(tmp_path / "nmr", pointcloud=True)
    batch = next(iter(DataLoader(ShapeNetNMR(tmp_path / "nmr", load_pointcloud=True), batch_size=2)))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["mask"].shape == (2, 1, 8, 8)
    assert batch["camera"]["world_mat"].shape == (2, 3, 4) and batch["camera"]["camera_mat"].shape == (2, 4, 4)
    assert batch["object"] == ["a0", "a0"] and batch["view"].tolist() == [0, 1]
    assert batch["category"].shape == (2,) and batch["pointcloud"]["points"].shape == (2, 5, 3)
    (tmp_path / "kato").mkdir()
    make_kato(tmp_path / "kato", "02691156", "train", 1, 0)
    b = next(iter(DataLoader(KatoShapeNet(tmp_path / "kato", "02691156"), batch_size=2, shuffle=True)))
    assert b["image"].shape == (2, 3, 64, 64) and b["voxels"].shape == (2, 32, 32, 32) and b["azimuth"].shape == (2,)
    (tmp_path / "mnist").mkdir()
    make_mnist(tmp_path / "mnist", 3)
    b = next(iter(DataLoader(MNIST(tmp_path / "mnist"), batch_size=2)))
    assert b["image"].shape == (2, 1, 28, 28) and b["label"].dtype == torch.int64
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(_img(i, 12 + 2 * i)).save(tmp_path / "img" / f"{i}.jpg")
    b = next(iter(DataLoader(ImageFolder(tmp_path / "img", image_size=16), batch_size=2)))
    assert b["image"].shape == (2, 3, 16, 16) and len(b["path"]) == 2


@pytest.mark.parametrize("style", ["opencv", "opengl"])
def test_nmr_camera_rotation_in_invrender_convention(tmp_path, style):
    # DVR's ShapeNet-NMR cameras are OpenCV-style (camera at the origin looking along +z, y down, the object
    # at t_z = +2.732); invrender's synthetic files are OpenGL-style (looking along -z, t_z = -2.732). Either
    # way the item's "rotation" must put a world point where that file's own projection puts it.
    from invrender.ops import rotation_matrix

    f, d = 3.732, 2.732
    R = rotation_matrix(torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)).reshape(3, 3).numpy()
    R = R @ np.array([[1.0, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]])  # plus a roll-ish turn: a generic rotation
    if style == "opencv":
        R = np.diag([1.0, -1.0, -1.0]) @ R  # the same camera described as OpenCV
    t = np.array([0.0, 0.0, d if style == "opencv" else -d])
    np.savez(tmp_path / "cameras.npz", world_mat_0=np.concatenate([R, t[:, None]], 1), camera_mat_0=np.eye(4))
    cam = ShapeNetNMR._camera(str(tmp_path / "cameras.npz"), 0)
    p = np.array([0.3, -0.2, 0.25])
    c = R @ p + t
    if style == "opencv":
        expected = (f * c[0] / c[2], -f * c[1] / c[2])  # x right, y down -> NDC y up
    else:
        expected = (f * c[0] / -c[2], f * c[1] / -c[2])
    q = cam["rotation"].double().numpy() @ p
    got = (f * q[0] / (d - q[2]), f * q[1] / (d - q[2]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The part keypoints' projection reads either file the same way.
    world = np.concatenate([R, t[:, None]], 1)
    np.testing.assert_allclose(project_to_ndc(p[None], world, np.diag([f, f, 1.0, 1.0]))[0], expected, rtol=1e-12)
    assert cam["rotation"].dtype == torch.float32
    np.testing.assert_allclose(cam["rotation"].double().numpy() @ cam["rotation"].double().numpy().T, np.eye(3),
                               atol=1e-5)


# --------------------------------------------------------------------------- part maps (UMR)


def _two_parts(h=12, w=16):
    lab = np.zeros((h, w), np.int64)
    lab[2:10, 2:8], lab[2:10, 8:14] = 1, 2
    return lab


def _blobs(seed, size=24, parts=3):
    """A random silhouette (a filled ellipse) cut into ``parts`` labelled sectors around a random centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    ry, rx = rng.uniform(0.25, 0.45, 2) * size
    fg = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    angle = (np.arctan2(yy - cy, xx - cx) + np.pi + rng.uniform(0, 2 * np.pi)) % (2 * np.pi)
    return np.where(fg, 1 + (angle * parts / (2 * np.pi)).astype(np.int64) % parts, 0)


def test_one_hot_parts():
    lab = _two_parts()
    p = one_hot_parts(lab, 3)
    assert p.shape == (3, 12, 16) and p.dtype == torch.float32
    assert torch.equal(p.sum(0), torch.from_numpy((lab > 0).astype(np.float32)))
    assert p[2].sum() == 0 and p[0].sum() == 48
    assert torch.equal(one_hot_parts(lab.astype(np.uint8), 3), p)


def test_part_noise_zero_is_the_identity():
    noise = PartNoise()
    assert noise.is_identity
    for seed in range(5):
        lab = _blobs(seed)
        assert np.array_equal(noise(lab, seed, 3), lab)
    # Equal offsets move nothing either.
    assert np.array_equal(PartNoise(grow=2, shrink=2, seed=1)._move_boundaries(
        _two_parts(), np.array([1, 2]), np.array([1, 1])), _two_parts())


def test_part_noise_moves_a_boundary_by_the_offset_difference():
    lab = _two_parts()
    noise = PartNoise(grow=3, shrink=3, seed=0)
    for d1 in range(-3, 4):
        for d2 in range(-3, 4):
            out = noise._move_boundaries(lab, np.array([1, 2]), np.array([d1, d2]))
            shift = d1 - d2  # columns 2..7 are part 1, 8..13 part 2: a shift of 6 swallows a part whole
            expect = _two_parts()
            expect[2:10, 2:8 + shift], expect[2:10, 8 + shift:14] = 1, 2
            assert np.array_equal(out, expect), (d1, d2)


@pytest.mark.parametrize("grow, shrink", [(3, 0), (0, 3), (2, 2)])
def test_part_noise_grows_and_shrinks_within_the_mask(grow, shrink):
    noise = PartNoise(grow=grow, shrink=shrink, seed=4)
    changed = 0
    for index in range(30):
        lab = _blobs(index, parts=3)
        out = noise(lab, index, 3)
        offsets, swap = noise.draw(index, 3)
        assert swap is None and offsets.min() >= -shrink and offsets.max() <= grow
        assert np.array_equal(out > 0, lab > 0)  # relabelled inside the silhouette only, and all of it
        area = np.array([(lab == k).sum() for k in (1, 2, 3)])
        new = np.array([(out == k).sum() for k in (1, 2, 3)])
        for k in range(3):
            if offsets[k] == offsets.max():
                assert new[k] >= area[k] and ((out == k + 1) >= (lab == k + 1)).all()  # only grows
            if offsets[k] == offsets.min():
                assert new[k] <= area[k] and ((out == k + 1) <= (lab == k + 1)).all()  # only shrinks
            if offsets[k] > offsets.max() - 1e-9 and offsets[k] > np.sort(offsets)[1]:
                assert new[k] > area[k]  # the strict largest grows into its neighbours
        changed += not np.array_equal(out, lab)
    assert changed >= 20


def test_part_noise_swap_fraction_one_swaps_every_image():
    noise = PartNoise(swap_fraction=1.0, seed=2)
    pairs = set()
    for index in range(40):
        lab = _blobs(index, parts=3)
        out = noise(lab, index, 3)
        _, (a, b) = noise.draw(index, 3, np.unique(lab[lab > 0]))
        assert a != b and not np.array_equal(out, lab)
        expect = np.where(lab == a, b, np.where(lab == b, a, lab))
        assert np.array_equal(out, expect)
        pairs.add((a, b))
    assert pairs == {(1, 2), (1, 3), (2, 3)}
    # A map with one part swaps it with another label; an empty one stays empty.
    one = np.where(_two_parts() > 0, 2, 0)
    out = noise(one, 0, 3)
    assert np.array_equal(out > 0, one > 0) and len(np.unique(out[out > 0])) == 1 and (out[out > 0] != 2).all()
    assert np.array_equal(noise(np.zeros((4, 4), np.int64), 0, 3), np.zeros((4, 4)))
    half = PartNoise(swap_fraction=0.5, seed=2)
    swapped = sum(half.draw(i, 3)[1] is not None for i in range(400))
    assert 160 < swapped < 240


def test_part_noise_is_deterministic_per_index():
    lab = _blobs(7, parts=3)
    a, b = (PartNoise(grow=2, shrink=2, swap_fraction=0.5, seed=9) for _ in range(2))
    outs = [a(lab, i, 3) for i in range(12)]
    assert all(np.array_equal(outs[i], b(lab, i, 3)) for i in range(12))
    assert all(np.array_equal(outs[i], a(lab, i, 3)) for i in (5, 0, 11))  # any order, any number of calls
    assert len({o.tobytes() for o in outs}) > 3  # but items differ
    other = PartNoise(grow=2, shrink=2, swap_fraction=0.5, seed=10)
    assert any(not np.array_equal(outs[i], other(lab, i, 3)) for i in range(12))


def test_part_noise_errors_name_the_argument():
    for kw, name in [({"grow": -1}, "grow"), ({"shrink": 1.5}, "shrink"), ({"swap_fraction": 1.2}, "swap_fraction"),
                     ({"swap_fraction": True}, "swap_fraction"), ({"seed": -2}, "seed"), ({"grow": True}, "grow")]:
        with pytest.raises(ValueError, match=name):
            PartNoise(**kw)
    noise = PartNoise(grow=1)
    with pytest.raises(ValueError, match="labels"):
        noise(np.zeros((2, 3, 4), np.int64), 0, 3)
    with pytest.raises(ValueError, match="labels.*num_parts"):
        noise(np.full((3, 3), 4), 0, 3)
    with pytest.raises(ValueError, match="index"):
        noise(_two_parts(), -1, 3)
    with pytest.raises(ValueError, match="num_parts"):
        noise.draw(0, 0)


def _add_parts(root, synset="03001627", names=("c0",), views=3, size=8, count=2):
    """Part maps (two halves of the mask) and part centres for make_nmr's objects; metadata lists the parts."""
    meta = yaml.safe_load((root / "metadata.yaml").read_text())
    meta[synset]["parts"] = ["left", "right"][:count]
    (root / "metadata.yaml").write_text(yaml.safe_dump(meta))
    for name in names:
        d = root / synset / name
        (d / "parts").mkdir()
        for v in range(views):
            m = np.array(Image.open(d / "mask" / f"{v:04d}.png")) > 127
            lab = np.where(m, 1 + (np.arange(size)[None, :] >= size // 2), 0).astype(np.uint8)
            Image.fromarray(lab).save(d / "parts" / f"{v:04d}.png")
        np.savez(d / "mesh.npz", part_centers=np.array([[-0.2, 0.1, 0.0], [0.2, -0.1, 0.1]])[:count])


def test_nmr_parts_from_files(tmp_path):
    make_nmr(tmp_path)
    _add_parts(tmp_path)
    ds = ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True)
    assert ds.part_names == [["left", "right"]] and ds.num_parts == 2
    item = ds[1]
    m = item["mask"][0]
    assert torch.equal(item["parts"].sum(0), m) and torch.equal(item["parts"][1][:, :4], torch.zeros(8, 4))
    cam = item["camera"]
    expect = project_to_ndc(np.array([[-0.2, 0.1, 0.0], [0.2, -0.1, 0.1]]), cam["world_mat"].double().numpy(),
                            cam["camera_mat"].double().numpy())
    np.testing.assert_allclose(item["keypoints"][:, :2].numpy(), expect, rtol=1e-6)
    assert item["keypoints"][:, 2].tolist() == [1.0, 1.0]
    assert "parts" not in ShapeNetNMR(tmp_path, categories=["chair"])[0]
    noisy = ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True, part_noise=PartNoise(swap_fraction=1.0))
    swapped = noisy[1]
    assert torch.equal(swapped["parts"], item["parts"].flip(0)) and torch.equal(swapped["keypoints"], item["keypoints"])


def test_nmr_parts_errors(tmp_path):
    make_nmr(tmp_path)
    with pytest.raises(ValueError, match="metadata.yaml.*'parts'"):
        ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True)
    with pytest.raises(ValueError, match="part_noise.*load_parts"):
        ShapeNetNMR(tmp_path, categories=["chair"], part_noise=PartNoise())
    with pytest.raises(TypeError, match="part_noise"):
        ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True, part_noise={"grow": 1})
    _add_parts(tmp_path)
    meta = yaml.safe_load((tmp_path / "metadata.yaml").read_text())
    meta["03001627"]["parts"] = "left"
    (tmp_path / "metadata.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match="'parts'"):
        ShapeNetNMR(tmp_path, categories=["chair"])
    meta["03001627"]["parts"] = ["left", "right"]
    (tmp_path / "metadata.yaml").write_text(yaml.safe_dump(meta))
    d = tmp_path / "03001627" / "c0"
    os.remove(d / "mesh.npz")
    with pytest.raises(FileNotFoundError, match="mesh.npz"):
        ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True)
    np.savez(d / "mesh.npz", part_centers=np.zeros((3, 3)))
    ds = ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True)
    with pytest.raises(ValueError, match=r"mesh.npz.*part_centers.*\(2, 3\)"):
        ds[0]
    np.savez(d / "mesh.npz", part_centers=np.zeros((2, 3)))
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(d / "parts" / "0000.png")
    with pytest.raises(ValueError, match=r"0000\.png.*label 3"):
        ds[0]
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(d / "parts" / "0000.png")
    with pytest.raises(ValueError, match=r"0000\.png.*8x6"):
        ds[0]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "parts" / "0000.png")
    with pytest.raises(ValueError, match=r"0000\.png.*single-channel"):
        ds[0]
    os.remove(d / "parts" / "0001.png")
    with pytest.raises(FileNotFoundError, match="0001.png"):
        ds[1]
    import shutil

    shutil.rmtree(d / "parts")
    with pytest.raises(FileNotFoundError, match="part map folder"):
        ShapeNetNMR(tmp_path, categories=["chair"], load_parts=True)
