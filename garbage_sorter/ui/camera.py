"""Camera capture with OpenCV in a worker thread; a video file can stand in for a camera.

The worker reads frames as fast as the camera delivers them (a video file: at its own frame
rate, looping) and keeps only the newest. It signals ``frame_ready`` once per new frame that
the GUI has not yet taken, so a busy GUI never builds up a queue of stale frames: it calls
:meth:`CameraWorker.take_frame` and gets the latest.

Faults are reported, never raised: a camera that will not open, stops delivering (unplugged),
or delivers unusable frames ends the worker with ``failed(message)``; choosing the camera again
starts a fresh worker.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QThread, Signal
from PySide6.QtGui import QImage

from .convert import array_to_qimage

# A live camera that returns nothing for this long is gone (unplugged, taken by another program).
LOST_AFTER_SECONDS = 2.0
# This many unusable frames in a row means the camera or its driver is broken.
MAX_BAD_FRAMES = 30
MIN_SIDE = 16
DEFAULT_FILE_FPS = 30.0


@dataclass(frozen=True)
class CameraSource:
    """A camera: an OpenCV device index, or a video file played as if it were one."""

    device: int | str
    title: str

    @property
    def is_file(self) -> bool:
        return isinstance(self.device, str)


def parse_source(value: int | str | os.PathLike[str]) -> CameraSource:
    """``"0"``/``0`` -> device 0; anything else is a video file path."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        return CameraSource(index, f"Camera {index + 1}")
    path = Path(value)
    return CameraSource(str(path), f"Video {path.name}")


def list_cameras() -> list[CameraSource]:
    """The cameras this machine shows, without opening any (opening can take seconds).

    On Linux the V4L2 devices with their names (metadata nodes left out); elsewhere OpenCV
    cannot enumerate without opening, so the first device is offered and opening it will tell.
    """
    if sys.platform.startswith("linux"):
        found = []
        for node in sorted(glob.glob("/sys/class/video4linux/video*"), key=_node_number):
            index = _read(Path(node) / "index")
            if index not in (None, "0"):
                continue  # a second node of the same camera (metadata), not a picture source
            name = _read(Path(node) / "name") or f"Camera {_node_number(node) + 1}"
            found.append(CameraSource(_node_number(node), name))
        return found
    return [CameraSource(0, "Camera 1")]


def _node_number(node: str) -> int:
    digits = "".join(c for c in Path(node).name if c.isdigit())
    return int(digits or 0)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def usable_frame(frame: Any) -> np.ndarray | None:
    """``frame`` as an HxWx3 uint8 BGR array, or None when it is not a picture."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        return None
    if min(frame.shape[:2]) < MIN_SIDE:
        return None
    if frame.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    if frame.shape[2] == 3:
        return frame
    if frame.shape[2] == 4:
        return np.ascontiguousarray(frame[:, :, :3])
    return None


def open_capture(device: int | str) -> Any:
    """An OpenCV capture for ``device``; a separate function so a test can wrap it."""
    import cv2

    return cv2.VideoCapture(device)


class CameraWorker(QThread):
    """Reads one camera until :meth:`stop` or a fault.

    Signals:
        opened(float): the camera is delivering; its frame rate (0 when it does not say).
        frame_ready(): a new frame can be taken with :meth:`take_frame`.
        failed(str): a message for the user; the worker has ended.
    """

    opened = Signal(float)
    frame_ready = Signal()
    failed = Signal(str)

    def __init__(
        self, source: CameraSource, opener: Callable[[int | str], Any] | None = None, parent=None
    ):
        super().__init__(parent)
        self.source = source
        self._opener = opener or open_capture
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, QImage] | None = None
        self._signalled = False
        self.frames_read = 0

    def take_frame(self) -> tuple[np.ndarray, QImage] | None:
        """The newest (BGR array, QImage) pair, or None if none arrived since the last call."""
        with self._lock:
            latest, self._latest, self._signalled = self._latest, None, False
        return latest

    def stop(self) -> None:
        """Ask the worker to end; it releases the camera within one frame."""
        self._stop.set()

    def run(self) -> None:
        try:
            capture = self._opener(self.source.device)
        except Exception as exc:  # noqa: BLE001 - a driver error is a message, not a crash
            self.failed.emit(f"Could not open {self.source.title}: {exc}")
            return
        try:
            if capture is None or not capture.isOpened():
                self.failed.emit(self._cannot_open())
                return
            self._loop(capture)
        finally:
            if capture is not None:
                capture.release()

    def _cannot_open(self) -> str:
        if self.source.is_file:
            if not Path(self.source.device).exists():
                return f"Could not open {self.source.title}: no such file."
            return f"Could not open {self.source.title}: not a video OpenCV can read."
        return (
            f"Could not open {self.source.title}: it may be unplugged or in use by another "
            f"program. Photos still work: drop them here or press Ctrl+O."
        )

    def _loop(self, capture: Any) -> None:
        import cv2

        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 1.0 <= fps <= 240.0:
            fps = DEFAULT_FILE_FPS if self.source.is_file else 0.0
        # A camera paces itself (read() waits for the next frame); a file must be paced by us.
        period = 1.0 / fps if self.source.is_file else 0.0
        announced = False
        bad = 0
        rewound = False
        last_good = time.monotonic()
        due = time.monotonic()
        while not self._stop.is_set():
            ok, raw = capture.read()
            if not ok:
                if self.source.is_file and self.frames_read and not rewound:
                    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # end of the video: play it again
                    rewound = True
                    continue
                if time.monotonic() - last_good > LOST_AFTER_SECONDS or self.source.is_file:
                    self.failed.emit(self._lost())
                    return
                self._stop.wait(0.02)
                continue
            frame = usable_frame(raw)
            if frame is None:
                bad += 1
                if bad >= MAX_BAD_FRAMES:
                    self.failed.emit(
                        f"{self.source.title} sends pictures that cannot be used "
                        f"(a driver problem?). Choose it again from the Camera menu to retry."
                    )
                    return
                continue
            bad, rewound, last_good = 0, False, time.monotonic()
            self.frames_read += 1
            if not announced:
                self.opened.emit(fps)
                announced = True
            self._publish(frame)
            if period:
                due += period
                delay = due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    due = time.monotonic()  # behind (slow decode): do not try to catch up

    def _lost(self) -> str:
        if self.source.is_file and not self.frames_read:
            return f"{self.source.title} holds no frames that can be read."
        if not self.frames_read:
            return (
                f"{self.source.title} opened but sends no pictures: it may be in use by another "
                f"program. Choose it again from the Camera menu to retry."
            )
        return (
            f"{self.source.title} stopped sending pictures (unplugged?). Choose it again from "
            f"the Camera menu to reconnect; photos still work meanwhile."
        )

    def _publish(self, frame: np.ndarray) -> None:
        image = array_to_qimage(frame, bgr=True)
        with self._lock:
            self._latest = (frame, image)
            notify, self._signalled = not self._signalled, True
        if notify:
            self.frame_ready.emit()
