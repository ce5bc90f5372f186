"""Adapting the model to the running camera: collect distinct frames, adapt in a worker, keep it.

A setting is one camera (a device, or a video file standing in for one), named by
:func:`setting_key`. Its folder (:func:`garbage_sorter.feedback.setting_dir`) holds the adapted
checkpoint ``model.pt``, the ``frames/`` it was adapted on and the ``corrections/`` made while it
was in use. The adaptation itself is the core's :func:`garbage_sorter.adapt.adapt`, the same as
``garbage-sorter adapt --out model.pt [--labelled corrections] frames``.

Nothing in the setting's folder changes until a run has succeeded: a run works in a hidden
folder beside it and moves its results in at the end, so Cancel, an error or a crash leaves the
setting exactly as it was (and a first run leaves no folder at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QThread, Signal

from garbage_sorter.feedback import (
    count_corrections,
    setting_corrections_dir,
    setting_dir,
    settings_dir,
)

from .camera import CameraSource

MODEL_NAME = "model.pt"
FRAMES = "frames"
# A frame is kept when its small grey thumbnail differs from the last kept one by at least this
# much (mean absolute difference), the thumbnails first brought to one contrast: standard
# deviation CONTRAST, about the median of real photos' thumbnails (TACO 46, TrashNet 43). As
# they were, with a threshold of 8 grey levels, a dark smart bin's frames (sd 12-17) kept 1 view
# of 360 different items. Brought to one contrast, with 5, of 80 photos each at 640x480: the
# next item kept 79/80 (smart bin), 80/80 (TACO), 80/80 (TrashNet); the same view with noise
# (sd 8) plus JPEG at quality 70, 0/30 each; shifted by 12 px, 5/30, 30/30, 24/30.
MIN_DIFFERENCE = 5.0
CONTRAST = 45.0
MIN_CONTRAST = 4.0  # a blank frame (lens covered) is not stretched into noise
THUMBNAIL = (32, 24)
# The core's garbage_sorter.adapt.MIN_PHOTOS (importing it would import torch on the GUI thread).
MIN_FRAMES = 16
# A cap on memory and time: adapting to 150 took 26 s on 2 cores at load average 2 (BENCHMARKS.md).
MAX_FRAMES = 150
# Larger frames are shrunk when kept (preprocessing resizes them to ~256 px anyway): 150 full-HD
# frames would hold 900 MB, 150 at 640x360 hold 100 MB.
MAX_SIDE = 640
JPEG_QUALITY = 92
# Corrections of each class an adaptation learns from, the newest (older ones stay in the
# folder): its time grows with them. On one thread, Retrain with 150 frames and 120 corrections
# took 84 s before the core's CHOOSE_ON, 53 s after; a smart bin's 90, whose tuning won, 59 s
# (bench/app_adapt.py).
NEWEST_CORRECTIONS = 15


def setting_key(source: CameraSource) -> str:
    """A folder and settings name for a camera: its index and name, or a video file's path."""
    if source.is_file:
        path = Path(source.device).resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        return f"video-{_slug(path.stem)}-{digest}"
    return f"camera-{source.device}-{_slug(source.title)}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unnamed"


def adapted_model_path(setting: str) -> Path:
    return setting_dir(setting) / MODEL_NAME


def setting_of(model_path: str | os.PathLike[str] | None) -> str | None:
    """The setting whose adapted model ``model_path`` is, or None for any other model."""
    if not model_path:
        return None
    path = Path(model_path)
    if path.name != MODEL_NAME:
        return None
    try:
        if path.parent.parent.resolve() != settings_dir().resolve():
            return None
    except OSError:
        return None
    return path.parent.name


class FrameCollector:
    """Keeps the camera frames that differ from the last kept one; counts them all.

    ``add`` runs on the GUI thread for every frame, so it only shrinks the frame to a 32x24
    grey thumbnail (well under a millisecond) before deciding.
    """

    def __init__(self, min_difference: float = MIN_DIFFERENCE, max_frames: int = MAX_FRAMES):
        self.min_difference = min_difference
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []
        self.seen = 0
        self._last: np.ndarray | None = None

    @property
    def full(self) -> bool:
        return len(self.frames) >= self.max_frames

    def add(self, frame: np.ndarray) -> bool:
        """Offer a BGR frame; True if it was kept (different enough, and room left)."""
        import cv2

        self.seen += 1
        if self.full:
            return False
        grey = cv2.cvtColor(
            cv2.resize(frame, THUMBNAIL, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
        )
        thumb = grey.astype(np.float32)
        thumb = (thumb - thumb.mean()) * (CONTRAST / max(float(thumb.std()), MIN_CONTRAST))
        if self._last is not None and np.abs(thumb - self._last).mean() < self.min_difference:
            return False
        self._last = thumb
        scale = MAX_SIDE / max(frame.shape[:2])
        if scale < 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        else:
            frame = frame.copy()  # the camera may reuse its buffer
        self.frames.append(frame)
        return True


class Cancelled(Exception):
    """Raised from the progress callback to stop a run at its next report."""


def adapt_setting(
    setting: str,
    *,
    base: str | None,
    frames: Sequence[np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Adapt ``base`` (None: the bundled model) to a setting and keep the result in its folder.

    Args:
        frames: new BGR frames of the setting; they replace its kept frames. None: adapt again
            on the kept ones (after corrections).
        progress: called with a line of text at each step.
        should_stop: polled at each step; True ends the run with :class:`Cancelled`.

    The setting's corrections, if any, are the labelled photos. Returns the core's adaptation
    record. Raises :class:`Cancelled`, or :class:`garbage_sorter.adapt.AdaptError` for unusable
    input; either way the setting's folder is as it was.
    """
    import cv2

    from garbage_sorter.adapt import AdaptError, adapt

    report = progress or (lambda message: None)
    stop = should_stop or (lambda: False)

    def check(message: str) -> None:
        if stop():
            raise Cancelled()
        report(message)

    folder = setting_dir(setting)
    existed = folder.exists()
    work = folder / f".adapting-{uuid.uuid4().hex[:8]}"
    try:
        work.mkdir(parents=True)
        if frames is not None:
            photos = work / FRAMES
            photos.mkdir()
            for i, frame in enumerate(frames):
                check(f"saving frames {i + 1}/{len(frames)}")
                if not cv2.imwrite(
                    str(photos / f"{i:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
                ):
                    raise OSError(f"could not write a frame in {photos}")
        else:
            photos = folder / FRAMES
            if not photos.is_dir():
                raise AdaptError("this camera has no kept frames: adapt to it first", 1)
        corrections = setting_corrections_dir(setting)
        labelled = corrections if count_corrections(corrections) else None
        record = adapt(
            work / MODEL_NAME,
            [photos],
            base=base,
            labelled=labelled,
            newest=NEWEST_CORRECTIONS,
            progress=check,
        )
        check("keeping the adapted model")
        # Everything is ready: move it in. The model last, so it never names frames it lacks.
        if frames is not None:
            old = folder / FRAMES
            if old.exists():
                old.rename(work / "old-frames")
            photos.rename(old)
        os.replace(work / MODEL_NAME, folder / MODEL_NAME)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not existed:
            _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` and its parents up to the data folder while they are empty."""
    stop_at = folder.parent.parent
    with contextlib.suppress(OSError):
        while folder != stop_at and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


class AdaptWorker(QThread):
    """Runs :func:`adapt_setting` off the GUI thread.

    Signals:
        progress(str): each step of the run.
        succeeded(dict): the adaptation record; the setting's ``model.pt`` is the new model.
        cancelled(): stopped at the user's request; nothing changed.
        failed(str): stopped by an error, with a message for the user; nothing changed.
    """

    progress = Signal(str)
    succeeded = Signal(object)
    cancelled = Signal()
    failed = Signal(str)

    def __init__(
        self,
        setting: str,
        base: str | None,
        frames: Sequence[np.ndarray] | None = None,
        parent=None,
    ):
        super().__init__(parent)
        self.setting, self.base, self.frames = setting, base, frames
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop at its next step (within one batch of photos)."""
        self._stop.set()

    def run(self) -> None:
        import torch

        from garbage_sorter.adapt import AdaptError

        # Every core: live answers pause while it runs, and the window only draws progress. The
        # app gives torch one thread of two once a PyTorch model is in use, and on one thread
        # Retrain with 90 corrections took 58.5 s, on two 41.9 s with the window's longest
        # stall 38 ms (bench/app_adapt.py). OMP_NUM_THREADS, where set, still decides.
        threads = torch.get_num_threads()
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(os.cpu_count() or 1)
        try:
            record = adapt_setting(
                self.setting,
                base=self.base,
                frames=self.frames,
                progress=self.progress.emit,
                should_stop=self._stop.is_set,
            )
        except Cancelled:
            self.cancelled.emit()
        except AdaptError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message for the window
            traceback.print_exception(exc, file=sys.stderr)
            self.failed.emit(f"Adapting stopped: {exc}")
        else:
            self.succeeded.emit(record)
        finally:
            torch.set_num_threads(threads)
            self.frames = None  # the frames are on disk now (or not wanted): free them
