import pytest
import torch

import invrender
from invrender import synthetic

HAS_CUDA = invrender.build_info()["cuda_available"]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of invrender")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Synthetic data in the ShapeNet-NMR layout: two categories, 5 objects each (4 train / 0 val / 1 test:
    round(0.5) == 0, so the val split is empty), 6 views at 32x32, 16^3 voxels."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_dataset(root, objects_per_category=5, categories=("car", "chair"), views=6, image_size=32,
                               points=100, voxel_resolution=16, progress=False)
    return str(root)
