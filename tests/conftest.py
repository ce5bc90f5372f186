"""Shared fixtures: real photos, a real (tiny, untrained) model, private config and data folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FIXTURE_PHOTOS = TESTS / "fixtures" / "photos"
BAD_FILES = TESTS / "bad_files"
SHARED_DATA = TESTS.parent.parent / "shared" / "data"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


@pytest.fixture(autouse=True, scope="session")
def _private_user_folders(tmp_path_factory):
    """Never touch the real user's settings, feedback or caches from a test."""
    root = tmp_path_factory.mktemp("user")
    os.environ["GARBAGE_SORTER_CONFIG_DIR"] = str(root / "config")
    os.environ["GARBAGE_SORTER_DATA_DIR"] = str(root / "data")
    os.environ["GARBAGE_SORTER_CACHE_DIR"] = str(root / "cache")
    yield


def fixture_photos() -> list[Path]:
    """The real photos copied into tests/fixtures/photos/<class>/."""
    return sorted(p for p in FIXTURE_PHOTOS.rglob("*.jpg"))


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    found = fixture_photos()
    assert found, "tests/fixtures/photos holds no photos"
    return found


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained EfficientNet-Lite0 checkpoint with the six classes: real code, seconds to build."""
    import torch

    from garbage_sorter.model import build_model, save_checkpoint
    from garbage_sorter.presets import default_preprocessing

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(
        path,
        build_model("efficientnet_lite0", len(CLASSES)),
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=default_preprocessing("efficientnet_lite0"),
        metrics={"test": {"acc": 0.0}},
        half=True,
    )
    return path


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    from garbage_sorter.classifier import bundled_model_path

    path = bundled_model_path()
    if not path.exists():
        pytest.fail(f"the bundled model is missing: {path}")
    return path


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A folder-per-class tree of real photos (4 per class) for quick training runs."""
    root = tmp_path / "data"
    source = SHARED_DATA / "trashnet"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        if source.is_dir():
            for photo in sorted((source / cls).glob("*.jpg"))[:4]:
                shutil.copy(photo, root / cls / photo.name)
        else:
            for i, photo in enumerate(fixture_photos()[:4]):
                shutil.copy(photo, root / cls / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One PyTorch thread for a module of small models (``pytestmark = usefixtures(...)``): on a
    busy 2-core machine two threads that must meet at every operator wait for each other's time
    slices (ONNX export took minutes instead of seconds; a 32 px GPU-path step ran 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
