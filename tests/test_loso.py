"""bench/loso.py runs end to end on a tiny real data tree (TrashNet + three real-world sources),
and the light and framing changes it trains on do what they say."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, TESTS
from garbage_sorter.training import backgrounds as B
from garbage_sorter.training import data as D
from PIL import Image

BENCH = TESTS.parent / "bench"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "realworld" / "trashnetpp").is_dir(), reason="needs ../shared/data"
)


@pytest.fixture()
def tiny_tree(tmp_path: Path) -> tuple[Path, Path]:
    """data/trashnet (5 a class), data/realworld/{taco,floor-photos,trashnetpp} (a few a class,
    with their manifests' grouping columns) and a TrashNet split saved like docs/model/split."""
    data = tmp_path / "data"
    for label in CLASSES:
        (data / "trashnet" / label).mkdir(parents=True)
        for photo in sorted((SHARED_DATA / "trashnet" / label).glob("*.jpg"))[:5]:
            shutil.copy(photo, data / "trashnet" / label / photo.name)
    for source, column, per_class in (("taco", "taco_image", 2), ("trashnetpp", "source_photo", 3)):
        src = SHARED_DATA / "realworld" / source
        rows = list(csv.DictReader((src / "manifest.csv").open(newline="")))
        picked = [
            r for label in CLASSES for r in [x for x in rows if x["class"] == label][:per_class]
        ]
        for row in picked:
            (data / "realworld" / source / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / row["file"], data / "realworld" / source / row["file"])
        with (data / "realworld" / source / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["file", "class", column], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(picked)
    for label in CLASSES:
        (data / "realworld" / "floor-photos" / label).mkdir(parents=True)
        for photo in sorted((SHARED_DATA / "realworld" / "floor-photos" / label).glob("*.jpg"))[:2]:
            shutil.copy(photo, data / "realworld" / "floor-photos" / label / photo.name)
    trashnet = D.scan_folder(data / "trashnet")
    split = tmp_path / "split"
    D.save_split(D.split(D.clean(trashnet, D.audit(trashnet)), fractions=(0.6, 0.2, 0.2)), split)
    return data, split


def run_loso(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GARBAGE_SORTER_CACHE_DIR", None)  # the script keeps its cache in --out
    done = subprocess.run(
        [sys.executable, str(BENCH / "loso.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _summary(text: str) -> dict[str, list[str]]:
    """The summary table (headed "| recipe | val ..."): recipe -> its other cells."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("| recipe ") and "| val" in line
    )
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@needs_data
def test_probe_recipes_leave_each_source_out(tiny_tree, tmp_path):
    data, split = tiny_tree
    out = tmp_path / "out"
    text = run_loso(
        "--data", str(data), "--split", str(split), "--out", str(out),
        "--recipes", "lite0", "lite0-light-framing-balanced",
    )  # fmt: skip
    assert "2 candidate recipe(s) compared" in text
    header = next(line for line in text.splitlines() if line.startswith("| recipe "))
    for source in ("taco", "floor-photos", "trashnetpp"):
        assert f"LOSO {source}" in header
    rows = _summary(text)
    for recipe in ("lite0", "lite0-light-framing-balanced"):
        figures = rows[recipe]
        assert 0 <= float(figures[2]) <= 1  # the synthetic bin camera
        loso = [float(x) for x in figures[3:6]]
        assert all(0 <= x <= 1 for x in loso)
        assert float(figures[6]) == pytest.approx(np.mean(loso), abs=0.002)
    # Each fold was tested on all of its held-out source and never trained on it.
    import json

    results = json.loads((out / "results.json").read_text())
    for fold in results["lite0"]:
        held = fold["held_out"]
        if held:
            n = len(list((data / "realworld" / held).rglob("*.jpg")))
            assert fold["test"][held]["n"] == n
            assert held not in fold["val"]
    # Augmented copies were made once per training photo and family, and are real photos.
    copies = list((out / "augmented" / "light").glob("*.jpg"))
    assert copies and len(copies) == len(list((out / "augmented" / "framing").glob("*.jpg")))
    assert Image.open(copies[0]).size[0] > 0
    # A second run reuses the feature cache and copies and gives the same table; the bundled
    # model is scored per source beside it (not leave-one-source-out).
    again = run_loso(
        "--data", str(data), "--split", str(split), "--out", str(out), "--recipes", "lite0",
        "--bundled",
    )  # fmt: skip
    assert _summary(again)["lite0"] == rows["lite0"]
    bundled = json.loads((out / "bundled.json").read_text())
    assert set(bundled) == {"trashnet", "bin-camera", "taco", "floor-photos", "trashnetpp"}
    assert bundled["trashnetpp"]["n"] == 9 and "NOT leave-one-source-out" in again


@needs_data
@pytest.mark.slow
def test_the_full_training_recipe_runs_per_fold_on_a_tiny_setting(tiny_tree, tmp_path):
    """Training's real --mode full pipeline, one step per fold; a real run takes hours on a CPU."""
    data, split = tiny_tree
    out = tmp_path / "out"
    text = run_loso(
        "--data", str(data), "--split", str(split), "--out", str(out), "--recipes", "full",
        "--set", "arch=resnet18", "weights=none", "epochs=1", "max_steps=1", "batch_size=4",
        "freeze_blocks=0", "linear_probe_epochs=0",
    )  # fmt: skip
    assert "1 candidate recipe(s) compared" in text
    assert len(list((out / "full").glob("*/model/best.pt"))) == 4
    for held in ("taco", "floor-photos", "trashnetpp"):
        tested = {
            line.split("\t")[1] for line in (out / "full" / held / "split" / "test.txt").open()
        }
        trained = {
            line.split("\t")[1] for line in (out / "full" / held / "split" / "train.txt").open()
        }
        assert held in tested and held not in trained
    assert "full" in _summary(text)


def test_light_changes_shift_colour_and_brightness_as_named():
    rgb = np.asarray(
        Image.open(sorted((TESTS / "fixtures" / "photos").rglob("*.jpg"))[0]).convert("RGB")
    )
    rng = np.random.default_rng(0)
    mean = rgb.reshape(-1, 3).mean(0)
    ratio = lambda img: img.reshape(-1, 3).mean(0)[2] / img.reshape(-1, 3).mean(0)[0]  # noqa: E731
    assert ratio(B.relight(rgb, rng, "blue_led")) > ratio(rgb) * 1.1
    assert ratio(B.relight(rgb, rng, "orange_led")) < ratio(rgb) / 1.1
    assert B.relight(rgb, rng, "low_light").mean() < 0.6 * mean.mean()
    glare = B.relight(rgb, rng, "glare")
    assert glare.std() < rgb.std() or glare.max() == 255
    for kind in B.FRAMING_KINDS:
        framed = B.reframe(rgb, rng, kind)
        assert framed.shape == rgb.shape and framed.dtype == np.uint8
        assert np.abs(framed.astype(int) - rgb).mean() > 3
    same = [B.reframe(rgb, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(*same)
    with pytest.raises(ValueError, match="unknown light"):
        B.relight(rgb, rng, "disco")


def test_bin_camera_set_is_repeatable_and_fixed_means_one_setting():
    photos = sorted((TESTS / "fixtures" / "photos").rglob("*.jpg"))[:3]
    rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    varied = B.bin_camera_set(rgbs, seed=0)
    assert [a.shape for a in varied] == [(288, 384, 3)] * 3
    again = B.bin_camera_set(rgbs, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(varied, again, strict=True))
    assert not np.array_equal(varied[0], B.bin_camera_set(rgbs, seed=1)[0])
    # One setting: the same photo twice looks alike apart from where the object lands.
    same = B.bin_camera_set([rgbs[0], rgbs[0]], seed=3, fixed=True)
    corner = lambda a: a[:24, :24].reshape(-1, 3).mean(0)  # noqa: E731
    assert np.abs(corner(same[0]) - corner(same[1])).max() < 12
