"""Background augmentation on real photos: cut-out from the white board, backgrounds, compositing."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from garbage_sorter.training import backgrounds
from garbage_sorter.training.backgrounds import (
    BackgroundAugment,
    composite,
    heldout_wood,
    make_background,
    smart_bin_set,
    white_background_mask,
)
from PIL import Image

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
ON_BOARD = "plastic/plastic41.jpg"  # a TrashNet object on the white board, clear of the edges
NOT_ON_BOARD = ["cardboard/cardboard240.jpg", "metal/taco_batch_1_000037_a110.jpg"]


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def _corners(img: np.ndarray, k: int = 12) -> np.ndarray:
    return np.concatenate([img[:k, :k], img[:k, -k:], img[-k:, :k], img[-k:, -k:]], axis=0).reshape(
        -1, img.shape[-1] if img.ndim == 3 else 1
    )


def test_white_background_mask_cuts_the_object_out():
    rgb = _rgb(ON_BOARD)
    alpha = white_background_mask(rgb)
    assert alpha.shape == rgb.shape[:2] and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert 0.05 < alpha.mean() < 0.8
    assert _corners(alpha).max() < 0.05  # the board's corners are background
    h, w = alpha.shape
    assert alpha[h // 2, w // 2] > 0.95  # the object sits in the middle


@pytest.mark.parametrize("name", NOT_ON_BOARD)
def test_white_background_mask_keeps_photos_without_a_board(name):
    alpha = white_background_mask(_rgb(name))
    assert alpha.min() == 1.0


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_make_background_size_type_and_determinism(split):
    a = make_background((200, 150), np.random.default_rng(3), split=split)
    b = make_background((200, 150), np.random.default_rng(3), split=split)
    assert a.shape == (150, 200, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.std() > 1.0  # a surface, not a flat fill


def test_make_background_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        make_background((64, 64), np.random.default_rng(0), split="test")


@pytest.mark.parametrize("index", range(len(backgrounds._TRAIN_KINDS)))
def test_every_training_kind_makes_a_textured_surface(index):
    make = backgrounds._TRAIN_KINDS[index][0]
    img = backgrounds._finish(make(96, 128, np.random.default_rng(index)), np.random.default_rng(0))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    assert img.std() > 1.0


def test_training_colours_span_the_hue_circle():
    rng = np.random.default_rng(0)
    colours = np.array([backgrounds._any_colour(rng) for _ in range(300)], np.uint8)
    hsv = cv2.cvtColor(colours[None], cv2.COLOR_RGB2HSV)[0]
    saturated = hsv[hsv[:, 1] > 80, 0]
    assert np.all(np.bincount(saturated // 30, minlength=6) > 0)  # every sixth of the circle


def test_heldout_wood_is_brown():
    wood = heldout_wood((160, 120), np.random.default_rng(0)).reshape(-1, 3).mean(axis=0)
    r, g, b = wood
    assert r > g > b and r < 200


def test_composite_replaces_the_board():
    rgb = _rgb(ON_BOARD)
    assert _corners(rgb).mean() > 150  # the original corners are white board
    rng = np.random.default_rng(0)
    background = heldout_wood((300, 240), rng)
    out = composite(rgb, white_background_mask(rgb), background, rng)
    assert out.shape == background.shape and out.dtype == np.uint8
    assert _corners(out).mean() < 150  # now wood, not board


def test_background_augment_is_deterministic_and_picklable():
    image = Image.open(PHOTOS / ON_BOARD)
    images = [image] * 4
    first = [np.asarray(out) for out in map(BackgroundAugment(p=1.0, seed=7), images)]
    again = [np.asarray(out) for out in map(BackgroundAugment(p=1.0, seed=7), images)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # one stream, a new draw per call
    assert not np.array_equal(first[0], np.asarray(image.convert("RGB")))

    augment = BackgroundAugment(p=1.0, seed=7)
    augment(image)  # advance the stream; a pickled copy starts its own from the seed
    copy = pickle.loads(pickle.dumps(augment))
    assert np.array_equal(np.asarray(copy(image)), first[0])


def test_background_augment_leaves_other_photos_alone():
    augment = BackgroundAugment(p=1.0, seed=0)
    for name in NOT_ON_BOARD:
        image = Image.open(PHOTOS / name)
        assert augment(image) is image
    image = Image.open(PHOTOS / ON_BOARD)
    assert BackgroundAugment(p=0.0, seed=0)(image) is image


def test_smart_bin_set_is_one_dark_blue_camera():
    photos = [_rgb(ON_BOARD), _rgb("metal/metal1.jpg")]
    out = smart_bin_set(photos, seed=3, size=(320, 240))
    assert [o.shape for o in out] == [(240, 320, 3)] * 2 and out[0].dtype == np.uint8
    again = smart_bin_set(photos, seed=3, size=(320, 240))
    assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
    assert not np.array_equal(out[0], smart_bin_set(photos[:1], seed=4, size=(320, 240))[0])
    # One camera: a photo looks the same whichever set (or half of a set) it is in.
    assert np.array_equal(smart_bin_set(photos[1:], seed=3, size=(320, 240))[0], out[1])
    for src, img in zip(photos, out, strict=True):
        r, g, b = img.reshape(-1, 3).mean(0)
        assert b > 1.5 * g and g > r  # a strong blue LED
        assert img.mean() < 0.5 * src.mean()  # inside a dark bin
        assert _corners(img).mean() < 25  # the bin's dark walls around the shelf
        h, w = img.shape[:2]
        shelf = img[h // 4 : h * 3 // 4, w // 3 : w * 2 // 3, 2]
        assert shelf.mean() > 3 * _corners(img)[:, 2].mean()  # the lit white shelf
