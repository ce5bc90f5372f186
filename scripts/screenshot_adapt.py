"""The README's picture of Model > Adapt to this camera: the real app, offscreen, bundled model.

A "bin camera" video (real TACO photos under a strong blue LED cast) is the camera. Three grabs:
the window once the camera's recent frames look unfamiliar to the shipped model (its quiet hint
above the picture, the confidence bar's "but an unfamiliar photo"; the frames' median shift
score is about 1.45 against 0.73 for the same photos without the cast), the window with the
adaptation dialog in progress drawn over it (offscreen, a dialog is its own top-level window,
so it is painted onto the window's picture where it would sit), and the window after adapting.

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_adapt.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from screenshot_app import private_offscreen_app

REPO = Path(__file__).resolve().parent.parent


def bin_camera_video(photos: Path, path: Path, count: int = 60) -> None:
    import cv2
    import numpy as np

    files = sorted(photos.rglob("*.jpg"))[::7][:count]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 6.0, (640, 480))
    for photo in files:
        frame = cv2.resize(cv2.imread(str(photo)), (640, 480)).astype(np.float32)
        frame = frame * np.array([1.45, 0.85, 0.6], np.float32) * 0.8  # BGR: a blue LED, dim
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()


def save_small(picture, path: Path) -> None:
    """Save a grab as a 256-colour PNG, about a quarter of the full-colour file's bytes (the
    README carries three). An octree keeps the widgets' small flat colours exact; median cut,
    tried first, spent its colours on the blue video and drew the green bars teal."""
    from PIL import Image

    picture.save(str(path))
    with Image.open(path) as grab:
        image = grab.convert("RGB")
    image.quantize(256, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        path, optimize=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared/data/realworld/taco")
    parser.add_argument("--out", type=Path, default=Path("/tmp/adapt-shots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = private_offscreen_app("adapt-shot-")
    video = scratch / "bin-camera.avi"
    bin_camera_video(args.photos, video)

    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QColor, QPainter

    from garbage_sorter.ui.app import application, create_window

    app = application()
    window = create_window(camera=str(video), region="de")
    window.resize(1180, 740)

    def wait(condition, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.005)

    wait(lambda: window.classifier is not None and window.camera_rates[1] > 0)

    # The hint comes once 10 answered frames are in and most of them look unfamiliar; grab it
    # with a live answer that says so (the hint itself hides after a while).
    def hinted() -> bool:
        return (
            window.notice.isVisible()
            and "looks unfamiliar" in window.notice.message()
            and window.result_panel.confidence.text().endswith("but an unfamiliar photo")
        )

    wait(hinted, 120)
    if not hinted():
        raise SystemExit("the camera never looked unfamiliar to the model: no hint to show")
    save_small(window.grab(), args.out / "unfamiliar.png")
    window.adapt_seconds = 30
    window.adapt_action.trigger()
    dialog = window._adapting
    wait(lambda: time.monotonic() - dialog._started > 12)
    picture = window.grab()
    shot = dialog.grab()
    painter = QPainter(picture)
    view = window.view.geometry()  # over the camera picture, as a window manager would centre it
    centre = window.view.parentWidget().mapTo(window, view.center())
    corner = QPoint(centre.x() - shot.width() // 2, centre.y() - shot.height() // 2)
    for spread in range(12, 0, -2):  # a soft shadow under the dialog
        painter.fillRect(
            shot.rect().translated(corner).adjusted(-spread, -spread + 4, spread, spread + 4),
            QColor(0, 0, 0, 10),
        )
    painter.drawPixmap(corner, shot)
    painter.setPen(QColor("#9e9e9e"))  # offscreen, a dialog has no frame: draw its edge
    painter.drawRect(shot.rect().translated(corner).adjusted(0, 0, -1, -1))
    painter.end()
    save_small(picture, args.out / "adapt.png")
    wait(lambda: window._adapting is None and not window._loading, 600)
    wait(lambda: False, 3)  # a few live answers with the adapted model
    save_small(window.grab(), args.out / "adapted.png")
    window.close()
    print(*(args.out / name for name in ("unfamiliar.png", "adapt.png", "adapted.png")))


if __name__ == "__main__":
    main()
