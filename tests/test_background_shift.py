"""The background-shift benchmark (bench/background_shift.py) on six real photos, a tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import FIXTURE_PHOTOS, TESTS


@pytest.fixture(scope="module")
def bench():
    path = TESTS.parent / "bench" / "background_shift.py"
    spec = importlib.util.spec_from_file_location("background_shift", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture()
def split(tmp_path):
    """Five TrashNet photos (two frame-filling close-ups among them) and one TACO crop."""
    lines = [
        ("cardboard", "trashnet", "cardboard/cardboard240.jpg"),
        ("cardboard", "trashnet", "cardboard/cardboard37.jpg"),
        ("glass", "trashnet", "glass/glass422.jpg"),
        ("metal", "trashnet", "metal/metal214.jpg"),
        ("plastic", "trashnet", "plastic/plastic41.jpg"),
        ("metal", "taco", "metal/taco_batch_1_000037_a110.jpg"),
    ]
    path = tmp_path / "test.txt"
    path.write_text(
        "".join(
            f"{label}\t{source}\t{photo}\t{FIXTURE_PHOTOS / photo}\n"
            for label, source, photo in lines
        )
    )
    return path


def test_benchmark_on_real_photos(bench, split, tiny_model, tmp_path):
    photos = bench.trashnet_photos(split)
    assert [p.name for p, _ in photos] == [
        "cardboard240.jpg",
        "cardboard37.jpg",
        "glass422.jpg",
        "metal214.jpg",
        "plastic41.jpg",
    ]  # the TACO crop is not TrashNet
    report = bench.run_benchmark(
        {"tiny": tiny_model, "again": tiny_model}, photos, cache=tmp_path, sizes=(320, 256)
    )

    # The close-ups stay clean only; the three board photos go onto wood and the mixed family.
    assert report.closeups == 2
    surfaces = [s.surface for s in report.samples]
    assert surfaces.count("clean") == 5
    assert surfaces.count("wood") == surfaces.count("mixed") == surfaces.count("board") == 3
    assert all(s.path.is_file() for s in report.samples)
    folder = bench.cache_folder(tmp_path, 0)
    assert (folder / "contact_sheet.png").is_file()

    # Each image is isolated once per size, and both models are scored on it whole, cropped,
    # and on the mean of the two.
    assert {size: len(s) for size, s in report.isolation_seconds.items()} == {320: 14, 256: 14}
    modes = ["off", "u2netp 320", "whole+crop 320", "u2netp 256", "whole+crop 256"]
    assert set(report.predictions) == {(m, i) for m in ("tiny", "again") for i in modes}
    assert all(len(labels) == 14 for labels in report.predictions.values())
    assert report.predictions["tiny", "off"] == report.predictions["again", "off"]
    # Where nothing was cropped, the crop is the whole image and so is the mean.
    for size in (320, 256):
        for i, cropped in enumerate(report.cropped[size]):
            if not cropped:
                assert (
                    report.predictions["tiny", f"u2netp {size}"][i]
                    == report.predictions["tiny", "off"][i]
                )
                assert (
                    report.predictions["tiny", f"whole+crop {size}"][i]
                    == report.predictions["tiny", "off"][i]
                )

    rows = bench.table_rows(report)
    assert [row[:2] for row in rows] == [[m, i] for m in ("tiny", "again") for i in modes]
    # One metal photo on wood: its rate is 0 or 100% and says so.
    assert all(row[-1] in ("0.0 (0/1)", "100.0 (1/1)") for row in rows)
    text = bench.format_report(report)
    assert "| tiny" in text and "2 frame-filling close-ups" in text
    assert "isolation at 320 px: median" in text and "isolation at 256 px: median" in text


def test_shifted_set_is_deterministic_and_cached(bench, split, tmp_path):
    photos = bench.trashnet_photos(split)
    first, _ = bench.shifted_samples(photos, 0, tmp_path / "a")
    again, _ = bench.shifted_samples(photos, 0, tmp_path / "b")
    assert [s.path.read_bytes() for s in first] == [s.path.read_bytes() for s in again]

    # A subset makes the same images, and a second run reads them back instead of remaking them.
    stamps = {s.path: s.path.stat().st_mtime_ns for s in first}
    subset, _ = bench.shifted_samples(photos[2:4], 0, tmp_path / "a")
    assert {s.path for s in subset} <= set(stamps)
    assert all(s.path.stat().st_mtime_ns == stamps[s.path] for s in subset)

    other, _ = bench.shifted_samples(photos, 1, tmp_path / "a")
    assert other[0].path.read_bytes() != first[0].path.read_bytes()


def test_a_cache_from_before_the_board_control_is_completed(bench, split, tmp_path):
    photos = bench.trashnet_photos(split)
    first, _ = bench.shifted_samples(photos, 0, tmp_path)
    wood = {s.path: s.path.read_bytes() for s in first if s.surface == "wood"}
    manifest = bench.cache_folder(tmp_path, 0) / "manifest.json"
    old = {
        k: {s: f for s, f in v.items() if s != "board"}
        for k, v in json.loads(manifest.read_text()).items()
    }
    manifest.write_text(json.dumps(old))
    for s in first:
        if s.surface == "board":
            s.path.unlink()

    again, _ = bench.shifted_samples(photos, 0, tmp_path)
    assert [s.path for s in again] == [s.path for s in first]
    assert all(s.path.is_file() for s in again)
    assert {s.path: s.path.read_bytes() for s in again if s.surface == "wood"} == wood


def test_limit_takes_classes_in_turn(bench, split):
    photos = bench.trashnet_photos(split, limit=3)
    assert [label for _, label in photos] == ["cardboard", "glass", "metal"]
