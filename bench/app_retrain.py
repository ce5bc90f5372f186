"""Retrain from the desktop app's menu, head mode, timed from "Start" to the evaluation summary.

The window opens the way ``garbage-sorter app`` does, Model > Retrain opens the dialog, the data
is set to one folder (default: all of TrashNet) and the run is started as a user would. The
feature cache starts empty (a first retrain), then a second run of the same dialog reuses it
(a retrain after a few corrections). A timer ticking every 20 ms in the window measures the
longest stall of the event loop meanwhile. Baseline from the same run: the same training from
the command line (``garbage-sorter train --mode head``) in a fresh process and cache.

    python bench/app_retrain.py [--data ../shared/data/trashnet] [--skip-cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cli_baseline(data: Path, scratch: Path) -> float:
    env = dict(os.environ, GARBAGE_SORTER_CACHE_DIR=str(scratch / "cli-cache"))
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "garbage_sorter",
            "train",
            "--data",
            str(data),
            "--mode",
            "head",
            "--out",
            str(scratch / "cli-run"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"the command-line baseline failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def wait_until(done) -> None:
    """Run the event loop until ``done()`` is true, checking every 50 ms."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop, timer = QEventLoop(), QTimer(interval=50)
    timer.timeout.connect(lambda: done() and loop.quit())
    timer.start()
    loop.exec()
    timer.stop()


def one_run(window, data: Path) -> dict[str, float | str]:
    """Model > Retrain, one folder, head mode, Start; until the summary is on screen."""
    from PySide6.QtCore import QTimer

    window.retrain_action.trigger()
    dialog = window._retrain
    dialog.head_mode.setChecked(True)
    dialog.use_corrections.setChecked(False)
    dialog.folders.clear()
    dialog.folders.addItem(str(data))
    ticks, stages = [], set()
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    outcome: dict[str, float | str] = {}
    start = time.perf_counter()
    timer.start()
    dialog.start()
    dialog.worker.progress.connect(lambda p: stages.add(p.stage))
    # The dialog's own state says when it is over: the worker gone, the summary written.
    wait_until(lambda: dialog.worker is None)
    outcome["seconds"] = time.perf_counter() - start
    timer.stop()
    if dialog.result is None:
        outcome["error"] = f"{dialog.stage.text()} {dialog.summary.text()}"
    else:
        outcome["acc"] = dialog.result.metrics["test"]["acc"]
    gaps = np.diff(ticks)
    outcome["max_gap_ms"] = 1000 * float(gaps.max()) if len(gaps) else float("nan")
    outcome["progress"] = "done" in stages and len(stages - {"log"}) > 1
    dialog.close()
    return outcome


def app_runs(data: Path, scratch: Path, runs: int) -> list[dict[str, float | str]]:
    os.environ["GARBAGE_SORTER_CACHE_DIR"] = str(scratch / "app-cache")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from garbage_sorter.ui.app import application, create_window

    app = application()  # noqa: F841 - kept alive while the window runs
    window = create_window(None)
    wait_until(lambda: window.classifier is not None)  # the model loads in a worker
    results = []
    for run in range(runs):
        outcome = one_run(window, data)
        outcome["run"] = "first (empty feature cache)" if run == 0 else "again (cache warm)"
        results.append(outcome)
    window.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "trashnet")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip-cli", action="store_true", help="no command-line baseline")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gs-retrain-"))
    os.environ["GARBAGE_SORTER_CONFIG_DIR"] = str(scratch / "config")
    os.environ["GARBAGE_SORTER_DATA_DIR"] = str(scratch / "data")
    load = os.getloadavg()[0]
    baseline = None if args.skip_cli else cli_baseline(args.data, scratch)
    results = app_runs(args.data, scratch, args.runs)

    print(
        f"\nhead-mode retrain of {args.data} ({sum(1 for _ in args.data.rglob('*.jpg'))} photos), "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end\n"
    )
    print(f"{'':44}{'seconds':>9}{'max stall':>11}  progress  result")
    if baseline is not None:
        print(
            f"{'garbage-sorter train --mode head (baseline)':44}{baseline:8.1f}s{'':>11}  {'':8}  "
            "(fresh cache)"
        )
    for r in results:
        if "error" in r:
            print(f"{'app, ' + str(r['run']):44}  failed: {r['error']}")
            continue
        print(
            f"{'app, ' + str(r['run']):44}{r['seconds']:8.1f}s{r['max_gap_ms']:9.0f}ms  "
            f"{'yes' if r['progress'] else 'NO':8}  test accuracy {r['acc']:.3f}"
        )
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
