"""One-off background jobs (load a model, Grad-CAM, save a correction) on Qt's thread pool.

A :class:`Task` runs a plain function in a pool thread and reports through signals, which Qt
delivers in the receiver's thread: connect them to methods of a QObject (a widget), never to a
lambda, so the slot runs on the GUI thread.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal


class Task(QObject):
    """``fn(*args)`` in a pool thread; ``returned(value)`` or ``errored(exception)``, then ``finished``.

    The task is a child of ``parent`` until it finishes, so it outlives the call that started it;
    a window must wait for the pool (``QThreadPool.globalInstance().waitForDone()``) before it goes.
    """

    returned = Signal(object)
    errored = Signal(object)
    finished = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any, parent: QObject | None = None):
        super().__init__(parent)
        self._fn = fn
        self._args = args
        self.finished.connect(self.deleteLater)

    def start(self) -> Task:
        QThreadPool.globalInstance().start(self._run)
        return self

    def _run(self) -> None:
        try:
            value = self._fn(*self._args)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the GUI, not kill the thread
            if not _expected(exc):
                traceback.print_exception(exc, file=sys.stderr)
            self.errored.emit(exc)
        else:
            self.returned.emit(value)
        self.finished.emit()


def _expected(exc: Exception) -> bool:
    """Failures with a message meant for a person need no traceback in the log."""
    from garbage_sorter.images import ImageLoadError

    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (ImageLoadError, OSError)) or bool(
        names & {"CheckpointError", "FeedbackError", "ExplainError"}
    )


def run_task(
    fn: Callable[..., Any],
    *args: Any,
    parent: QObject,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> Task:
    """Start ``fn(*args)`` in the pool; ``on_done``/``on_error`` should be QObject methods."""
    task = Task(fn, *args, parent=parent)
    if on_done is not None:
        task.returned.connect(on_done)
    if on_error is not None:
        task.errored.connect(on_error)
    return task.start()
