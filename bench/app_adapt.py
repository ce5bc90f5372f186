"""Model > Adapt to this camera and Model > Retrain with my corrections, timed in the real app.

The window opens the way ``garbage-sorter app --camera VIDEO`` does (bundled model), with a
video of real photos as the camera (every frame a different photo, so the collection keeps one
view per frame up to its cap). Adapt is timed from the end of the collection (the dialog's
step 2) to the adapted model in use; then ``--per-class`` corrections per class (real photos
not in the video) are saved in the setting's folder, as the Wrong? menu does while adapted, and
Retrain with my corrections is timed from the menu to the new model in use. A timer ticking
every 20 ms in the window measures the longest stall of the event loop meanwhile.

    python bench/app_adapt.py [--photos ../shared/data/realworld/taco] [--frames 150]
        [--per-class 5] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def make_video(photos: list[Path], path: Path) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (640, 480))
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (640, 480)))
    writer.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared/data/realworld/taco")
    parser.add_argument("--frames", type=int, default=150, help="photos in the camera video")
    parser.add_argument("--per-class", type=int, default=5, help="corrections per class")
    parser.add_argument("--seconds", type=float, default=30.0, help="collection time")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-app-adapt-"))
    os.environ["GARBAGE_SORTER_CONFIG_DIR"] = str(scratch / "config")
    os.environ["GARBAGE_SORTER_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    by_class = {c: sorted((args.photos / c).glob("*.jpg")) for c in CLASSES}
    corrections = {c: paths[: args.per_class] for c, paths in by_class.items()}
    rest = [p for c in CLASSES for p in by_class[c][args.per_class :]]
    video = scratch / "camera.avi"
    make_video(rest[: args.frames], video)

    from PIL import Image
    from PySide6.QtCore import QTimer

    from garbage_sorter.feedback import save_correction, setting_corrections_dir
    from garbage_sorter.ui.app import application, create_window

    app = application()
    window = create_window(camera=str(video))

    def wait(condition, what: str, seconds: float = 600) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not get there in {seconds:.0f} s: {what}")
            app.processEvents()
            time.sleep(0.005)

    stalls = {"last": time.monotonic(), "max": 0.0}

    def tick() -> None:
        now = time.monotonic()
        stalls["max"] = max(stalls["max"], now - stalls["last"])
        stalls["last"] = now

    ticker = QTimer(interval=20)
    ticker.timeout.connect(tick)
    wait(lambda: window.classifier is not None and window.camera is not None, "model and camera")
    window.adapt_seconds = args.seconds
    loads = []
    window.model_loaded.connect(loads.append)

    window.adapt_action.trigger()
    dialog = window._adapting
    wait(lambda: dialog.phase == "adapting", "the frames collected", args.seconds + 120)
    kept = len(dialog.worker.frames or ())
    stalls.update(last=time.monotonic(), max=0.0)
    ticker.start()
    start = time.perf_counter()
    cpu = time.process_time()
    wait(lambda: loads, "the adapted model in use")
    adapt_s, adapt_cpu, adapt_stall = (
        time.perf_counter() - start,
        time.process_time() - cpu,
        stalls["max"],
    )
    setting = window._camera_setting()
    for label, paths in corrections.items():
        for path in paths:
            save_correction(Image.open(path), label, setting_corrections_dir(setting))

    loads.clear()
    stalls.update(last=time.monotonic(), max=0.0)
    start = time.perf_counter()
    cpu = time.process_time()
    window.retrain_setting_action.trigger()
    wait(lambda: loads, "the retrained model in use")
    retrain_s, retrain_cpu, retrain_stall = (
        time.perf_counter() - start,
        time.process_time() - cpu,
        stalls["max"],
    )
    record = window.classifier.checkpoint.config["adaptation"]
    ticker.stop()
    window.close()

    import torch

    print(
        f"{kept} frames kept, {record['labelled_photos']} corrections; torch threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    print("step                          wall s   CPU s   longest event-loop stall")
    print(
        f"Adapt (after collecting)      {adapt_s:6.1f}  {adapt_cpu:6.1f}   {adapt_stall * 1000:.0f} ms"
    )
    print(
        f"Retrain with my corrections   {retrain_s:6.1f}  {retrain_cpu:6.1f}   "
        f"{retrain_stall * 1000:.0f} ms"
    )
    print(
        f"chosen: {record.get('alpha')}, blocks {record.get('blocks')}, head {record.get('head')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
