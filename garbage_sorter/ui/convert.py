"""Pixels between PIL, numpy and Qt. Safe in any thread: QImage, unlike QPixmap, is not GUI-bound."""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage

# Shown images are capped at this many pixels on the long side: more only costs memory and paint time.
DISPLAY_MAX_SIDE = 1600
THUMBNAIL_SIDE = 128  # 64 logical pixels at a device pixel ratio of 2


def pil_to_qimage(image: Image.Image, max_side: int | None = None) -> QImage:
    """An RGB copy of ``image`` as a QImage, shrunk to ``max_side`` if given."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if max_side and max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return array_to_qimage(np.asarray(rgb))


def thumbnail_qimage(image: Image.Image, side: int = THUMBNAIL_SIDE) -> QImage:
    """A square thumbnail (centre crop), so every history entry lines up."""
    w, h = image.size
    short = min(w, h)
    box = ((w - short) // 2, (h - short) // 2, (w - short) // 2 + short, (h - short) // 2 + short)
    return pil_to_qimage(image.resize((side, side), Image.Resampling.BILINEAR, box=box))


def array_to_qimage(pixels: np.ndarray, bgr: bool = False) -> QImage:
    """A QImage owning a copy of an HxWx3 uint8 array (RGB, or BGR as OpenCV delivers)."""
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    fmt = QImage.Format.Format_BGR888 if bgr else QImage.Format.Format_RGB888
    # .copy(): the QImage would otherwise point into the array's memory after it is freed.
    return QImage(pixels.data, w, h, pixels.strides[0], fmt).copy()


def qimage_to_array(image: QImage) -> np.ndarray:
    """An HxWx3 RGB uint8 copy of ``image`` (e.g. pasted from the clipboard)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    buffer = np.frombuffer(rgb.constBits(), np.uint8, count=stride * h).reshape(h, stride)
    return buffer[:, : w * 3].reshape(h, w, 3).copy()


def mask_overlay(mask: np.ndarray, size: tuple[int, int]) -> QImage:
    """A translucent layer that dims what the isolation mask calls background.

    ``size`` is the (width, height) of the image the layer will be drawn over.
    """
    import cv2

    small = cv2.resize(np.asarray(mask, np.float32), size, interpolation=cv2.INTER_LINEAR)
    rgba = np.zeros((size[1], size[0], 4), np.uint8)
    rgba[..., 3] = ((1.0 - np.clip(small, 0.0, 1.0)) * 115).astype(np.uint8)
    return QImage(rgba.data, size[0], size[1], size[0] * 4, QImage.Format.Format_RGBA8888).copy()
