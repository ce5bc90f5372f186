"""Do several views of a photo make the "sure" answers more often right on a new source?

Issue 17 asks that answers given as sure be right at least 85% of the time on a real-world
source the model never saw, while at least 70% of TrashNet test photos are still answered as
sure. The bundled model's sure answers on TrashNet++ (never seen) are right about 72% of the
time: its mistakes are about new objects, which no style statistic catches
(``bench/familiarity.py``). An answer that changes when the photo is mirrored or cropped is a
classic sign of an unreliable one, so each rule below scores the photo, its mirror and its
central 80% crop, and answers as sure only above a threshold chosen on the validation photos
of the committed split (the lowest confidence at which 95% of the answers above it are right,
as training chooses the model's own). Reported once on the TrashNet test photos, the real-world
test photos of sources it was trained on, and every TrashNet++ crop; then each rule's precision
on TrashNet++ among its most confident answers, whatever the threshold.

    python bench/sure_views.py [--model PATH]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, machine_line, table  # noqa: E402
from familiarity import source_rows, split_rows  # noqa: E402
from garbage_sorter.training.report import precision_threshold, softmax  # noqa: E402

from garbage_sorter.images import load_image  # noqa: E402
from garbage_sorter.model import load_checkpoint  # noqa: E402
from garbage_sorter.presets import EvalTransform  # noqa: E402
from garbage_sorter.storage import file_sha256  # noqa: E402

CACHE = REPO / "runs" / "sure_views"
BATCH = 32
VIEWS = 3  # the photo, its mirror, its central 80%
TARGET_PRECISION = 0.95


def view_logits(checkpoint, rows, key: str) -> np.ndarray:
    """(photos, VIEWS, classes) logits, cached under ``runs/sure_views``."""
    cache = CACHE / f"{key}.npy"
    if cache.is_file():
        return np.load(cache)
    model = checkpoint.build().eval()
    transform = EvalTransform(checkpoint.preprocessing)

    def views(path: Path) -> list[torch.Tensor]:
        pil = load_image(path)
        w, h = pil.size
        x = transform(pil)
        crop = pil.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9)))
        return [x, torch.flip(x, [2]), transform(crop)]

    paths = [p for _, p in rows]
    out = []
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), BATCH):
            batch = [v for vs in pool.map(views, paths[start : start + BATCH]) for v in vs]
            with torch.inference_mode():
                logits = model(torch.stack(batch)).float().numpy()
            out.append(logits.reshape(-1, VIEWS, logits.shape[1]))
            print(f"  {key}: {min(start + BATCH, len(paths))}/{len(paths)}", file=sys.stderr)
    logits = np.concatenate(out)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, logits)
    return logits


def rules(probs: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(answer, confidence) of each rule from (photos, VIEWS, classes) probabilities."""
    first = probs[:, 0]
    answer = first.argmax(1)
    agree = (probs.argmax(2) == answer[:, None]).all(1)
    mean = probs.mean(1)
    return {
        "the photo alone (today)": (answer, first.max(1)),
        "photo + mirror, mean": (probs[:, :2].mean(1).argmax(1), probs[:, :2].mean(1).max(1)),
        "three views, mean": (mean.argmax(1), mean.max(1)),
        "the photo, if all three views agree": (answer, np.where(agree, first.max(1), 0)),
        "least confident view, if all agree": (answer, np.where(agree, probs.max(2).min(1), 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "resources/models/garbage_sorter.pt")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model)
    tag = file_sha256(args.model)[:16]
    temperature = checkpoint.calibration["temperature"]
    sets = {
        "validation (chooses)": split_rows("val.txt"),
        "TrashNet test": split_rows("test-trashnet.txt"),
        "real-world test (trained-on sources)": split_rows("test-realworld.txt"),
        "TrashNet++ (never seen)": source_rows("trashnetpp"),
    }
    scored = {}
    for name, rows in sets.items():
        logits = view_logits(checkpoint, rows, f"{tag}-{name.split(' ')[0]}")
        probs = softmax(logits.reshape(-1, logits.shape[2]), temperature).reshape(logits.shape)
        scored[name] = (np.array([c for c, _ in rows]), rules(probs))

    y_val, val_rules = scored.pop("validation (chooses)")
    header = ["rule", "threshold"] + [f"{n}: sure / right" for n in scored]
    rows = []
    for rule, (answer, confidence) in val_rules.items():
        cut = precision_threshold(confidence, answer == y_val, TARGET_PRECISION)
        cells = [rule, f"{cut:.3f}"]
        for y, by_rule in scored.values():
            a, c = by_rule[rule]
            sure = c >= cut
            cells.append(f"{sure.mean():.0%} / {(a == y)[sure].mean():.3f}")
        rows.append(cells)
    print(command_line(), "\n\n" + machine_line() + "\n")
    print(table(header, rows))

    y, by_rule = scored["TrashNet++ (never seen)"]
    shares = (0.02, 0.05, 0.1, 0.2, 0.3)
    rows = []
    for rule, (answer, confidence) in by_rule.items():
        right = (answer == y)[np.argsort(-confidence, kind="stable")]
        rows.append([rule] + [f"{right[: int(s * len(y))].mean():.3f}" for s in shares])
    print("\nTrashNet++: accuracy of the most confident answers, by share of photos answered\n")
    print(table(["rule"] + [f"top {s:.0%}" for s in shares], rows))


if __name__ == "__main__":
    main()
