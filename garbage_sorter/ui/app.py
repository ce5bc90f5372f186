"""Start the desktop app: ``garbage-sorter app`` calls :func:`run`.

The window is shown first and the model loads behind it (importing torch takes a second or
two), so the app is usable for dropping files at once; they are answered as soon as the model is in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.resources import files

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from .camera import parse_source
from .window import MainWindow

STYLE_SHEET = """
#ResultPanel { background: palette(base); border: 1px solid palette(mid); border-radius: 10px; }
#BinCard { background: palette(window); border: 1px solid palette(midlight); border-radius: 10px; }
#SectionTitle { font-weight: bold; padding: 6px 2px 0 2px; }
QProgressBar { border: 1px solid palette(mid); border-radius: 5px; background: palette(window);
               text-align: center; }
QProgressBar::chunk { background: #43a047; border-radius: 4px; }
QProgressBar[sure="false"]::chunk { background: #f0b429; }
QListWidget { border: 1px solid palette(mid); border-radius: 8px; padding: 4px; }
QListWidget::item { padding: 4px; border-radius: 6px; }
QListWidget::item:selected { background: #c8e6c9; color: black; }
QToolButton { padding: 5px 10px; border: 1px solid palette(mid); border-radius: 6px;
              background: palette(button); }
QToolButton:checked { background: #c8e6c9; }
QToolButton[popupMode="2"] { padding-right: 22px; }
QToolButton::menu-indicator { subcontrol-position: right center; right: 7px; }
"""


def app_icon() -> QIcon:
    """The icon the desktop menu shows too (``resources/icons``, named in the ``.desktop`` entry)."""
    return QIcon(str(files("garbage_sorter.resources") / "icons" / "garbage-sorter.svg"))


def application() -> QApplication:
    """The QApplication, created once and styled (Fusion: the same look on every platform)."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setApplicationName("Garbage Sorter")
    app.setOrganizationName("garbage-sorter")
    app.setDesktopFileName("garbage-sorter")  # the .desktop entry, so docks show its name and icon
    app.setStyle("Fusion")
    palette = app.palette()
    palette.setColor(QPalette.ColorRole.Highlight, QColor("#2e7d32"))
    app.setPalette(palette)
    app.setStyleSheet(STYLE_SHEET)
    app.setWindowIcon(app_icon())
    return app


def create_window(
    model: str | None = None,
    device: str = "auto",
    camera: int | str | None = None,
    region: str | None = None,
    photos: Sequence[str] = (),
) -> MainWindow:
    """A shown window that is loading ``model`` (default: the last one chosen, else the bundled one).

    ``photos`` (files or folders, as given on the command line or by a file manager's "Open
    with") are opened as if dropped on the window: answered once the model is in.
    """
    window = MainWindow(device=device, region=region)
    window.show()
    window.load_model(model or window.saved_model_path(), remember=False)
    if camera is not None:
        window.start_camera(parse_source(camera))
    window.open_paths([str(p) for p in photos])
    return window


def _no_display() -> str | None:
    """Why no window can open here, or None. Qt would abort the process instead of raising."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "no display to open a window on (DISPLAY and WAYLAND_DISPLAY are unset). "
        "Run it on a desktop, or try `garbage-sorter classify` or `garbage-sorter web`."
    )


def run(
    model: str | None = None,
    device: str = "auto",
    camera: int | str | None = None,
    region: str | None = None,
    photos: Sequence[str] = (),
) -> int:
    """Open the window (classifying ``photos``) and run until it is closed; returns the exit status.

    A model that fails to load, a camera that fails, an unknown region or a photo that cannot be
    read do not stop the app: the window opens and says so.
    """
    problem = _no_display()
    if problem:
        print(f"garbage-sorter: {problem}", file=sys.stderr)
        return 1
    app = application()
    window = create_window(model, device, camera, region, photos)  # noqa: F841 - kept alive until exec ends
    return app.exec()
