"""Fuzzing the image door with Hypothesis: every input is an RGB image or an ``ImageLoadError``.

Inputs are real photos and PIL-written images of every mode, in every format the loader opens,
then damaged: bit flips, truncations, overwritten and inserted bytes, headers spliced across
formats, PNG chunks re-checksummed so the damage reaches the decoder. Plus random bytes and
random numpy frames. No input may crash the loader (any other exception), hang it (a deadline
per input and a timeout per test), or come back as anything but 8-bit RGB.

In CI each test runs a fixed number of examples (about a minute in all on two cores). For a
longer run set ``GARBAGE_SORTER_FUZZ_SECONDS`` (each test then repeats for that many seconds) or
use ``scripts/fuzz_images.py --minutes N``, which prints how many inputs were tried.
A crash found here is fixed in the loader and its input kept in ``tests/test_images.py``.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from functools import cache

import numpy as np
import pytest
from conftest import BAD_FILES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from garbage_sorter.images import ImageLoadError, load_image

FUZZ_SECONDS = float(os.environ.get("GARBAGE_SORTER_FUZZ_SECONDS") or 0)
# Damaged headers can claim any size up to the pixel limit; 4 megapixels keeps each input well
# under a second (the limit itself is tested in test_images.py).
FUZZ_MAX_PIXELS = 4_000_000
# What each test tried, by outcome: read by scripts/fuzz_images.py and printed with pytest -rP.
STATS: dict[str, Counter] = {}

FUZZ = settings(
    deadline=timedelta(seconds=5),  # a hang, not a slow example: decoding here takes milliseconds
    # The suite runs the same examples every time, so CI passes or fails on the code alone; a
    # fuzzing run (GARBAGE_SORTER_FUZZ_SECONDS) draws new ones.
    derandomize=not FUZZ_SECONDS,
    database=None,  # keep no .hypothesis folder in the checkout; failures print a reproducer
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
pytestmark = [
    pytest.mark.timeout(FUZZ_SECONDS + 300),
    # Pillow warns about corrupt EXIF and truncated TIFF tags: expected here, by the thousand.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    # A signalling NaN in a damaged float TIFF: numpy warns on the cast, the loader cleans it up.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


@cache
def seeds() -> dict[str, bytes]:
    """Small valid files of each format and mode the loader opens, from a real photo."""
    photo = Image.open(BAD_FILES / "glass_photo.jpg").convert("RGB").resize((48, 64))
    turned = photo.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    gray16 = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)
    cases: dict[str, tuple[Image.Image, str, dict]] = {
        "rgb.jpg": (photo, "JPEG", {"quality": 90}),
        "progressive.jpg": (photo, "JPEG", {"progressive": True, "exif": exif}),
        "gray.jpg": (photo.convert("L"), "JPEG", {}),
        "cmyk.jpg": (photo.convert("CMYK"), "JPEG", {}),
        "rgba.png": (photo.convert("RGBA"), "PNG", {}),
        "palette.png": (photo.quantize(16), "PNG", {"transparency": 0}),
        "gray16.png": (gray16, "PNG", {}),
        "bit.png": (photo.convert("1"), "PNG", {}),
        "apng.png": (photo, "PNG", {"save_all": True, "append_images": [photo.transpose(0)]}),
        "anim.gif": (photo, "GIF", {"save_all": True, "append_images": [photo.transpose(0)]}),
        "rgb.bmp": (photo, "BMP", {}),
        "lzw.tiff": (photo, "TIFF", {"compression": "tiff_lzw", "exif": exif}),
        "jpeg.tiff": (photo, "TIFF", {"compression": "jpeg"}),
        "pages.tiff": (photo, "TIFF", {"save_all": True, "append_images": [turned]}),
        "float.tiff": (photo.convert("F"), "TIFF", {"compression": "tiff_adobe_deflate"}),
        "g4.tiff": (photo.convert("1"), "TIFF", {"compression": "group4"}),
        "lossy.webp": (photo, "WEBP", {"quality": 50}),
        "lossless.webp": (photo.convert("RGBA"), "WEBP", {"lossless": True}),
        "anim.webp": (photo, "WEBP", {"save_all": True, "append_images": [photo.transpose(0)]}),
        "photo.avif": (photo, "AVIF", {}),
    }
    out = {}
    for name, (image, fmt, options) in cases.items():
        buffer = io.BytesIO()
        try:
            image.save(buffer, fmt, **options)
        except (OSError, KeyError):  # a Pillow built without this codec
            continue
        out[name] = buffer.getvalue()
    for name in ("exif_rotated.jpg", "palette.png", "la.png", "one_bit.png", "photo.webp"):
        out[name] = (BAD_FILES / name).read_bytes()
    return out


INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x01\x00\x00",
    b"\x00\x00\x01\x00",
]


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to four random injuries, biased to the header where parsers decide."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        reach = size if draw(st.booleans()) else min(size, 256)
        where = draw(st.integers(0, max(reach - 1, 0)))
        op = draw(
            st.sampled_from(
                ["flip", "truncate", "overwrite", "interesting", "insert", "delete", "splice"]
            )
        )
        if op == "flip" and size:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[:where]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[where : where + len(chunk)] = chunk
        elif op == "interesting":
            chunk = draw(st.sampled_from(INTERESTING))
            data[where : where + len(chunk)] = chunk
        elif op == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        elif op == "splice":  # another format's header on this body, or the reverse
            other = seeds()[draw(st.sampled_from(sorted(seeds())))]
            cut = draw(st.integers(1, 128))
            data = (
                bytearray(other[:cut]) + data[cut:]
                if draw(st.booleans())
                else data[:cut] + other[cut:]
            )
    if data.startswith(b"\x89PNG") and draw(st.booleans()):
        data = fix_png_checksums(data)
    return bytes(data)


def fix_png_checksums(data: bytearray) -> bytearray:
    """Recompute every chunk's CRC, so that damage inside a chunk reaches the decoder."""
    at = 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[at + 4 : end]))
        at = end + 4
    return data


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    return draw(damage(seeds()[draw(st.sampled_from(sorted(seeds())))]))


MAGIC = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"\x00\x00\x00\x1cftypavif",
]
random_bytes = st.one_of(
    st.binary(max_size=4096),
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2048)).map(b"".join),
)

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"]
TIFF_JPEG_MODES = {"L", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB"}
WRITERS = {
    "JPEG": st.fixed_dictionaries({"quality": st.integers(1, 100), "progressive": st.booleans()}),
    "PNG": st.fixed_dictionaries({"optimize": st.booleans()}),
    "GIF": st.just({}),
    "BMP": st.just({}),
    "TIFF": st.fixed_dictionaries(
        {
            "compression": st.sampled_from(
                ["raw", "tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg", "group4"]
            )
        }
    ),
    "WEBP": st.fixed_dictionaries({"lossless": st.booleans(), "quality": st.integers(0, 100)}),
}


@st.composite
def written_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int] | None]:
    """A random-size, random-mode image written by Pillow, maybe damaged afterwards.

    Returns the file and, when it was left intact, the size it must load at (EXIF-turned).
    """
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(sorted(WRITERS)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode if mode not in ("I;16",) else "L")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    options = dict(draw(WRITERS[fmt]))
    # Pillow 12's TIFF writer crashes the process (SIGSEGV) after refusing these combinations:
    # a writer bug, not the loader's; the loader still meets such files through damage().
    if options.get("compression") == "group4" and mode != "1":
        options["compression"] = "tiff_lzw"
    if options.get("compression") == "jpeg" and mode not in TIFF_JPEG_MODES:
        options["compression"] = "packbits"
    # ... and writes uncompressed YCbCr TIFFs it cannot read back ("image file is truncated", at
    # every size tried from 1x1 to 64x48): a file the loader is right to refuse.
    if options.get("compression") == "raw" and mode == "YCbCr":
        options["compression"] = "packbits"
    orientation = draw(st.integers(0, 8))
    if orientation and fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    frames = draw(st.integers(1, 3))
    if frames > 1 and fmt in ("GIF", "PNG", "TIFF", "WEBP"):
        options.update(save_all=True, append_images=[image.transpose(0)] * (frames - 1))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.save(buffer, fmt, **options)
    except (OSError, KeyError, ValueError, TypeError):  # Pillow cannot write this mode so
        assume(False)
    if draw(st.booleans()):
        return draw(damage(buffer.getvalue())), None
    turned = orientation in (5, 6, 7, 8) and "exif" in options
    return buffer.getvalue(), (height, width) if turned else (width, height)


def loads_or_refuses(source, stats: Counter, **kwargs) -> Image.Image | None:
    """The property: an RGB image, or an ImageLoadError with a message for a person."""
    stats["tried"] += 1
    try:
        image = load_image(source, max_pixels=FUZZ_MAX_PIXELS, **kwargs)
    except ImageLoadError as exc:
        message = str(exc)
        assert 5 < len(message) < 200 and "\n" not in message and "Traceback" not in message
        stats["refused"] += 1
        return None
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1 and image.width * image.height <= FUZZ_MAX_PIXELS
    assert len(image.tobytes()) == image.width * image.height * 3
    stats["loaded"] += 1
    return image


def as_source(data: bytes, kind: str, folder) -> object:
    if kind == "bytes":
        return data
    if kind == "file":
        return io.BytesIO(data)
    path = folder / "input.bin"
    path.write_bytes(data)
    return path


def fuzz(name: str, test: Callable[[], None]) -> None:
    """Run a Hypothesis test once (CI), or over and over for ``GARBAGE_SORTER_FUZZ_SECONDS``."""
    stats = STATS.setdefault(name, Counter())
    started = time.monotonic()
    test()
    while time.monotonic() - started < FUZZ_SECONDS:
        test()
    stats["seconds"] = round(time.monotonic() - started, 1)
    print(f"{name}: {dict(stats)}")


def test_damaged_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    stats = STATS.setdefault("damaged_files", Counter())

    @settings(FUZZ, max_examples=1500)
    @given(data=damaged_files(), kind=st.sampled_from(["bytes", "file", "path"]))
    def run(data, kind):
        loads_or_refuses(as_source(data, kind, folder), stats)

    fuzz("damaged_files", run)


def test_random_bytes():
    stats = STATS.setdefault("random_bytes", Counter())

    @settings(FUZZ, max_examples=500)
    @given(data=random_bytes)
    def run(data):
        loads_or_refuses(data, stats)

    fuzz("random_bytes", run)


def test_written_images():
    """Intact files of every mode, size and format load at the right size; damaged ones don't crash."""
    stats = STATS.setdefault("written_images", Counter())

    @settings(FUZZ, max_examples=500)
    @given(case=written_images())
    def run(case):
        data, size = case
        image = loads_or_refuses(data, stats)
        if size is not None:
            assert image is not None, "a valid file written by Pillow was refused"
            assert image.size == size

    fuzz("written_images", run)


NUMERIC = st.sampled_from(
    [
        np.uint8,
        np.uint16,
        np.int16,
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.bool_,
    ]
)
frames = NUMERIC.flatmap(
    lambda dtype: hnp.arrays(
        dtype,
        st.one_of(
            hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=32),
            st.tuples(st.integers(1, 32), st.integers(1, 32), st.integers(1, 5)),
        ),
    )
)


def test_numpy_frames():
    """Any numeric frame, NaN and infinity included; BGR is RGB reversed."""
    stats = STATS.setdefault("numpy_frames", Counter())

    @settings(FUZZ, max_examples=300)
    @given(frame=frames, channels=st.sampled_from(["RGB", "BGR"]))
    def run(frame, channels):
        with np.errstate(all="ignore"):
            image = loads_or_refuses(frame, stats, channels=channels)
            depth = frame.shape[2] if frame.ndim == 3 else 1
            assert (image is None) == (depth in (2, 5))
            if image is None:
                return
            assert image.size == (frame.shape[1], frame.shape[0])
            if depth == 3:
                other = "RGB" if channels == "BGR" else "BGR"
                assert image.tobytes() == load_image(frame[:, :, ::-1], channels=other).tobytes()

    fuzz("numpy_frames", run)


@pytest.fixture(scope="module")
def classifier(tiny_model):
    import torch

    from garbage_sorter.classifier import Classifier

    # One small image at a time: on a shared two-core machine, intra-op threads only contend
    # (2-3 s a prediction instead of 0.2 s while a training runs beside the tests).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Classifier.load(tiny_model, device="cpu")
    torch.set_num_threads(threads)


def test_classifier_predict(classifier):
    """The whole path a front end takes: a label with sane probabilities, or ImageLoadError."""
    stats = STATS.setdefault("classifier_predict", Counter())

    # Predict uses the full 50-megapixel limit: a damaged header may take seconds, not a hang.
    @settings(FUZZ, max_examples=40, deadline=timedelta(seconds=30))
    @given(
        data=st.one_of(
            st.sampled_from(sorted(seeds().values())),
            damaged_files(),
            written_images().map(lambda case: case[0]),
        )
    )
    def run(data):
        stats["tried"] += 1
        try:
            prediction = classifier.predict(data)
        except ImageLoadError as exc:
            assert 5 < len(str(exc)) < 200
            stats["refused"] += 1
            return
        assert prediction.label in classifier.classes
        assert all(math.isfinite(p) for p in prediction.probabilities.values())
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        stats["loaded"] += 1

    fuzz("classifier_predict", run)
