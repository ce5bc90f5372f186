"""The image door: the awkward-files corpus, the special cases, bombs, and hostile formats.

Every file in ``tests/bad_files`` must come out as its ``EXPECTED.json`` says, through
``load_image`` and through the ``classify`` command. Files that fuzzing once crashed the loader
with are kept here as regular tests (see ``tests/test_fuzz_images.py``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BAD_FILES, CLASSES
from make_bad_files import MARKER, _png_bomb
from PIL import Image

from garbage_sorter.images import ImageLoadError, load_image

EXPECTED: dict[str, str] = json.loads((BAD_FILES / "EXPECTED.json").read_text())
PHOTO = BAD_FILES / "glass_photo.jpg"

# What a person is told for the broken files: the gist, not a Python exception.
MESSAGES = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "pdf_header.jpg": "not an image",
    "random_bytes.png": "not an image",
    "bomb.png": "too large",
}


def assert_readable(message: str) -> None:
    """One short line for a person: no traceback, errno or exception class name."""
    assert 5 < len(message) < 200 and "\n" not in message, message
    for leak in ("Traceback", "Errno", "Error:", "Exception", "<"):
        assert leak not in message, message


# Files that once crashed load_image, found by the fuzzer: the decoders' own exception types
# escaped. DDS, BLP and JPEG 2000 are no longer opened at all; AVIF is, and is refused.
def dds_unknown_pixel_format() -> bytes:
    """A DDS file whose pixel-format flags are 0: Pillow raised NotImplementedError."""
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(buffer, "DDS")
    data = bytearray(buffer.getvalue())
    data[80:84] = bytes(4)
    return bytes(data)


def blp_unknown_compression() -> bytes:
    """A BLP2 file with compression 99: Pillow raised BLPFormatError on load."""
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, "BLP")
    data = bytearray(buffer.getvalue())
    data[4:8] = struct.pack("<i", 99)
    return bytes(data)


def jp2_huge_box() -> bytes:
    """A JPEG 2000 file whose header box claims 2**64 - 1 bytes: Pillow raised OverflowError."""
    return (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n"
        + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
        + b"\x00\x00\x00\x01jp2h"
        + b"\xff" * 8
        + bytes(32)
    )


def avif_without_primary_item() -> bytes:
    """An AVIF file whose primary-item box is renamed: Pillow raised RuntimeError."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "AVIF")
    return buffer.getvalue().replace(b"pitm", b"pitx")


# An EPS file: Pillow hands it to Ghostscript to render, i.e. runs a stranger's PostScript.
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"

HOSTILE = {
    "dds_header.png": dds_unknown_pixel_format,
    "blp_header.png": blp_unknown_compression,
    "jp2_box.jpg": jp2_huge_box,
    "avif_item.jpg": avif_without_primary_item,
    "postscript.jpg": lambda: POSTSCRIPT,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("kind", ["path", "bytes", "file"])
def test_corpus_outcome_through_load_image(name, kind):
    path = BAD_FILES / name
    source = {
        "path": lambda: path,
        "bytes": path.read_bytes,
        "file": lambda: io.BytesIO(path.read_bytes()),
    }[kind]()
    if EXPECTED[name] == "label":
        image = load_image(source)
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
        return
    with pytest.raises(ImageLoadError) as caught:
        load_image(source)
    assert_readable(str(caught.value))
    if kind == "path" or name != "empty.jpg":  # empty bytes cannot tell "empty" from "not an image"
        assert MESSAGES[name] in str(caught.value)


def test_exif_orientation_is_applied():
    raw = Image.open(BAD_FILES / "exif_rotated.jpg")
    assert raw.width > raw.height, (
        "the stored pixels must be landscape for this test to mean anything"
    )
    image = load_image(BAD_FILES / "exif_rotated.jpg")
    assert image.size == load_image(PHOTO).size and image.height > image.width
    pixels = np.asarray(image).astype(int)
    inside = pixels[4 : MARKER - 4, 4 : MARKER - 4].reshape(-1, 3).mean(axis=0)
    assert inside[0] > 200 and inside[1] < 60 and inside[2] < 60, inside  # red, top-left
    for corner in (
        pixels[-MARKER:, :MARKER],
        pixels[:MARKER, -MARKER:],
        pixels[-MARKER:, -MARKER:],
    ):
        assert not (corner[..., 0].mean() > 200 and corner[..., 1].mean() < 60)


def test_animated_gif_gives_its_first_frame():
    image = load_image(BAD_FILES / "animated.gif")
    assert set(image.getdata()) == {(255, 0, 0)}


@pytest.mark.parametrize("name", ["rgba_transparent.png", "la.png"])
def test_transparency_is_flattened_onto_white(name):
    pixels = np.asarray(load_image(BAD_FILES / name))
    for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
        assert tuple(corner) == (255, 255, 255)
    centre = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2]
    assert tuple(centre) != (255, 255, 255)


def test_unusual_modes_keep_the_picture():
    """16-bit, CMYK, palette and 1-bit files look like the photo they were made from."""
    photo = load_image(PHOTO)
    half = np.asarray(
        photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS), float
    )
    cmyk = np.asarray(load_image(BAD_FILES / "cmyk.jpg"), float)
    assert np.abs(cmyk - np.asarray(photo, float)).mean() < 10
    palette = np.asarray(load_image(BAD_FILES / "palette.png"), float)
    assert np.abs(palette - half).mean() < 10
    gray16 = np.asarray(load_image(BAD_FILES / "gray16.png"))
    assert gray16.min() < 30 and gray16.max() > 225  # full range, not the black of a dropped byte
    assert np.abs(gray16.mean(axis=2) - half.mean(axis=2)).mean() < 15
    assert set(np.unique(np.asarray(load_image(BAD_FILES / "one_bit.png")))) <= {0, 255}


def test_numpy_channel_order():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    assert set(load_image(rgb).getdata()) == {(255, 0, 0)}
    assert set(load_image(rgb[..., ::-1], channels="BGR").getdata()) == {(255, 0, 0)}
    assert set(load_image(rgb[..., ::-1]).getdata()) == {(0, 0, 255)}
    bgra = np.dstack([rgb[..., ::-1], np.full((8, 8), 255, np.uint8)])
    assert set(load_image(bgra, channels="BGR").getdata()) == {(255, 0, 0)}
    assert set(load_image(rgb.astype(np.float32) / 255).getdata()) == {(255, 0, 0)}
    # A real OpenCV frame: BGR from cv2 matches PIL's decoding of the same file.
    frame = cv2.imread(str(PHOTO))
    assert frame is not None
    from_cv2 = np.asarray(load_image(frame, channels="BGR"), float)
    assert np.abs(from_cv2 - np.asarray(load_image(PHOTO), float)).mean() < 2
    assert np.abs(np.asarray(load_image(frame), float) - from_cv2).mean() > 10


@pytest.mark.parametrize("shape", [(5,), (0, 4, 3), (4, 4, 2), (1, 4, 4, 3)])
def test_arrays_that_are_not_images(shape):
    with pytest.raises(ImageLoadError):
        load_image(np.zeros(shape, np.uint8))


def test_bytes_and_file_objects_equal_the_path():
    expected = np.asarray(load_image(PHOTO))
    data = PHOTO.read_bytes()
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data), open(PHOTO, "rb")):
        assert np.array_equal(np.asarray(load_image(source)), expected), type(source)
        if hasattr(source, "close"):
            source.close()


def test_bomb_is_refused_quickly_from_the_header():
    """The 30000x30000 PNG (900 megapixels in 110 kB) is refused in well under a second."""
    data = (BAD_FILES / "bomb.png").read_bytes()
    for source in (BAD_FILES / "bomb.png", data):
        started = time.perf_counter()
        with pytest.raises(ImageLoadError, match="too large"):
            load_image(source)
        assert time.perf_counter() - started < 1.0
    # Between Pillow's own bomb limit (89 MP) and ours (50 MP): refused by our header check.
    with pytest.raises(ImageLoadError, match=r"8000x8000 pixels"):
        load_image(_png_bomb(8000, 8000))


def test_bomb_allocates_no_pixels():
    """In a fresh process, refusing the bomb does not raise the peak memory by the image's size."""
    code = (
        "import resource, sys\n"
        "from garbage_sorter.images import ImageLoadError, load_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "load_image(sys.argv[2])  # plugins and buffers are set up before measuring\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_image(data)\nexcept ImageLoadError:\n    pass\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(BAD_FILES / "bomb.png"), str(PHOTO)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Decoding would take 900 MB (one byte a pixel even for 1-bit images in Pillow).
    assert int(done.stdout) < 20, f"peak memory rose by {done.stdout.strip()} MB"


def test_big_files_are_refused_by_size_before_reading(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: 60 MB on paper, nothing on disk
        handle.write(PHOTO.read_bytes())
        handle.truncate(60 * 2**20)
    started = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"file too large \(60 MB; limit 50 MB\)"):
        load_image(huge)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ImageLoadError, match="file too large"):
        load_image(PHOTO, max_bytes=1000)

    class Endless(io.RawIOBase):
        """A stream that never ends, such as an upload without a length."""

        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    with pytest.raises(ImageLoadError, match="file too large"):
        load_image(io.BufferedReader(Endless()), max_bytes=2**20)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_fuzzer_finds_and_other_formats_are_refused(name):
    with pytest.raises(ImageLoadError) as caught:
        load_image(HOSTILE[name]())
    assert_readable(str(caught.value))


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_cli_answers_every_file_and_runs_nothing(tiny_model, tmp_path):
    """``classify --json`` on the corpus plus hostile files, with a booby-trapped ``gs`` on PATH.

    One JSON line per file, readable errors, labels for the odd-but-valid ones, exit status 1,
    no traceback, and the fake Ghostscript never runs.
    """
    folder = tmp_path / "inputs"
    folder.mkdir()
    expected = dict(EXPECTED)
    for name in EXPECTED:
        (folder / name).write_bytes((BAD_FILES / name).read_bytes())
    for name, make in HOSTILE.items():
        (folder / name).write_bytes(make())
        expected[name] = "error"
    bin_dir, ran = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    fake_gs = bin_dir / "gs"
    fake_gs.write_text(f'#!/bin/sh\necho "$@" >> {ran}\n')
    fake_gs.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "garbage_sorter",
            "classify",
            "--json",
            "--model",
            str(tiny_model),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    by_name = {Path(answer["path"]).name: answer for answer in answers}
    assert len(answers) == len(by_name) and set(by_name) == set(expected)
    for name, outcome in expected.items():
        if outcome == "error":
            assert set(by_name[name]) == {"path", "error"}, by_name[name]
            assert_readable(by_name[name]["error"])
        else:
            assert by_name[name]["label"] in CLASSES, by_name[name]
    assert not ran.exists(), "Ghostscript was run on an uploaded file"
