"""The classification worker: files in order, camera frames latest-wins, all off the GUI thread.

Two kinds of work reach it. Jobs (dropped or opened files, a pasted image, a captured frame) are
queued and every one is answered, in order. Live camera frames go into a single slot that the
next frame overwrites, so a slow model skips frames instead of falling ever further behind.
Jobs go first: a user waiting for their photos matters more than one more preview frame.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import QThread, Signal
from PySide6.QtGui import QImage

from garbage_sorter.images import ImageLoadError, load_image

from .convert import (
    DISPLAY_MAX_SIDE,
    mask_overlay,
    pil_to_qimage,
    qimage_to_array,
    thumbnail_qimage,
)

_ids = itertools.count(1)
# A photo whose long side is shorter than this as the model reads it is decoded again to show it.
SHARP_SIDE = 1024


@dataclass
class Job:
    """One image to classify. ``data``: a path, PIL image, QImage, or numpy array (``channels``)."""

    source: str  # what the user calls it: a file name, "Clipboard", "Camera 12:01:05"
    data: Any
    isolate: bool = False
    channels: str = "RGB"
    live: bool = False
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True)
class Result:
    """A classified image, with everything the window needs to show it again later."""

    job_id: int
    source: str
    prediction: Any  # garbage_sorter.classifier.Prediction
    image: Image.Image  # the photo as the model read it (JPEGs at reduced "draft" scale)
    display: QImage  # the photo at display size (the same aspect as ``image``)
    thumbnail: QImage | None  # None for live frames, which never go into the history
    mask: QImage | None  # isolation mask as a dimming layer over ``display``
    live: bool
    when: float = field(default_factory=time.time)

    @property
    def model_input(self) -> Image.Image:
        """What the classifier saw: the photo, cropped to the object when isolation was on."""
        box = self.prediction.crop_box
        return self.image.crop(box) if box else self.image


class InferenceWorker(QThread):
    """Classifies jobs and live frames with the current classifier.

    Signals:
        answered(Result): a job or live frame was classified.
        failed(int, str, str): job id, source, a message for the user (live frames that fail
            are dropped silently: the next frame will come).
        idle(): the job queue has drained.
    """

    answered = Signal(object)
    failed = Signal(int, str, str)
    idle = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._frame: Job | None = None
        self._classifier = None
        self._stopping = False

    # -- called from the GUI thread ---------------------------------------------------------

    def set_classifier(self, classifier) -> None:
        """Use ``classifier`` from the next image on; queued jobs wait until there is one."""
        with self._cond:
            self._classifier = classifier
            self._cond.notify()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def offer_frame(self, frame: np.ndarray, isolate: bool = False) -> None:
        """A live BGR frame; replaces any frame still waiting (latest frame wins)."""
        with self._cond:
            self._frame = Job("Camera", frame, isolate=isolate, channels="BGR", live=True)
            self._cond.notify()

    def drop_frame(self) -> None:
        """Forget a waiting live frame (the preview was frozen or stopped)."""
        with self._cond:
            self._frame = None

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    def stop(self) -> None:
        """Finish the image in hand, drop the rest, and end the thread."""
        with self._cond:
            self._stopping = True
            self._jobs.clear()
            self._frame = None
            self._cond.notify()

    # -- the worker thread ------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self._classifier is None or (not self._jobs and self._frame is None)
                ):
                    self._cond.wait()
                if self._stopping:
                    return
                classifier = self._classifier
                if self._jobs:
                    job = self._jobs.popleft()
                else:
                    job, self._frame = self._frame, None
            self._answer(classifier, job)
            if not job.live and self.pending() == 0:
                self.idle.emit()

    def _answer(self, classifier, job: Job) -> None:
        try:
            result = classify(classifier, job)
        except ImageLoadError as exc:
            if not job.live:
                self.failed.emit(job.id, job.source, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad image must not end the worker
            traceback.print_exception(exc, file=sys.stderr)
            if not job.live:
                self.failed.emit(
                    job.id, job.source, f"unexpected error ({type(exc).__name__}: {exc})"
                )
        else:
            self.answered.emit(result)


def classify(classifier, job: Job) -> Result:
    """Load, optionally isolate, classify and prepare the pictures for one job (any thread).

    Raises:
        ImageLoadError: the input is not a usable image.
    """
    data = job.data
    if isinstance(data, QImage):
        data = qimage_to_array(data)
    if isinstance(data, (str, Path)):
        # The model gets the file as the CLI and training read it: a JPEG decoded at the reduced
        # scale that still covers its input. That is blurry on screen, so decode again for showing.
        image = shown = load_image(data, draft=classifier.checkpoint.preprocessing.resize)
        if max(image.size) < SHARP_SIDE:
            shown = load_image(data, draft=SHARP_SIDE * 3 // 4)
    else:
        image = shown = load_image(data, channels=job.channels)
    box = mask = None
    extra_seconds = 0.0
    if job.isolate:
        from garbage_sorter.segmentation import get_isolator

        isolation = get_isolator("auto").isolate(image)
        box, mask, extra_seconds = isolation.box, isolation.mask, isolation.seconds
    prediction = classifier.predict(image.crop(box) if box else image, crop=False)
    if job.isolate:
        prediction = dataclasses.replace(
            prediction, crop_box=box, seconds=prediction.seconds + extra_seconds
        )
    display = pil_to_qimage(shown, DISPLAY_MAX_SIDE)
    return Result(
        job_id=job.id,
        source=job.source,
        prediction=prediction,
        image=image,
        display=display,
        thumbnail=None if job.live else thumbnail_qimage(image),
        mask=mask_overlay(mask, (display.width(), display.height())) if mask is not None else None,
        live=job.live,
    )


def load_classifier(path: str | None, device: str, region: str | None):
    """``Classifier.load`` for a worker thread (loading a model there keeps the window quick).

    The bundled model runs in ONNX Runtime and torch is never imported. A PyTorch model: the app
    classifies one image at a time, so it gives torch half the cores (unless ``OMP_NUM_THREADS``
    says otherwise) and leaves the rest to the window, the camera and object isolation. On a busy
    two-core machine this is also much faster: two intra-op threads that wait on each other in
    spin barriers took 20 s per image where one thread took 1 s.
    """
    from garbage_sorter.classifier import Classifier

    classifier = Classifier.load(path, device=device, region=region)
    if classifier.engine == "pytorch" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    # torch, Qt and the model are some 200,000 objects that live as long as the app. A full
    # garbage collection walks them all (100-300 ms with the GIL held: the window freezes); frozen,
    # they are left out of every later collection.
    gc.freeze()
    return classifier


def explain(classifier, result: Result) -> tuple[int, QImage]:
    """Grad-CAM over what the model saw for ``result``, as (job id, picture)."""
    from garbage_sorter.explain import gradcam

    overlay = gradcam(classifier, result.model_input).overlay()
    return result.job_id, pil_to_qimage(overlay)


def expand_paths(paths: list[str]) -> list[Path]:
    """Dropped or opened files and folders -> the image files in them (folders walked)."""
    from garbage_sorter.images import iter_image_paths

    return list(iter_image_paths(paths))
