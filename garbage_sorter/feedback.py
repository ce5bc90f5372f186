"""The user's own dataset: photos the model got wrong, saved under the class the user chose.

Corrections go into ``<data dir>/feedback/<label>/``, a folder-per-class tree that the training
module reads like any other dataset, so "Retrain" can learn from them. Corrections made while a
model adapted to one camera is in use belong to that setting and are kept apart, in
``<data dir>/settings/<setting>/corrections/<label>/`` (:func:`setting_corrections_dir`): they
feed that setting's adaptation (``garbage-sorter adapt --labelled``), not the general dataset,
whose training would read a setting's folder as a class of its own. Each photo is written
atomically (temporary file, fsync, rename): a crash or a full disk leaves every earlier
correction intact and never a torn JPEG that training would trip over.
"""

from __future__ import annotations

import errno
import io
import time
import uuid
from pathlib import Path

from PIL import Image

from .storage import atomic_open, data_dir

JPEG_QUALITY = 92


class FeedbackError(Exception):
    """A correction could not be saved; the message is meant for a person."""


def feedback_dir() -> Path:
    """Where corrections are kept: ``<data dir>/feedback`` (one folder per class)."""
    return data_dir() / "feedback"


def settings_dir() -> Path:
    """Where each setting (one camera) keeps its adapted model, frames and corrections."""
    return data_dir() / "settings"


def setting_dir(setting: str) -> Path:
    """The folder of one setting: ``model.pt``, ``frames/`` and ``corrections/<label>/``."""
    if not setting or setting.startswith(".") or any(c in setting for c in "/\\\0"):
        raise ValueError(f"not a usable setting name: {setting!r}")
    return settings_dir() / setting


def setting_corrections_dir(setting: str) -> Path:
    """The corrections made in one setting, one folder per class (adaptation's ``--labelled``)."""
    return setting_dir(setting) / "corrections"


def save_correction(image: Image.Image, label: str, root: Path | None = None) -> Path:
    """Save ``image`` as a correctly labelled example of ``label``; returns the new file.

    Args:
        image: the photo (any mode; saved as RGB JPEG).
        label: the class the user says is right; becomes the folder name.
        root: the dataset folder (default :func:`feedback_dir`).

    Raises:
        ValueError: ``label`` is not usable as a folder name.
        FeedbackError: the file could not be written (disk full, no permission); nothing
            saved earlier is touched.
    """
    if (
        not label
        or label in (".", "..")
        or any(c in label for c in "/\\\0")
        or label.startswith(".")
    ):
        raise ValueError(f"not a usable class name: {label!r}")
    folder = (root or feedback_dir()) / label
    # Time first so a folder listing reads in the order the corrections were made.
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jpg"
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # Encode in memory first: Pillow's encoder writes straight to a real file's descriptor and
    # ignores short writes, so on a nearly full disk it "succeeds" with a truncated JPEG.
    # Python's file object retries short writes and raises ENOSPC instead.
    encoded = io.BytesIO()
    rgb.save(encoded, "JPEG", quality=JPEG_QUALITY)
    try:
        with atomic_open(path, "wb") as handle:
            handle.write(encoded.getbuffer())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FeedbackError(
                "The disk is full: this correction was not saved. "
                "Corrections saved before are safe."
            ) from exc
        reason = exc.strerror or str(exc)
        raise FeedbackError(f"Could not save the correction in {folder}: {reason}") from exc
    return path


def count_corrections(root: Path | None = None) -> dict[str, int]:
    """How many corrections are saved per class (classes with none are left out)."""
    root = root or feedback_dir()
    if not root.is_dir():
        return {}
    counts = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # Hidden names are temporary files of a write in progress (or one a crash left behind).
        n = sum(1 for f in folder.glob("*.jpg") if not f.name.startswith("."))
        if n:
            counts[folder.name] = n
    return counts
