"""Write the corpus of awkward and broken image files that the loader and CLI tests feed in.

Run ``python tests/make_bad_files.py`` to regenerate ``tests/bad_files/`` (and its
``EXPECTED.json``) from the one real photo kept there, ``glass_photo.jpg`` (TrashNet
``glass/glass100.jpg``); ``--photo`` starts from another photo. Every case is made with
PIL/numpy or by hand and is deterministic, so the committed files can be rebuilt.

Each file's expected outcome is ``"error"`` (the loader must refuse it with a clear message) or
``"label"`` (it must load as an RGB image and get a prediction). Decisions worth knowing:

- ``truncated.jpg`` is the photo cut in half. PIL can decode the top half if told to
  (``LOAD_TRUNCATED_IMAGES``); we expect ``"error"`` because a half-grey photo gives a
  confident, wrong prediction without telling the user anything is amiss.
- ``bomb.png`` is a valid PNG whose header declares 30000x30000 pixels (900 megapixels, 1-bit,
  zlib-compressed zeros, ~110 kB on disk); it must be refused from the header, before decoding.
- Error cases carry image extensions (``.jpg``, ``.png``) so that a folder scan which trusts
  extensions still picks them up and must report them.
- ``jpeg_named.txt`` and ``jpeg_named.heic`` are JPEGs under the wrong name: recognised by
  content, ``"label"``.

Checks a test can make on the loaded (RGB) images:

- ``exif_rotated.jpg``: stored rotated 90 degrees counter-clockwise with EXIF orientation 6.
  Loaded correctly it is portrait, the same size as ``glass_photo.jpg``, with a pure red
  ``MARKER`` x ``MARKER`` square in its top-left corner; ignoring EXIF gives a landscape image.
- ``animated.gif``: three 64x64 frames, solid red, then blue, then green; the first frame is the
  one to use, so the loaded image is red.
- ``rgba_transparent.png`` and ``la.png``: outside a central ellipse alpha is 0 and the hidden
  colour there is noise; flattened onto white, the corners are white.
- ``gray16.png`` uses the full 16-bit range (0..65535), so dropping to the high byte is not black.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
CORPUS = HERE / "bad_files"
SOURCE_PHOTO = CORPUS / "glass_photo.jpg"
MARKER = 48  # side of the red square in exif_rotated.jpg
BOMB_SIDE = 30_000


def make_corpus(directory: Path, photo: Path = SOURCE_PHOTO) -> dict[str, str]:
    """Write every case into ``directory`` plus ``EXPECTED.json``; return filename -> outcome."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    photo_bytes = Path(photo).read_bytes()
    image = Image.open(io.BytesIO(photo_bytes)).convert("RGB")
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(0)
    expected: dict[str, str] = {}

    def write(name: str, outcome: str, data: bytes | Image.Image, **save_args) -> None:
        path = directory / name
        if isinstance(data, Image.Image):
            data.save(path, **save_args)
        else:
            path.write_bytes(data)
        expected[name] = outcome

    # The real photo, as a control.
    write("glass_photo.jpg", "label", photo_bytes)

    # Not images, or not any more.
    write("empty.jpg", "error", b"")
    write("truncated.jpg", "error", photo_bytes[: len(photo_bytes) // 2])
    write("text.jpg", "error", b"This is a shopping list, not a photo.\nMilk\nEggs\n")
    write("pdf_header.jpg", "error", _fake_pdf())
    write("random_bytes.png", "error", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write("bomb.png", "error", _png_bomb(BOMB_SIDE, BOMB_SIDE))

    # Unusual but valid images.
    gray = np.asarray(small.convert("L"), dtype=np.float64)
    gray16 = np.round((gray - gray.min()) / max(np.ptp(gray), 1) * 65535).astype(np.uint16)
    write("gray16.png", "label", Image.fromarray(gray16))
    write("cmyk.jpg", "label", image.convert("CMYK"), quality=90)
    write("palette.png", "label", small.quantize(64))
    write("rgba_transparent.png", "label", _with_hidden_noise(small, rng))
    write("la.png", "label", _with_hidden_noise(small, rng).convert("LA"))
    first, *rest = (Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green"))
    write("animated.gif", "label", first, save_all=True, append_images=rest, duration=200, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    write("exif_rotated.jpg", "label", _stored_sideways(image), exif=exif, quality=95)
    write("one_pixel.png", "label", Image.new("RGB", (1, 1), (120, 130, 110)))
    write("very_wide.png", "label", image.resize((8000, 8), Image.Resampling.BOX))
    write("one_bit.png", "label", small.convert("1"))
    write("photo.tiff", "label", small, compression="tiff_lzw")
    write("photo.webp", "label", image, quality=80)
    write("photo.bmp", "label", small)
    write("jpeg_named.txt", "label", photo_bytes)
    write("jpeg_named.heic", "label", photo_bytes)

    (directory / "EXPECTED.json").write_text(
        json.dumps(expected, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return expected


def _fake_pdf() -> bytes:
    """The start of a PDF, as a scanner app might save it."""
    return (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n"
        b"%%EOF\n"
    )


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` black pixels, tiny on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    # Each scanline is a filter byte (0) then width/8 bytes; compress row by row to keep memory low.
    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _with_hidden_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` inside a central ellipse; fully transparent noise outside it."""
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse((8, 8, image.width - 9, image.height - 9), fill=255)
    noise = Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8))
    rgba = Image.composite(image, noise, mask)
    rgba.putalpha(mask)
    return rgba


def _stored_sideways(image: Image.Image) -> Image.Image:
    """``image`` with a red top-left marker, turned 90 degrees counter-clockwise."""
    upright = image.copy()
    upright.paste((255, 0, 0), (0, 0, MARKER, MARKER))
    return upright.transpose(Image.Transpose.ROTATE_90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=CORPUS)
    parser.add_argument("--photo", type=Path, default=SOURCE_PHOTO, help="a real JPEG photo")
    args = parser.parse_args()
    expected = make_corpus(args.directory, args.photo)
    total = sum(p.stat().st_size for p in args.directory.iterdir() if p.is_file())
    print(f"wrote {len(expected)} files to {args.directory} ({total / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
