"""The README's picture of the desktop app: the real window, offscreen, bundled model, defaults.

Four photos are opened as a file manager's "Open with" passes them (the last one answered is
shown), with the region set to Germany; isolation stays at its default (off), so no crop box.

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_app.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared/data"
PHOTOS = (
    DATA / "trashnet/metal/metal10.jpg",
    DATA / "trashnet/cardboard/cardboard37.jpg",
    DATA / "trashnet/plastic/plastic41.jpg",
    DATA / "realworld/floor-photos/glass/kteppris_IMG_5533.jpg",
)


def private_offscreen_app(prefix: str) -> Path:
    """A scratch folder holding the app's settings and data for this run (the user's stay
    untouched), and the offscreen Qt platform unless another is set. Returns the folder."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["GARBAGE_SORTER_CONFIG_DIR"] = str(scratch / "config")
    os.environ["GARBAGE_SORTER_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/app-shots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    private_offscreen_app("app-shot-")

    from garbage_sorter.ui.app import application, create_window

    app = application()
    window = create_window(region="de", photos=[str(p) for p in PHOTOS])
    window.resize(1180, 740)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and window.history.count() < len(PHOTOS):
        app.processEvents()
        time.sleep(0.005)
    for _ in range(200):  # let the last answer paint
        app.processEvents()
        time.sleep(0.005)
    window.grab().save(str(args.out / "app.png"))
    window.close()
    print(args.out / "app.png")


if __name__ == "__main__":
    main()
