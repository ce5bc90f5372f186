"""Folder classification throughput (images per second): decoding in line against in parallel.

    python bench/folder_throughput.py [--archs resnet18 efficientnet_lite0] [--threads 1 2]

Cases, interleaved pass by pass in one process, on the same weights and photos, batches of 16:

- naive: PIL + torchvision transforms + eager fp32 model, one image after another;
- sequential: what ``garbage-sorter classify`` did before it decoded in parallel: decode a
  batch, then run it (``load_image`` + ``Classifier.predict_batch``);
- parallel: ``Classifier.predict_paths``: the next batch is decoded and preprocessed in a
  worker thread while the network runs the current one;

for the PyTorch model and its ONNX fp32 and int8 exports, at each thread count, on TrashNet's
photos and on the same photos as 2000x1500 JPEGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    ARCH_NAMES,
    command_line,
    interleave,
    machine_line,
    make_checkpoint,
    median,
    naive_model,
    onnx_files,
    photo_sets,
    run_in_work_folder,
    set_torch_threads,
    speed_parser,
    table,
)
from common import (
    rate as rate_text,
)

BATCH = 16


def get_args_parser() -> argparse.ArgumentParser:
    p = speed_parser(__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=64, help="photos per pass")
    p.add_argument("--rounds", type=int, default=3, help="timed passes per case")
    return p


def naive(checkpoint: Path):
    """A loop as a tutorial writes it: open, transform, stack, run; no overlap."""
    import torch
    from PIL import Image

    model, transform = naive_model(checkpoint)

    def classify(paths):
        labels = []
        for start in range(0, len(paths), BATCH):
            batch = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[start : start + BATCH]]
            )
            with torch.no_grad():
                labels += torch.softmax(model(batch), 1).argmax(1).tolist()
        return labels

    return classify


def sequential(clf):
    """Decode a batch, then classify it: the ``classify`` loop without parallel decoding."""
    from garbage_sorter.images import load_image

    def classify(paths):
        out = []
        for start in range(0, len(paths), BATCH):
            images = [
                load_image(p, draft=clf.checkpoint.preprocessing.resize)
                for p in paths[start : start + BATCH]
            ]
            out += clf.predict_batch(images, batch_size=BATCH)
        return out

    return classify


def parallel(clf):
    return lambda paths: list(clf.predict_paths(paths, batch_size=BATCH))


def run(args: argparse.Namespace, work: Path) -> str:
    from garbage_sorter.classifier import Classifier
    from garbage_sorter.onnx_runtime import load_onnx_checkpoint

    sets, calibration = photo_sets(args, args.count, work)
    out = [f"Command: {command_line()}", "", f"Machine: {machine_line()}", ""]
    for arch in args.archs:
        ckpt = make_checkpoint(arch, work)
        fp32, int8 = onnx_files(ckpt, calibration)
        cases = {}
        for n in args.threads:
            torch_clf = Classifier.load(ckpt, device="cpu")
            runners = {
                ("naive", "in line"): naive(ckpt),
                ("project", "in line"): sequential(torch_clf),
                ("project", "parallel"): parallel(torch_clf),
            }
            for label, path in (("onnx fp32", fp32), ("onnx int8", int8)):
                clf = Classifier(load_onnx_checkpoint(path, threads=n), "cpu")
                runners[(label, "in line")] = sequential(clf)
                runners[(label, "parallel")] = parallel(clf)
            for size, paths in sets.items():
                for (model, decode), fn in runners.items():
                    cases[(size, model, decode, n)] = lambda r, fn=fn, paths=paths: fn(paths)
        # A case's name ends with its thread count.
        times = interleave(
            cases, args.rounds, warmup=1, before=lambda name: set_torch_threads(name[-1])
        )
        rows = []
        for name in sorted(cases, key=lambda k: (list(sets).index(k[0]), k[3])):
            size, model, decode, n = name
            rate = args.count / median(times[name])
            base = args.count / median(times[(size, "project", "in line", n)])
            rows.append([size, n, model, decode, rate_text(rate), f"{rate / base:.2f}"])
        out += [
            f"**{ARCH_NAMES[arch]}**, classifying {args.count} photos in batches of {BATCH} "
            f"(median of {args.rounds} passes per case, interleaved)",
            "",
            table(
                ["photo", "threads", "model", "decoding", "images/s", "vs project in line"], rows
            ),
            "",
        ]
    return "\n".join(out)


def main(args: argparse.Namespace) -> None:
    run_in_work_folder(run, args, "gs-folder-")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
