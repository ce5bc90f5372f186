"""Camera preview frame rate and live predictions per second, from a video file used as camera.

Opens the real window (offscreen) with a video of real photos as its camera and samples, once
a second, how many frames were shown and how many live predictions came back. Baselines from
the same run: how fast OpenCV decodes the file alone, and how fast the classifier answers
frames alone (no GUI, no camera thread).

    python bench/camera_loop.py                       # bundled model (else a tiny Lite0), 15 s
    python bench/camera_loop.py --isolate --seconds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"


def make_video(path: Path, fps: float, size: tuple[int, int], seconds: float) -> Path:
    """A video that shows each fixture photo for a second, slowly panning so frames differ."""
    photos = sorted(PHOTOS.rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos in {PHOTOS}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    frames = round(fps * seconds)
    for i in range(frames):
        photo = cv2.imread(str(photos[int(i / fps) % len(photos)]))
        big = cv2.resize(photo, (size[0] + 40, size[1] + 30))
        shift = i % 30
        writer.write(big[shift : shift + size[1], shift : shift + size[0]])
    writer.release()
    return path


def decode_rate(path: Path, seconds: float = 3.0) -> float:
    capture = cv2.VideoCapture(str(path))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ok, _ = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        n += 1
    capture.release()
    return n / (time.perf_counter() - start)


def predict_rate(classifier, path: Path, isolate: bool, seconds: float = 5.0) -> float:
    from garbage_sorter.ui.inference import Job, classify

    capture = cv2.VideoCapture(str(path))
    frames = [capture.read()[1] for _ in range(10)]
    capture.release()
    classify(classifier, Job("warm-up", frames[0], isolate=isolate, channels="BGR", live=True))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classify(
            classifier,
            Job("bench", frames[n % len(frames)], isolate=isolate, channels="BGR", live=True),
        )
        n += 1
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="checkpoint (default: the bundled model, else a tiny Lite0)"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to sample the window")
    parser.add_argument("--fps", type=float, default=30.0, help="the video's frame rate")
    parser.add_argument("--size", default="640x480", help="the video's frame size")
    parser.add_argument("--isolate", action="store_true", help="isolate the object in every frame")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="gs-camera-"))
    os.environ["GARBAGE_SORTER_CONFIG_DIR"] = str(scratch / "config")
    os.environ["GARBAGE_SORTER_DATA_DIR"] = str(scratch / "data")
    size = tuple(int(v) for v in args.size.split("x"))
    video = make_video(scratch / "camera.avi", args.fps, size, seconds=10)

    from PySide6.QtCore import QTimer

    from garbage_sorter.classifier import bundled_model_path
    from garbage_sorter.ui.app import application, create_window
    from garbage_sorter.ui.camera import parse_source
    from garbage_sorter.ui.inference import load_classifier

    model = args.model or (str(bundled_model_path()) if bundled_model_path().exists() else None)
    if model is None:
        from app_startup import tiny_model  # same folder

        model = str(tiny_model(scratch))
        print("bundled model missing: using an untrained EfficientNet-Lite0 of the same size")
    classifier = load_classifier(model, "auto", None)  # as the app loads it (threads included)
    baseline_decode = decode_rate(video)
    baseline_predict = predict_rate(classifier, video, args.isolate)

    app = application()
    window = create_window(model)
    window.isolate_action.setChecked(args.isolate)
    samples: list[tuple[int, int]] = []

    def sample() -> None:
        samples.append(window.camera_rates)
        if len(samples) >= args.seconds + 3:
            window.close()
            app.quit()

    def start(_classifier) -> None:
        window.start_camera(parse_source(str(video)))
        sampler = QTimer(window, interval=1000)
        sampler.timeout.connect(sample)
        sampler.start()

    window.model_loaded.connect(start)
    app.exec()
    steady = samples[3:]  # the first seconds include opening the file and warming the model
    fps = [f for f, _ in steady]
    preds = [p for _, p in steady]
    print(
        f"\nvideo {size[0]}x{size[1]} at {args.fps:g} fps as camera; model {Path(model).name} on "
        f"{classifier.device.type}; isolate {'on' if args.isolate else 'off'}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {len(steady)} one-second samples\n"
    )
    print(f"{'':44}{'median':>8}{'min':>8}{'max':>8}")
    print(f"{'OpenCV decoding the file alone (baseline)':44}{baseline_decode:8.1f}")
    print(f"{'classifier on frames alone, per s (baseline)':44}{baseline_predict:8.1f}")
    print(
        f"{'app: preview frames shown per s':44}{statistics.median(fps):8.1f}{min(fps):8d}{max(fps):8d}"
    )
    print(
        f"{'app: live predictions per s':44}{statistics.median(preds):8.1f}{min(preds):8d}{max(preds):8d}"
    )
    return 0 if np.median(fps) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
