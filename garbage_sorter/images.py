"""Opening whatever a user hands us as an RGB image, or saying clearly why not.

This is the one door through which files, bytes, numpy frames and PIL images enter the core.
It refuses decompression bombs by the pixel count in the header, before decoding, and huge files
by size; applies EXIF orientation; flattens transparency onto white (TrashNet's posterboard);
maps 16-bit, CMYK, palette, 1-bit and animated images to plain 8-bit RGB.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # a 50-megapixel photo is fine; a 30000x30000 bomb is not
MAX_BYTES = 50 * 1024 * 1024
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".heic",
    ".jfif",
}
# The formats a photo arrives in. Pillow can open forty more, and some are not safe to hand
# strangers' files: EPS runs Ghostscript on the file, and the rarely used decoders are where
# fuzzing finds trouble. HEIF is used when a plugin such as pillow-heif has registered it.
PHOTO_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "HEIF")

# Never decode a truncated file into a half-grey image silently: it must be an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


class ImageLoadError(ValueError):
    """An input that cannot be turned into an image; the message is meant for a person."""


def sniff_image(head: bytes) -> bool:
    """True when the first bytes of a file look like an image format we can open."""
    if head.startswith(_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def looks_like_image(path: Path) -> bool:
    """Recognise an image by content; an image extension counts too so broken photos get an error."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return sniff_image(handle.read(16))
    except OSError:
        return False


def iter_image_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files and folders (recursively, sorted) into the image files to classify.

    A file named explicitly is always yielded, so that a broken one is reported rather than
    skipped; inside folders, non-images (READMEs, manifests) are left out.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if not child.name.startswith(".") and looks_like_image(child):
                    yield child
        else:
            yield path


def load_image(
    source: Any,
    *,
    channels: str = "RGB",
    draft: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Image.Image:
    """Return ``source`` as an 8-bit RGB PIL image.

    Args:
        source: a path, raw bytes, a file object, a PIL image, or a numpy array (HxW or HxWxC,
            uint8 or float in [0, 1]).
        channels: channel order of a numpy array: ``"RGB"``, or ``"BGR"`` for OpenCV frames.
        draft: when set, JPEGs are decoded at a reduced scale that still leaves the short side at
            least this many pixels (much faster for big phone photos; see ``bench/``).
        max_pixels: refuse images with more pixels than this, judged from the header.
        max_bytes: refuse files larger than this.

    Raises:
        ImageLoadError: with a message naming what is wrong.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_bytes:
            raise ImageLoadError(
                f"file too large ({len(source) / 2**20:.0f} MB; limit {max_bytes / 2**20:.0f} MB)"
            )
        return _open(io.BytesIO(bytes(source)), draft, max_pixels)
    if hasattr(source, "read"):
        return load_image(
            source.read(max_bytes + 1), draft=draft, max_pixels=max_pixels, max_bytes=max_bytes
        )
    path = Path(source)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageLoadError("is a folder, not an image")
    if size == 0:
        raise ImageLoadError("empty file")
    if size > max_bytes:
        raise ImageLoadError(
            f"file too large ({size / 2**20:.0f} MB; limit {max_bytes / 2**20:.0f} MB)"
        )
    try:
        with open(path, "rb") as handle:
            return _open(handle, draft, max_pixels)
    except OSError as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(f"cannot read file ({exc.strerror or exc})") from None


def _open(handle: Any, draft: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()
            image = Image.open(handle, formats=[f for f in PHOTO_FORMATS if f in Image.OPEN])
            w, h = image.size
            if w < 1 or h < 1:
                raise ImageLoadError("image has no pixels")
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"image too large: {w}x{h} pixels (limit {max_pixels / 1e6:.0f} megapixels)"
                )
            if draft and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image.load()
            return _to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image, or an image format that cannot be read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError("image too large (decompression bomb)") from None
    # RuntimeError (the AVIF decoder's "Failed to decode image") and OverflowError: what some
    # decoders raise for a corrupt file.
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        struct.error,
        RuntimeError,
        OverflowError,
    ) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        if "truncated" in reason or "broken data stream" in reason or isinstance(exc, EOFError):
            raise ImageLoadError("image file is truncated or damaged") from None
        raise ImageLoadError(f"image file is damaged ({reason})") from None
    except MemoryError:
        raise ImageLoadError("image too large to decode in memory") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB, flattening alpha onto white."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose an otherwise good photo
        pass
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = pixels.max() or 1.0
        image = Image.fromarray((pixels * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    elif mode == "F":
        image = Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64)), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        finite = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return (finite * scale).clip(0, 255).astype(np.uint8)
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    return pixels.clip(0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, channels: str) -> Image.Image:
    if array.ndim not in (2, 3) or array.size == 0 or min(array.shape[:2]) < 1:
        raise ImageLoadError(f"array of shape {array.shape} is not an image")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageLoadError("image too large")
    pixels = _to_uint8(array)
    if pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels), "L").convert("RGB")
    if pixels.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), "L").convert("RGB")
    if pixels.shape[2] not in (3, 4):
        raise ImageLoadError(f"array with {pixels.shape[2]} channels is not an image")
    if channels.upper() == "BGR":
        pixels = pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]]
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels), mode))
