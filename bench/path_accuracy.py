"""Do the fast paths keep the accuracy? The same weights through each inference path, scored on
the held-out split.

    python bench/path_accuracy.py [--model PATH] [--split docs/model/split/test.txt]

Paths, on the same checkpoint (default: the bundled model) and the same photos:

- naive: ``PIL.Image.open``, torchvision ``Resize/CenterCrop/ToTensor/Normalize``, eager fp32;
- project: ``Classifier`` on the checkpoint in PyTorch (JPEG draft decoding, numpy preprocessing);
- onnx fp32 / onnx int8: ``Classifier`` on the checkpoint exported by ``garbage-sorter export
  --onnx [--int8]`` (int8 calibrated on 256 photos of the model's training split).

Prints accuracy per source, the difference to naive in points, and how many photos each path
labels differently from naive.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, command_line, machine_line, naive_pipeline, table


def scores(classifier):
    """path -> class probabilities in the classifier's class order."""
    return lambda path: [classifier.predict(path).probabilities[c] for c in classifier.classes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument(
        "--split", type=Path, default=REPO / "docs" / "model" / "split" / "test.txt"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=REPO / "docs" / "model" / "split" / "train.txt",
        help="photos to calibrate int8 on (a split file's train part, or a folder)",
    )
    args = parser.parse_args()

    from garbage_sorter.classifier import Classifier, bundled_model_path
    from garbage_sorter.evaluation import read_labelled
    from garbage_sorter.onnx_runtime import export_onnx, quantize_int8

    model = args.model or bundled_model_path()
    items = read_labelled(args.split, "test")
    with tempfile.TemporaryDirectory(prefix="gs-paths-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx")
        int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx", args.calibration)
        paths = {
            "naive": naive_pipeline(Path(model)),
            "project": scores(Classifier.load(model, device="cpu", engine="pytorch")),
            "onnx fp32": scores(Classifier.load(fp32)),
            "onnx int8": scores(Classifier.load(int8)),
        }
        predicted = {
            name: np.array([int(np.argmax(fn(photo))) for photo, _, _ in items])
            for name, fn in paths.items()
        }
    classes = Classifier.load(model, device="cpu").classes
    truth = np.array([classes.index(label) for _, label, _ in items])
    sources = np.array([source for _, _, source in items])
    groups = {"all": np.ones(len(items), bool)}
    groups |= {s: sources == s for s in sorted(set(sources))}
    rows = []
    for name, pred in predicted.items():
        accs = {g: float((pred[m] == truth[m]).mean()) for g, m in groups.items()}
        base = float((predicted["naive"] == truth).mean())
        rows.append(
            [
                name,
                *(f"{100 * accs[g]:.1f}" for g in groups),
                f"{100 * (accs['all'] - base):+.1f}",
                str(int((pred != predicted["naive"]).sum())),
            ]
        )
    print(f"Command: {command_line()}\n\nMachine: {machine_line()}\n")
    print(f"Model {Path(model).name}; {len(items)} held-out photos from {args.split.name}\n")
    header = ["path", *(f"{g} %" for g in groups), "vs naive (points)", "labels differing"]
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
