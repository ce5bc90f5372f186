"""Warm start of the desktop app: process start -> window shown -> model loaded and ready.

Each run is a fresh process that opens the window the way ``garbage-sorter app`` does
(``garbage_sorter.ui.app.create_window``) and stops once the model is in. Baselines from the
same run: a bare interpreter, and one that only imports torch (the biggest fixed cost).

    python bench/app_startup.py                 # bundled model, offscreen, 5 runs
    xvfb-run -a python bench/app_startup.py --platform xcb --model PATH
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys, time
from PySide6.QtCore import QTimer
from garbage_sorter.ui.app import application, create_window
app = application()
window = create_window(sys.argv[1] or None)
def shown():
    print("shown", time.time(), flush=True)
    window.open_paths([sys.argv[2]])  # a photo opened at launch: queued until the model is in
QTimer.singleShot(0, shown)
window.model_loaded.connect(
    lambda classifier: print("loaded", time.time(), classifier.name, classifier.device.type, flush=True))
def predicted(result):
    print("predicted", time.time(), flush=True)
    window.close()
window.result_shown.connect(predicted)
window.model_failed.connect(lambda message: (print("failed", message, flush=True), window.close()))
sys.exit(app.exec())
"""


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, float | str]:
    """Wall seconds to each mark, and the CPU seconds the process used (the same on a busy machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    marks: dict[str, float | str] = {"total": time.time() - start, "cpu": cpu}
    for line in done.stdout.splitlines():
        word, *rest = line.split()
        if word in ("shown", "loaded", "predicted"):
            marks[word] = float(rest[0]) - start
        if word == "loaded":
            marks["model"] = " ".join(rest[1:])
        if word == "failed":
            raise SystemExit(f"the model failed to load: {' '.join(rest)}")
    return marks


def tiny_model(folder: Path) -> Path:
    from garbage_sorter.model import build_model, save_checkpoint
    from garbage_sorter.presets import default_preprocessing

    path = folder / "tiny-lite0.pt"
    classes = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    save_checkpoint(
        path,
        build_model("efficientnet_lite0", len(classes)),
        arch="efficientnet_lite0",
        classes=classes,
        preprocessing=default_preprocessing("efficientnet_lite0"),
        half=True,
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="checkpoint (default: the bundled model, else a tiny Lite0)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--platform", default="offscreen", help="Qt platform: offscreen, xcb, ...")
    args = parser.parse_args()

    from garbage_sorter.classifier import bundled_model_path

    scratch = Path(tempfile.mkdtemp(prefix="gs-startup-"))
    model = args.model or (str(bundled_model_path()) if bundled_model_path().exists() else None)
    if model is None:
        model = str(tiny_model(scratch))
        print("bundled model missing: using an untrained EfficientNet-Lite0 of the same size")
    env = dict(
        os.environ,
        QT_QPA_PLATFORM=args.platform,
        GARBAGE_SORTER_CONFIG_DIR=str(scratch / "config"),
        GARBAGE_SORTER_DATA_DIR=str(scratch / "data"),
    )

    python = sys.executable
    bare = [_timed([python, "-c", "pass"], env) for _ in range(args.runs)]
    torch_only = [_timed([python, "-c", "import torch"], env) for _ in range(args.runs)]
    photo = str(
        Path(__file__).resolve().parent.parent
        / "tests"
        / "fixtures"
        / "photos"
        / "glass"
        / "glass422.jpg"
    )
    runs = [_timed([python, "-c", CHILD, model, photo], env) for _ in range(args.runs + 1)][
        1:
    ]  # 1st: warm-up

    print(
        f"\nwarm start, {args.runs} runs after one warm-up, Qt platform {args.platform}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model {runs[0]['model']}\n"
    )
    print(
        "wall seconds from process start; CPU seconds of the whole process (user + system), which a"
    )
    print("busy machine does not inflate\n")
    print(f"{'':48}{'median':>9}{'min':>9}{'max':>9}{'CPU':>9}")
    rows = [
        ("python -c pass (baseline)", bare, "total"),
        ("python -c 'import torch' (baseline)", torch_only, "total"),
        ("app: window shown", runs, "shown"),
        ("app: model loaded, ready", runs, "loaded"),
        ("app: first prediction (photo opened at launch)", runs, "predicted"),
    ]
    for name, marks, key in rows:
        values = [m[key] for m in marks]
        cpu = (
            ""
            if key in ("shown", "loaded")
            else f"{statistics.median(m['cpu'] for m in marks):8.2f}s"
        )
        print(
            f"{name:48}{statistics.median(values):8.2f}s{min(values):8.2f}s{max(values):8.2f}s{cpu:>9}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
