"""The Qt binding the app runs on: PySide6 6.12.0 lost a reference to ``True`` on every
``Signal.emit()``, and Python aborts once the count reaches zero (the app died after about nine
seconds of live camera answers). pyproject.toml excludes that release; this checks the one
installed does not leak."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QObject, Signal  # noqa: E402


class _Emitter(QObject):
    answered = Signal(object)


def test_signal_emit_keeps_reference_counts():
    emitter = _Emitter()
    received: list[int] = []
    emitter.answered.connect(received.append)
    before = sys.getrefcount(True), sys.getrefcount(False)
    for i in range(200):  # well short of the thousands that would abort the interpreter
        emitter.answered.emit(i)
    after = sys.getrefcount(True), sys.getrefcount(False)
    assert len(received) == 200
    assert after == before
