"""Real-image datasets of UNICORN (issue 15) on tiny files written here: CUB-200 and Pascal3D+ in CMR's ``.mat``
format (square crops around the box, masks, keypoints, jitter, flips), image folders with mirrored mask trees,
the configs of the real datasets, and the UNICORN task trained and evaluated on them end to end."""

import glob
import json
import math
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

import invrender
from invrender import metrics, training
from invrender.data import CUB200, ImageFolder, Pascal3DCar, read_cmr_annotations
from invrender.data.cub import KEYPOINT_FLIP, KEYPOINT_NAMES
from invrender.errors import ConfigError
from invrender.models import unicorn as U

from .test_unicorn_task import SMALL_MODEL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 40, 30  # fixture images: 40 wide, 30 high


def coded_image(seed=0):
    """(H, W, 3) uint8 whose pixels say where they come from: R = 6 * column, G = 8 * row, B = 40 + seed."""
    cols, rows = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([6 * cols, 8 * rows, np.full_like(cols, 40 + seed)], -1).astype(np.uint8)


def box_mask(x1, y1, x2, y2):
    """(H, W) uint8 in {0, 1}: 1 inside the 1-indexed inclusive box, as CMR stores masks."""
    m = np.zeros((H, W), np.uint8)
    m[y1 - 1:y2, x1 - 1:x2] = 1
    return m


def write_mat(path, records, cad=False):
    """A struct array ``images`` as CMR's .mat files hold it (``bbox`` a nested struct)."""
    fields = ["rel_path", "bbox", "mask", "parts"] + (["cad_index"] if cad else [])
    arr = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(records):
        bbox = np.zeros((1, 1), dtype=[(k, "O") for k in ("x1", "y1", "x2", "y2")])
        bbox[0, 0] = tuple(float(v) for v in r["bbox"])
        arr[0, i]["rel_path"], arr[0, i]["bbox"], arr[0, i]["mask"] = r["rel_path"], bbox, r["mask"]
        arr[0, i]["parts"] = r.get("parts", np.zeros((3, 15)))
        if cad:
            arr[0, i]["cad_index"] = r["cad_index"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, {"images": arr})


def cub_parts():
    """3 x 15, 1-indexed: Back at (13, 11), LEye at (15, 8), REye at (18, 9) visible; the rest invisible."""
    parts = np.zeros((3, 15))
    for k, (x, y) in {0: (13, 11), 6: (15, 8), 10: (18, 9)}.items():
        parts[:, k] = (x, y, 1)
    return parts


#: Three CUB-like images: a box inside the image, a box at the corner (its crop leaves the image), a grey image.
CUB_RECORDS = [
    {"rel_path": "001.Bird/a.png", "bbox": (11, 6, 20, 25), "mask": box_mask(11, 6, 20, 25), "parts": cub_parts()},
    {"rel_path": "001.Bird/b.png", "bbox": (1, 1, 10, 20), "mask": box_mask(1, 1, 10, 20)},
    {"rel_path": "002.Other/c.png", "bbox": (5, 5, 34, 24), "mask": box_mask(5, 5, 34, 24)},
]


def make_cub(root, splits={"train": [0, 1, 2], "val": [1], "test": [0, 2]}):
    for i, rec in enumerate(CUB_RECORDS):
        path = os.path.join(root, "images", rec["rel_path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = coded_image(i)
        Image.fromarray(img if i < 2 else img[..., 0]).save(path)  # the third one grey
    for split, idx in splits.items():
        write_mat(os.path.join(root, "cachedir", "cub", "data", f"{split}_cub_cleaned.mat"),
                  [CUB_RECORDS[i] for i in idx])
    return str(root)


def pixels(t):
    """float image in [0, 1] -> uint8 (C, H, W) numpy."""
    return (t * 255).round().to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------------
# crop geometry


def test_square_geometry_rounds_half_down_and_jitters_each_edge():
    from invrender.data._crop import crop_square, jittered_box, square_about

    assert jittered_box((10, 5, 20, 25), padding=0.1) == pytest.approx((9, 3, 21, 27))
    assert square_about((0, 0, 11, 10)) == (0, -1, 11)  # a tie (centre 5 - 5.5 = -0.5) goes to the lower corner
    assert square_about((0, 0, 12, 10)) == (0, -1, 12)
    assert square_about((0, 0, 10, 10), side=6.4) == (2, 2, 6)
    g = torch.Generator().manual_seed(0)
    u = 1 - 2 * torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert jittered_box((0, 0, 10, 20), jitter=0.1, generator=g) == pytest.approx(
        (u[0] * 1, u[1] * 2, 10 + u[2] * 1, 20 + u[3] * 2))
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert crop_square(img, -1, 1, 3, "edge").tolist() == [[4, 4, 5], [8, 8, 9], [8, 8, 9]]
    assert crop_square(img, -1, 1, 3, 1.0).tolist() == [[255, 4, 5], [255, 8, 9], [255, 255, 255]]


# ------------------------------------------------------------------------------------------------
# CUB-200


def test_cub_items_shapes_dtypes_and_collate(tmp_path):
    ds = CUB200(make_cub(tmp_path), split="train", image_size=32)
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["keypoints"].shape == (15, 3) and item["keypoints"].dtype == torch.float32
    assert item["path"] == os.path.join(str(tmp_path), "images", "001.Bird", "a.png")
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    grey = pixels(ds[2]["image"])
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()  # a grey image becomes RGB
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["keypoints"].shape == (3, 15, 3)
    assert len(KEYPOINT_NAMES) == 15 and sorted(KEYPOINT_FLIP) == list(range(15))


def test_cub_crop_is_the_hand_computed_square(tmp_path):
    """bbox (11, 6, 20, 25), 1-indexed: edges x [10, 20), y [5, 25); padded by 5% of 10 and 20: x [9.5, 20.5),
    y [4, 26); the square of side 22 about (15, 15) starts at column 4, row 4. At 22 pixels nothing is resampled:
    the crop's pixel (r, c) is the image's (r + 4, c + 4), e.g. the image's (row 10, col 12) at (6, 8)."""
    ds = CUB200(make_cub(tmp_path), split="train", image_size=22)
    assert ds.square(0) == (4, 4, 22)
    item = ds[0]
    img = pixels(item["image"])
    assert np.array_equal(img.transpose(1, 2, 0), coded_image(0)[4:26, 4:26])
    assert tuple(img[:, 6, 8]) == (6 * 12, 8 * 10, 40)  # the known pixel
    assert np.array_equal(item["mask"][0].numpy(), box_mask(11, 6, 20, 25)[4:26, 4:26].astype(np.float32))
    assert item["mask"][0, 1:21, 6:16].all() and item["mask"].sum() == 20 * 10  # rows 5..24, cols 10..19


def test_cub_crop_outside_the_image_repeats_the_edge_or_fills(tmp_path):
    """bbox (1, 1, 10, 20): edges x [0, 10), y [0, 20) padded to x [-0.5, 10.5), y [-1, 21): side 22 about (5, 10),
    corner (-6, -1): 6 columns left of the image and 1 row above it."""
    root = make_cub(tmp_path)
    ds = CUB200(root, split="train", image_size=22)
    assert ds.square(1) == (-6, -1, 22)
    rows, cols = np.clip(np.arange(-1, 21), 0, H - 1), np.clip(np.arange(-6, 16), 0, W - 1)
    edge = coded_image(1)[rows[:, None], cols[None, :]]
    item = ds[1]
    assert np.array_equal(pixels(item["image"]).transpose(1, 2, 0), edge)  # UNICORN: padding_mode 'edge'
    mask = item["mask"][0].numpy()
    assert not mask[0].any() and not mask[:, :6].any()  # outside the image: no object
    assert mask[1:21, 6:16].all() and mask.sum() == 200
    white = pixels(CUB200(root, split="train", image_size=22, fill=1.0)[1]["image"]).transpose(1, 2, 0)
    assert (white[0] == 255).all() and (white[:, :6] == 255).all()  # CMR: white
    assert np.array_equal(white[1:, 6:], coded_image(1)[0:21, 0:16])


def test_cub_resize_keeps_image_mask_and_keypoints_aligned(tmp_path):
    root = make_cub(tmp_path)
    at22, at44, at11 = (CUB200(root, split="train", image_size=s)[0] for s in (22, 44, 11))
    # Nearest-neighbour masks: doubling repeats each pixel 2x2; halving keeps the odd rows / columns (centres).
    m22 = at22["mask"][0]
    assert torch.equal(at44["mask"][0], m22.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(at11["mask"][0], m22[1::2, 1::2])
    # Bilinear doubling of a linear ramp: each 2x2 block averages to the source pixel (inside the border).
    blocks = at44["image"].view(3, 22, 2, 22, 2).mean(dim=(2, 4))
    assert torch.allclose(blocks[:, 1:-1, 1:-1], at22["image"][:, 1:-1, 1:-1], atol=1.5 / 255)
    # Keypoints are in the crop's normalised coordinates, the same at every size.
    for item in (at22, at44, at11):
        assert torch.equal(item["keypoints"], at22["keypoints"])


def test_cub_keypoints_land_on_their_pixels(tmp_path):
    """Back at (13, 11), 1-indexed: the image's (column 12, row 10), the crop's (8, 6) -> x = -1 + 17/22,
    y = 1 - 13/22 (y up); the image's pixel under it holds R = 6 * 12 and G = 8 * 10."""
    ds = CUB200(make_cub(tmp_path), split="train", image_size=22)
    item = ds[0]
    kp = item["keypoints"]
    assert kp[0].tolist() == pytest.approx([-1 + 17 / 22, 1 - 13 / 22, 1.0], abs=1e-6)
    assert kp[6].tolist() == pytest.approx([-1 + 21 / 22, 1 - 7 / 22, 1.0], abs=1e-6)  # LEye (15, 8): crop (10, 3)
    invisible = [k for k in range(15) if k not in (0, 6, 10)]
    assert not kp[invisible].any()
    img = pixels(item["image"])
    for k, (x, y) in {0: (12, 10), 6: (14, 7), 10: (17, 8)}.items():
        j = round(((float(kp[k, 0]) + 1) * 22 - 1) / 2)
        i = round(((1 - float(kp[k, 1])) * 22 - 1) / 2)
        assert tuple(img[:2, i, j]) == (6 * x, 8 * y), k
    assert not ds[1]["keypoints"].any()  # no parts: every keypoint invisible


def test_cub_random_flip_mirrors_image_mask_and_swaps_keypoint_sides(tmp_path):
    root = make_cub(tmp_path)
    plain = CUB200(root, split="train", image_size=22)[0]
    ds = CUB200(root, split="train", image_size=22, random_flip=True, generator=torch.Generator().manual_seed(0))
    draws = [ds[0] for _ in range(12)]
    flipped = [d for d in draws if not torch.equal(d["image"], plain["image"])]
    assert 0 < len(flipped) < len(draws)  # about half
    for d in draws:
        if not torch.equal(d["image"], plain["image"]):
            assert torch.equal(d["image"], plain["image"].flip(-1)) and torch.equal(d["mask"], plain["mask"].flip(-1))
            kp, ref = d["keypoints"], plain["keypoints"]
            assert kp[0].tolist() == pytest.approx([-ref[0, 0], ref[0, 1], 1])
            assert kp[6].tolist() == pytest.approx([-ref[10, 0], ref[10, 1], 1])  # the right eye becomes the left
            assert kp[10].tolist() == pytest.approx([-ref[6, 0], ref[6, 1], 1])
        else:
            assert torch.equal(d["keypoints"], plain["keypoints"])
    test = CUB200(root, split="test", image_size=22, random_flip=True, jitter=True)
    assert not test.random_flip and not test.jitter  # training split only
    assert all(torch.equal(test[0]["image"], plain["image"]) for _ in range(4))


def test_cub_jitter_moves_and_scales_the_square_on_train_only(tmp_path):
    """Padded box 11 x 22; each edge moves by up to 5% of the tight box (0.5 and 1 pixel): the side is in
    [20, 24] and the centre within a pixel of (15, 15)."""
    root = make_cub(tmp_path)
    ds = CUB200(root, split="train", image_size=22, jitter=True, generator=torch.Generator().manual_seed(1))
    squares = [ds.square(0) for _ in range(60)]
    assert len(set(squares)) > 5
    for x0, y0, side in squares:
        assert 20 <= side <= 24
        assert abs(x0 + side / 2 - 15) <= 1.5 and abs(y0 + side / 2 - 15) <= 1.5
    assert ds[0]["image"].shape == (3, 22, 22)
    assert CUB200(root, split="train", image_size=22, jitter=False).square(0) == (4, 4, 22)


def test_cub_splits_and_annotation_folder(tmp_path):
    root = make_cub(tmp_path / "cub")
    sizes = {s: len(CUB200(root, split=s, image_size=16)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 1, "test": 2}  # val: a struct array of one (squeezed by loadmat)
    assert CUB200(root, split="val")[0]["path"].endswith(os.path.join("001.Bird", "b.png"))
    assert CUB200(root, split="test")[1]["path"].endswith(os.path.join("002.Other", "c.png"))
    moved = tmp_path / "cmr_cachedir"
    shutil.move(os.path.join(root, "cachedir", "cub", "data"), moved)
    with pytest.raises(FileNotFoundError, match="train_cub_cleaned.mat"):
        CUB200(root)
    assert len(CUB200(root, annotations=moved)) == 3  # CMR keeps its cachedir apart from the images
    records = read_cmr_annotations(str(moved / "train_cub_cleaned.mat"), keypoints=True)
    assert records[0]["box"].tolist() == [10.0, 5.0, 20.0, 25.0]  # 1-indexed inclusive -> 0-indexed edges
    assert records[0]["parts"][0].tolist() == [12.0, 10.0, 1.0]
    assert records[0]["mask"].dtype == np.uint8 and set(np.unique(records[0]["mask"])) == {0, 255}


def test_cub_errors_name_the_argument_or_file(tmp_path):
    root = make_cub(tmp_path / "cub")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CUB200(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'split'.*'valid'"):
        CUB200(root, split="valid")
    for size in (0, 64.0, True, -3):
        with pytest.raises(ValueError, match="image_size"):
            CUB200(root, image_size=size)
    with pytest.raises(ValueError, match="'fill'"):
        CUB200(root, fill="white")
    with pytest.raises(ValueError, match="'padding'"):
        CUB200(root, padding=1.5)
    os.remove(os.path.join(root, "cachedir", "cub", "data", "val_cub_cleaned.mat"))
    with pytest.raises(FileNotFoundError, match="val_cub_cleaned.mat"):
        CUB200(root, split="val")
    mat = os.path.join(root, "cachedir", "cub", "data", "test_cub_cleaned.mat")
    savemat(mat, {"annotations": np.zeros(3)})
    with pytest.raises(ValueError, match="test_cub_cleaned.mat.*'images'"):
        CUB200(root, split="test")
    open(mat, "wb").write(b"not a mat file")
    with pytest.raises(ValueError, match="test_cub_cleaned.mat"):
        CUB200(root, split="test")
    bad = dict(CUB_RECORDS[0], parts=np.zeros((2, 15)))
    write_mat(mat, [bad])
    with pytest.raises(ValueError, match=r"images\[0\]\.parts"):
        CUB200(root, split="test")
    write_mat(mat, [dict(CUB_RECORDS[0], bbox=(20, 6, 11, 25))])
    with pytest.raises(ValueError, match=r"images\[0\]\.bbox"):
        CUB200(root, split="test")
    write_mat(mat, [dict(CUB_RECORDS[0], mask=np.zeros((H + 1, W), np.uint8))])
    with pytest.raises(ValueError, match=r"mask of images\[0\].*a\.png"):
        CUB200(root, split="test")[0]
    write_mat(mat, [dict(CUB_RECORDS[0], rel_path="001.Bird/missing.png")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        CUB200(root, split="test")[0]
    with pytest.raises(IndexError):
        CUB200(root, split="train")[3]


# ------------------------------------------------------------------------------------------------
# CUB-200 with SCOPS part maps (UMR)


def part_labels(i):
    """(H, W) int labels in image coordinates for CUB_RECORDS[i]: the tight box cut into four bands (1 head at the
    top .. 4 belly at the bottom), 0 elsewhere, so every labelled pixel is inside SCOPS's padded square."""
    rec = CUB_RECORDS[i]
    x1, y1, x2, y2 = rec["bbox"]
    lab = np.zeros((H, W), np.int64)
    rows = np.arange(y1 - 1, y2)
    lab[y1 - 1:y2, x1 - 1:x2] = 1 + (4 * (rows - (y1 - 1)) // len(rows))[:, None]
    return lab


def make_scops(root, split="train", indices=(0, 1, 2), repeat=1, background=0.25):
    """SCOPS part maps in UMR's layout for the split's images: parts_root/<folder>/<stem>_<i>.npy, (h, h, 5),
    one-hot over SCOPS's square (the box padded by 5 %, unjittered) at ``repeat`` map pixels per image pixel;
    the background channel 0 holds ``background`` (it must never reach the items)."""
    from invrender.data._crop import jittered_box, square_about

    parts_root = os.path.join(root, "SCOPS", "results", "cub", "ITER_60000", "train", "dcrf_prob")
    for i in indices:
        rec = CUB_RECORDS[i]
        x0, y0, side = square_about(jittered_box(np.array(rec["bbox"], float) - [1, 1, 0, 0], 0.05))
        rows, cols = np.arange(y0, y0 + side), np.arange(x0, x0 + side)
        inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
        lab = np.where(inside, part_labels(i)[rows.clip(0, H - 1)[:, None], cols.clip(0, W - 1)[None, :]], 0)
        prob = (lab[..., None] == np.arange(5)).astype(np.float32)
        prob[..., 0] = background
        prob = prob.repeat(repeat, 0).repeat(repeat, 1)
        folder, name = os.path.split(rec["rel_path"])
        path = os.path.join(parts_root, folder, f"{name.split('.')[0]}_{i}.npy")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, prob)
    return parts_root


def expected_parts(ds, index, square, flip):
    """The item's parts as the mask of each part's pixels would come out of the crop (crop_resize, nearest)."""
    from invrender.data._crop import crop_resize

    lab = part_labels(index)
    im = Image.fromarray(coded_image(index))
    return torch.cat([crop_resize(im, np.where(lab == k, 255, 0).astype(np.uint8), square, (ds.image_size,) * 2,
                                  ds.fill, flip)[1] for k in range(1, 5)])


def test_cub_scops_parts_are_cropped_like_the_mask(tmp_path):
    root = make_cub(tmp_path / "cub")
    parts_root = make_scops(root)
    ds = CUB200(root, split="train", image_size=22, parts_root=parts_root)
    assert ds.part_path(0) == os.path.join(parts_root, "001.Bird", "a_0.npy")
    assert ds.part_path(2) == os.path.join(parts_root, "002.Other", "c_2.npy")
    item = ds[0]
    assert item["parts"].shape == (4, 22, 22) and item["parts"].dtype == torch.float32
    assert set(item["parts"].unique().tolist()) == {0.0, 1.0}  # the background channel (0.25) is dropped
    assert torch.equal(item["parts"].sum(0), item["mask"][0])  # the fixture's parts tile the box mask
    # At the crop's own size nothing is resampled: the crop's pixel (r, c) is the image's (r + 4, c + 4).
    assert torch.equal(item["parts"], torch.from_numpy(
        (part_labels(0)[4:26, 4:26] == np.arange(1, 5)[:, None, None]).astype(np.float32)))
    for size, padding in ((22, 0.05), (40, 0.05), (13, 0.05), (22, 0.2)):
        ds = CUB200(root, split="train", image_size=size, padding=padding, parts_root=parts_root)
        for i in range(3):  # the corner image's crop leaves the image
            assert torch.equal(ds[i]["parts"], expected_parts(ds, i, ds.square(i), False)), (size, padding, i)
    # The real maps are 256 x 256 whatever the crop: a finer map of the same labels gives the same items.
    fine = make_scops(tmp_path / "fine", repeat=3)
    ds, ds_fine = (CUB200(root, split="train", image_size=17, parts_root=p) for p in (parts_root, fine))
    assert all(torch.equal(ds[i]["parts"], ds_fine[i]["parts"]) for i in range(3))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["parts"].shape == (3, 4, 17, 17)


def test_cub_scops_parts_follow_flips_and_jitter(tmp_path):
    root = make_cub(tmp_path / "cub")
    parts_root = make_scops(root)
    g = torch.Generator().manual_seed(3)
    ds = CUB200(root, split="train", image_size=22, parts_root=parts_root, random_flip=True, jitter=True,
                generator=g)
    flips = 0
    for trial in range(10):
        state = g.get_state()
        square = ds.square(0)  # the square the item is about to draw
        flip = bool(torch.rand((), generator=g) < 0.5)
        g.set_state(state)
        item = ds[0]
        assert torch.equal(item["parts"], expected_parts(ds, 0, square, flip))
        assert torch.equal(item["parts"].sum(0) > 0, item["mask"][0] > 0)
        flips += flip
    assert 0 < flips < 10


def test_cub_scops_errors_name_the_file(tmp_path):
    root = make_cub(tmp_path / "cub")
    parts_root = make_scops(root, indices=(0, 2))
    with pytest.raises(FileNotFoundError, match=r"001\.Bird.b_1\.npy"):
        CUB200(root, split="train", parts_root=parts_root)
    with pytest.raises(FileNotFoundError, match="parts_root"):
        CUB200(root, split="train", parts_root=tmp_path / "nowhere")
    # The test split's rows are images 0 and 2 again, numbered 0 and 1: c_1.npy is missing.
    with pytest.raises(FileNotFoundError, match="c_1.npy"):
        CUB200(root, split="test", parts_root=parts_root)
    make_scops(root, indices=(1,))
    ds = CUB200(root, split="train", parts_root=parts_root)
    path = ds.part_path(1)
    for bad in (np.zeros((20, 20, 4), np.float32), np.zeros((5, 20, 20), np.float32),
                np.zeros((20, 22, 5), np.float32), np.zeros((20, 20), np.float32)):
        np.save(path, bad)
        with pytest.raises(ValueError, match=r"b_1\.npy.*shape"):
            ds[1]
    np.save(path, np.full((20, 20, 5), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"b_1\.npy.*finite"):
        ds[1]
    open(path, "wb").write(b"not npy")
    with pytest.raises(ValueError, match=r"b_1\.npy"):
        ds[1]
    assert CUB200(root, split="train", parts_root=parts_root, num_parts=3) is not None
    with pytest.raises(ValueError, match=r"a_0\.npy.*\(h, h, 4\)"):
        CUB200(root, split="train", parts_root=parts_root, num_parts=3)[0]
    with pytest.raises(ValueError, match="num_parts"):
        CUB200(root, split="train", parts_root=parts_root, num_parts=0)
    assert "parts" not in CUB200(root, split="train")[0]


# ------------------------------------------------------------------------------------------------
# Pascal3D+ car


def make_p3d(root):
    records = [{"rel_path": "car_imagenet/n1.png", "bbox": (11, 6, 30, 20), "mask": box_mask(11, 6, 30, 20),
                "cad_index": 3},
               {"rel_path": "car_pascal/2008_1.png", "bbox": (2, 3, 39, 28), "mask": box_mask(2, 3, 39, 28),
                "cad_index": 7}]
    for i, rec in enumerate(records):
        path = os.path.join(root, "Images", rec["rel_path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(coded_image(i)).save(path)
    write_mat(os.path.join(root, "ucmr_anno", "data", "car_train.mat"), records, cad=True)
    write_mat(os.path.join(root, "ucmr_anno", "data", "car_test.mat"), records[1:], cad=True)
    return str(root)


def test_pascal3d_car_crop_mask_and_cad_index(tmp_path):
    """bbox (11, 6, 30, 20): edges x [10, 30), y [5, 20); padded by UNICORN's 10%: x [8, 32), y [3.5, 21.5);
    side 24 about (20, 12.5): corner (8, 0)."""
    root = make_p3d(tmp_path)
    ds = Pascal3DCar(root, split="train", image_size=24)
    assert len(ds) == 2 and len(Pascal3DCar(root, split="test")) == 1
    assert ds.square(0) == (8, 0, 24)
    item = ds[0]
    assert set(item) == {"image", "mask", "cad_index", "path"}
    assert np.array_equal(pixels(item["image"]).transpose(1, 2, 0), coded_image(0)[0:24, 8:32])
    assert np.array_equal(item["mask"][0].numpy(), box_mask(11, 6, 30, 20)[0:24, 8:32].astype(np.float32))
    assert item["cad_index"].dtype == torch.int64 and int(item["cad_index"]) == 3
    assert Pascal3DCar(root, split="test")[0]["cad_index"] == 7
    assert Pascal3DCar(root, image_size=64)[1]["image"].shape == (3, 64, 64)
    with pytest.raises(FileNotFoundError, match="car_val.mat"):  # UNICORN's annotations have no val split
        Pascal3DCar(root, split="val")
    with pytest.raises(ValueError, match="'split'"):
        Pascal3DCar(root, split="trainval")
    shutil.rmtree(os.path.join(root, "Images"))
    with pytest.raises(FileNotFoundError, match="Images"):
        Pascal3DCar(root)


# ------------------------------------------------------------------------------------------------
# Image folders with masks


def make_folder(tmp_path, size=(H, W)):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for rel, seed in (("a/x.png", 0), ("b.png", 1), ("a/y.jpg", 2)):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coded_image(seed)[:size[0], :size[1]]).save(images / rel)
        mask = np.zeros(size, np.uint8)
        mask[5:20, 10 + seed:30] = 255
        Image.fromarray(mask).save((masks / rel).with_suffix(".png"))
    return images, masks


def test_image_folder_masks_follow_the_images(tmp_path):
    images, masks = make_folder(tmp_path)
    ds = ImageFolder(images, image_size=W, mask_root=masks, resize_mode="pad")
    assert [os.path.relpath(f, images) for f in ds.files] == [os.path.join("a", "x.png"), os.path.join("a", "y.jpg"),
                                                              "b.png"]
    item = ds[0]
    assert item["image"].shape == (3, W, W) and item["mask"].shape == (1, W, W) and item["mask"].dtype == torch.float32
    # pad: the 40 x 30 image on a 40 x 40 square, 5 rows repeated above and below (UNICORN's edge padding)
    rows = np.clip(np.arange(-5, 35), 0, H - 1)
    assert np.array_equal(pixels(item["image"]).transpose(1, 2, 0), coded_image(0)[rows])
    expected = np.zeros((W, W), np.float32)
    expected[10:25, 10:30] = 1  # the mask's rows 5..19, moved down by the 5 padded rows; its margins 0
    assert np.array_equal(item["mask"][0].numpy(), expected)
    crop = ImageFolder(images, image_size=None, mask_root=masks)[0]  # default: the centred 30 x 30 square
    assert np.array_equal(pixels(crop["image"]).transpose(1, 2, 0), coded_image(0)[:, 5:35])
    assert np.array_equal(crop["mask"][0].numpy(), (np.asarray(Image.open(masks / "a" / "x.png"))[:, 5:35] > 127))
    assert "mask" not in ImageFolder(images, image_size=16)[0]
    # an odd margin: one more column trimmed on the right (crop), one more row padded at the bottom (pad, UNICORN's
    # SquarePad)
    assert ImageFolder(images, resize_mode="crop")._square(41, 30) == (5, 0, 30)
    assert ImageFolder(images, resize_mode="pad")._square(41, 30) == (0, -5, 41)
    full = ImageFolder(images, image_size=W, mask_root=masks, resize_mode="pad")[2]["mask"][0]
    half = ImageFolder(images, image_size=W // 2, mask_root=masks, resize_mode="pad")[2]["mask"][0]
    assert torch.equal(half, full[1::2, 1::2])  # nearest: the centres of the 2x2 blocks


def test_image_folder_flip_and_jitter_move_image_and_mask_together(tmp_path):
    images, masks = make_folder(tmp_path)
    plain = ImageFolder(images, image_size=W, mask_root=masks, resize_mode="pad")[0]
    ds = ImageFolder(images, image_size=W, mask_root=masks, resize_mode="pad", random_flip=True,
                     generator=torch.Generator().manual_seed(0))
    draws = [ds[0] for _ in range(10)]
    flips = [d for d in draws if not torch.equal(d["image"], plain["image"])]
    assert 0 < len(flips) < len(draws)
    assert all(torch.equal(d["image"], plain["image"].flip(-1)) and torch.equal(d["mask"], plain["mask"].flip(-1))
               for d in flips)
    jit = ImageFolder(images, image_size=W, mask_root=masks, resize_mode="pad", jitter=True,
                      generator=torch.Generator().manual_seed(0))
    squares = {jit._square(W, H) for _ in range(20)}
    assert len(squares) > 3 and all(40 <= side <= 56 for _, _, side in squares)  # 40 + 2 x 4 padding, edges +- 4
    item = jit[0]
    # image and mask stay registered: the mask's foreground carries the foreground's pixel codes
    fg = item["mask"][0] > 0
    img = pixels(item["image"])
    cols, rows = img[0][fg.numpy()] / 6, img[1][fg.numpy()] / 8
    assert fg.any() and cols.min() >= 9 and cols.max() <= 30 and rows.min() >= 4 and rows.max() <= 20


def test_image_folder_mask_errors_name_the_file(tmp_path):
    images, masks = make_folder(tmp_path)
    os.remove(masks / "a" / "y.png")
    with pytest.raises(FileNotFoundError, match=r"y\.png"):
        ImageFolder(images, mask_root=masks)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(masks / "a" / "y.png")
    with pytest.raises(ValueError, match=r"y\.png.*42x30.*y\.jpg.*40x30"):
        ImageFolder(images, mask_root=masks)[1]
    with pytest.raises(FileNotFoundError, match="no_masks"):
        ImageFolder(images, mask_root=tmp_path / "no_masks")
    with pytest.raises(ValueError, match="'resize_mode'"):
        ImageFolder(images, resize_mode="fit")
    with pytest.raises(ValueError, match="'jitter'"):
        ImageFolder(images, resize_mode="stretch", jitter=True)


# ------------------------------------------------------------------------------------------------
# Configs and the UNICORN task


REAL_CONFIGS = {  # name: (kind, stage milestones, freezes T / shape / scale, shared encoder) of the released code
    "cub": ("cub", (4000, 8000, 12000), (5, 10, 1200), True),
    "cub_big": ("cub", (4000, 8000, 12000), (10, 20, 1200), False),
    "p3d_car": ("p3d_car", (4800, 9600, 14400), (10, 20, 1600), True),
    "p3d_car_big": ("p3d_car", (4800, 9600, 14400), (10, 20, 1600), False),
    "compcars": ("image_folder", (175, 350, 525), (2, 4, 60), True),
    "lsun_horse": ("image_folder", (1090, 2180, 3270), (5, 10, 360), True),
    "lsun_motorbike": ("image_folder", (1090, 2180, 3270), (5, 10, 360), True),
}


def test_real_image_configs_resolve_to_the_released_settings(tmp_path):
    task = U.UnicornTask()
    found = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "configs", "unicorn", "*.yaml"))}
    assert set(REAL_CONFIGS) <= found
    for name, (kind, milestones, freezes, shared) in REAL_CONFIGS.items():
        cfg = training.resolve_config(task, os.path.join(REPO, "configs", "unicorn", f"{name}.yaml"))
        config = task.model_config(cfg)
        assert cfg["data"]["kind"] == kind and cfg["data"]["image_size"] == 64 and cfg["batch_size"] == 32
        assert cfg["data"]["random_flip"] is True and cfg["data"]["cache"] is False
        assert config.stage_milestones == milestones and config.mean_texture_until == milestones[-1]
        assert (config.freeze_translation_epochs, config.freeze_shape_epochs, config.freeze_scale_epochs) == freezes
        assert config.shared_encoder is shared and config.constant_texture_epochs == 0
        assert config.template_scale == 0.6 and config.background and config.lr == 1e-4
        assert config.elevation_range == (-10.0, 30.0) and config.roll_range == (-30.0, 30.0)
        assert config.scale_range == config.translation_range == (0.3, 0.3, 0.3)
        assert config.focal_length == pytest.approx(1 / math.tan(math.radians(15)))
        big = name.endswith("_big")
        assert config.texture_code_sizes == ((2, 8, 64, 512) if big else (2, 8, 32, 128))
        assert config.shape_code_sizes == ((0, 2, 8, 64) if big else (0, 2, 8, 32))
        assert config.background_code_sizes == ((4, 8, 64, 256) if big else (4, 8, 32, 128))
        # every other field is the real-image column of Table 4 (models.unicorn.real_image_config)
        reference = U.real_image_config(**{k: getattr(config, k) for k in (
            "stage_milestones", "shape_code_sizes", "texture_code_sizes", "background_code_sizes",
            "mean_texture_until", "freeze_translation_epochs", "freeze_shape_epochs", "freeze_scale_epochs",
            "shared_encoder", "generator_min_features", "focal_length", "image_size", "batch_size")})
        assert config == reference, name
    # The CUB config reads CUB200 with jitter and flips on the training split only.
    root = make_cub(tmp_path)
    cfg = training.resolve_config(task, os.path.join(REPO, "configs", "unicorn", "cub.yaml"), [f"data.root={root}"])
    train, test = task._base(cfg, "train"), task._base(cfg, "test")
    assert isinstance(train, CUB200) and train.jitter and train.random_flip and not test.jitter
    assert task._val_base(cfg, test).split == "val"


def test_task_data_kind_errors(tmp_path):
    task = U.UnicornTask()
    with pytest.raises(ConfigError, match="data.kind.*'cubs'"):
        task._base(training.resolve_config(task, None, ["data.kind=cubs", f"data.root={tmp_path}"]), "train")
    with pytest.raises(ConfigError, match="data.root"):
        task._base(training.resolve_config(task, None, ["data.kind=cub"]), "train")
    os.makedirs(tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="train_cub_cleaned.mat"):
        task._base(training.resolve_config(task, None, ["data.kind=cub", f"data.root={tmp_path}"]), "train")
    with pytest.raises(ConfigError, match="data.jitter"):
        training.resolve_config(task, None, ["data.jitter=0.1"])


#: UNICORN's real-image model, small (tests/test_unicorn_task.py's SMALL_MODEL) with its background model.
REAL_SMALL = dict(SMALL_MODEL, background=True, template_scale=0.6, elevation_range=[-10, 30], roll_range=[-30, 30],
                  scale_range=[0.3, 0.3, 0.3], translation_range=[0.3, 0.3, 0.3], background_code_sizes=[4, 8, 32, 64])


def _train_and_evaluate(task, cfg, run):
    cfg = dict(cfg, task="unicorn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the perceptual term is off
        history = training.Trainer(task, cfg, run, device="cpu", progress=False).fit()
        result = training.evaluate_run(run, device="cpu")
    assert len(history) == 2 and all(math.isfinite(h["total"]) for h in history)
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved["step"] == 2 and (run / "eval" / "reconstructions.png").exists()
    assert {k: v for k, v in saved.items() if isinstance(v, float)} == \
        pytest.approx({k: v for k, v in result.items() if isinstance(v, float)})
    return saved


def _direct_mask_iou(task, cfg, run, indices):
    """The soft mask IoU recomputed from the checkpoint without evaluate."""
    model, _ = task.build(cfg, torch.device("cpu"))
    model.load_state_dict(training.load_checkpoint(training.latest_checkpoint(run))["model"])
    model.eval()
    base = task._base(cfg, "test")
    images = torch.stack([base[i]["image"] for i in indices])
    masks = torch.stack([base[i]["mask"] for i in indices])
    return float(metrics.mask_iou(task.reconstruct(model, images)["mask"], masks).mean())


def test_unicorn_trains_and_evaluates_on_an_image_folder_with_masks(tmp_path):
    """The masks are the template's silhouette from the first reference viewpoint: the learning-free reference
    (best reference viewpoint per image) must find it (IoU near 1)."""
    task = U.UnicornTask()
    cfg = training.merge_config(task.default_config(), {
        "data": {"kind": "image_folder", "root": str(tmp_path / "images"), "mask_root": str(tmp_path / "masks"),
                 "image_size": 32, "random_flip": True, "jitter": True},
        "model": REAL_SMALL, "eval": {"seed": 0, "max_objects": 3}, "batch_size": 2, "steps": 2, "vis_every": 0,
        "ckpt_every": 0, "log_every": 1})
    model = U.UnicornModel(task.model_config(cfg))
    refs = torch.deg2rad(model.pose_heads.reference_angles[:1])
    with torch.no_grad():
        silhouette = model.render(model.template_verts[None], torch.ones(1, 3, 2, 2),
                                  U.Pose(invrender.rotation_matrix(*refs.unbind(-1)), torch.zeros(1, 3))).mask[0, 0]
    for i in range(4):
        (tmp_path / "images" / "s").mkdir(parents=True, exist_ok=True)
        (tmp_path / "masks" / "s").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / "images" / "s" / f"{i}.png")
        Image.fromarray((silhouette.numpy() > 0.5).astype(np.uint8) * 255).save(tmp_path / "masks" / "s" / f"{i}.png")
    assert not task.dataset(cfg, "train").items  # augmented: not cached
    assert task._val_base(cfg, task._base(cfg, "test")) is None
    saved = _train_and_evaluate(task, cfg, tmp_path / "run")
    assert saved["test_objects"] == 3 and saved["data_kind"] == "image_folder"
    assert saved["template_mask_iou"] > 0.95
    chosen = sorted(torch.randperm(4, generator=torch.Generator().manual_seed(0))[:3].tolist())
    assert saved["mask_iou"] == pytest.approx(_direct_mask_iou(task, cfg, tmp_path / "run", chosen), rel=1e-5)
    assert 0 <= saved["mask_iou_hard"] <= 1 and "chamfer_l1" not in saved


def test_unicorn_trains_and_evaluates_on_cub(tmp_path):
    task = U.UnicornTask()
    root = make_cub(tmp_path / "cub")
    cfg = training.merge_config(task.default_config(), {
        "data": {"kind": "cub", "root": root, "image_size": 32, "jitter": True, "random_flip": True},
        "model": REAL_SMALL, "eval": {"seed": 0}, "batch_size": 2, "steps": 2, "vis_every": 0, "ckpt_every": 0,
        "log_every": 1})
    assert task.dataset(cfg, "val")[0]["image"].shape == (3, 32, 32)
    saved = _train_and_evaluate(task, cfg, tmp_path / "run")
    assert saved["test_objects"] == 2 and saved["data_kind"] == "cub"
    assert saved["mask_iou"] == pytest.approx(_direct_mask_iou(task, cfg, tmp_path / "run", [0, 1]), rel=1e-5)
    assert 0 <= saved["template_mask_iou"] <= 1 and 0 <= saved["mask_iou_hard"] <= 1
