"""How well calibrated is a model per source, and how small an ECE can a split of this size show?

    python bench/calibration.py [--model PATH] [--split docs/model/split]

Runs the model (default: the bundled one) over the split's validation and test photos once, then
fits a temperature on different validation sets (all of it, as training does; the real-world
photos only; each source weighted equally) and prints the test split's accuracy and expected
calibration error (ECE, 15 bins) per source for each. The last table is the noise floor: the ECE
that a perfectly calibrated model with the same confidences would show on a test set of the same
size (500 draws of outcomes from those confidences).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from common import REPO, command_line, machine_line, table


def logits_of(clf, split: Path, subset: str):
    from garbage_sorter.evaluation import read_labelled
    from garbage_sorter.images import load_image

    items = read_labelled(split, subset)
    out = []
    for i in range(0, len(items), 32):
        batch = [
            clf.transform(load_image(p, draft=clf.checkpoint.preprocessing.resize))
            for p, _, _ in items[i : i + 32]
        ]
        out.append(clf.logits(batch))
    targets = np.array([clf.classes.index(label) for _, label, _ in items])
    real = np.array([source != "trashnet" for _, _, source in items])
    return np.concatenate(out), targets, real


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "model" / "split")
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args()

    from garbage_sorter.training.report import (
        expected_calibration_error,
        fit_temperature,
        softmax,
    )

    from garbage_sorter.classifier import Classifier

    clf = Classifier.load(args.model, device="cpu")
    vl, vy, v_real = logits_of(clf, args.split, "val")
    tl, ty, t_real = logits_of(clf, args.split, "test")
    repeat = max(1, round((~v_real).sum() / max(v_real.sum(), 1)))
    fits = {
        "none (T = 1)": 1.0,
        "all validation photos (training's choice)": fit_temperature(vl, vy),
        "real-world validation photos only": fit_temperature(vl[v_real], vy[v_real]),
        "sources weighted equally": fit_temperature(
            np.concatenate([vl[~v_real], *[vl[v_real]] * repeat]),
            np.concatenate([vy[~v_real], *[vy[v_real]] * repeat]),
        ),
    }
    groups = {"TrashNet": ~t_real, "real-world": t_real}
    rows = []
    for name, t in fits.items():
        cells = [name, f"{t:.2f}"]
        for mask in groups.values():
            p = softmax(tl[mask], t)
            cells += [
                f"{(p.argmax(1) == ty[mask]).mean():.3f}",
                f"{expected_calibration_error(p, ty[mask]):.3f}",
            ]
        rows.append(cells)
    header = ["temperature fitted on", "T"]
    for g, mask in groups.items():
        header += [f"{g} acc (n={mask.sum()})", f"{g} ECE"]

    rng = np.random.default_rng(0)
    floor = []
    t = fits["all validation photos (training's choice)"]
    for g, mask in groups.items():
        p = softmax(tl[mask], t)
        top = p.argmax(1)
        eces = []
        for _ in range(args.draws):
            right = rng.random(len(p)) < p.max(1)
            eces.append(expected_calibration_error(p, np.where(right, top, (top + 1) % p.shape[1])))
        floor.append(
            [g, str(mask.sum()), f"{np.median(eces):.3f}", f"{np.quantile(eces, 0.9):.3f}"]
        )

    print(f"Command: {command_line()}\n\nMachine: {machine_line()}\n")
    print(f"Model {clf.name}; bundled calibration T = {clf.temperature:.2f}\n")
    print(table(header, rows))
    print("\nECE a perfectly calibrated model would show on test sets of these sizes:\n")
    print(table(["test photos", "n", "median ECE", "90th percentile"], floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
