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

from invrender.data import MNIST, ImageFolder, KatoShapeNet, ShapeNetNMR

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
    assert cam["rotation"].dtype == torch.float32
    np.testing.assert_allclose(cam["rotation"].double().numpy() @ cam["rotation"].double().numpy().T, np.eye(3),
                               atol=1e-5)
