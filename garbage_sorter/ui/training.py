"""Retraining in the background, through the same ``training.train.main`` the CLI calls.

The run itself happens in a child process, watched by a worker thread. A thread alone is not
enough to keep the window responsive: the training code holds Python's GIL for long stretches
(importing scikit-learn and matplotlib for the reports froze the window for over a second), and
its DataLoader would fork a process that holds Qt's threads. The child is a fresh interpreter
(spawned, never forked); it reports each ``Progress`` through a queue and stops cooperatively
when Cancel sets an event. Nothing is replaced on disk or in the app until
the user chooses "Use this model".
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any

from PySide6.QtCore import QThread, Signal

# How long a child may take to notice Cancel when the app is closing before it is stopped hard.
# Stopping it hard is safe: every checkpoint is written atomically.
CLOSE_GRACE_SECONDS = 10.0


class TrainWorker(QThread):
    """Runs one training in a child process.

    Signals:
        progress(Progress): every report from the training loop.
        succeeded(RunResult): the run finished; ``result.best`` is the new checkpoint.
        cancelled(): stopped at the user's request; the old model is untouched.
        failed(str): stopped by an error, with a message for the user.
    """

    progress = Signal(object)
    succeeded = Signal(object)
    cancelled = Signal()
    failed = Signal(str)

    def __init__(self, config, parent=None):
        super().__init__(parent)
        self.config = config
        self._stop = threading.Event()
        self._closing = threading.Event()

    def cancel(self) -> None:
        """Ask the run to stop at its next check (within one batch)."""
        self._stop.set()

    def close(self) -> None:
        """Cancel, and stop the child hard if it has not ended within ``CLOSE_GRACE_SECONDS``."""
        self._closing.set()
        self._stop.set()

    def is_cancelling(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        stop = context.Event()
        # Not a daemon: DataLoader workers are children of the child. If the app dies instead of
        # closing, the child notices its parent is gone and stops by itself.
        child = context.Process(
            target=train_in_child,
            args=(self.config, events, stop, os.getpid()),
            name="garbage-sorter-train",
        )
        if self._stop.is_set():
            self.cancelled.emit()
            return
        child.start()
        closing_since = None
        try:
            while True:
                if self._stop.is_set():
                    stop.set()
                if self._closing.is_set():
                    closing_since = closing_since or time.monotonic()
                    if time.monotonic() - closing_since > CLOSE_GRACE_SECONDS:
                        child.terminate()
                try:
                    kind, payload = events.get(timeout=0.1)
                except queue.Empty:
                    if not child.is_alive():
                        self.failed.emit(
                            f"Training stopped unexpectedly (exit code {child.exitcode})."
                        )
                        return
                    continue
                if kind == "progress":
                    self.progress.emit(payload)
                    continue
                if kind == "done":
                    self.succeeded.emit(payload)
                elif kind == "cancelled":
                    self.cancelled.emit()
                else:
                    self.failed.emit(payload)
                return
        finally:
            child.join(timeout=CLOSE_GRACE_SECONDS)
            if child.is_alive():
                child.terminate()
                child.join()
            events.close()


def train_in_child(config, events: Any, stop: Any, parent: int) -> None:
    """The child process: run the training, sending ("progress"|"done"|"cancelled"|"failed", data)."""
    from garbage_sorter.training.train import Cancelled, main

    # PyTorch's default threads (one per core). Keeping a core back for the window made a head
    # retrain of TrashNet 35% slower (130 s against 96 s on 2 cores) while the window, whose
    # thread needs little, stalled no more than 35 ms either way (bench/app_retrain.py). The
    # child runs at a lower priority, so the window and live classification come first.
    with contextlib.suppress(OSError):
        os.nice(5)

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != parent

    try:
        if should_stop():  # cancelled while this process was starting
            raise Cancelled()
        result = main(
            config, on_progress=lambda p: events.put(("progress", p)), should_stop=should_stop
        )
    except Cancelled:
        events.put(("cancelled", None))
    except BaseException as exc:  # noqa: BLE001 - everything becomes a message for the window
        traceback.print_exception(exc, file=sys.stderr)
        events.put(("failed", describe(exc)))
    else:
        events.put(("done", result))
    events.close()
    events.join_thread()  # deliver everything before the process ends


def describe(exc: BaseException) -> str:
    """A failed run in words for the user."""
    if isinstance(exc, MemoryError):
        return "Training ran out of memory. Try head mode, or fewer photos."
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"Training stopped: {exc.strerror}{where}."
    return f"Training stopped: {exc}"
