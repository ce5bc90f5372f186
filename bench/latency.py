"""Single-image latency, file on disk to class probabilities: a naive script against the project.

    python bench/latency.py [--archs resnet18 efficientnet_lite0] [--threads 1 2] [--rounds 100]

Cases, interleaved photo by photo in one process, on the same weights:

- naive: what a typical fine-tuning script does: ``PIL.Image.open``, torchvision
  ``Resize/CenterCrop/ToTensor/Normalize``, the eager fp32 model under ``no_grad``;
- project: ``Classifier.predict(path)`` (JPEG draft decoding, numpy preprocessing,
  channels_last fp32 under ``inference_mode``);
- onnx fp32 / onnx int8: the same ``Classifier`` on the files ``garbage-sorter export --onnx
  [--int8]`` writes, run by ONNX Runtime.

Each runs on TrashNet's 341x256 photos and on the same photos as 2000x1500 JPEGs, at each
thread count (PyTorch intra-op threads; ONNX Runtime intra-op threads). Prints one Markdown table
per architecture with the median, the 95th percentile, and the median as a fraction of naive's.
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
    naive_pipeline,
    onnx_files,
    p95,
    photo_sets,
    run_in_work_folder,
    set_torch_threads,
    speed_parser,
    table,
)

BACKENDS = ("naive", "project", "onnx fp32", "onnx int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = speed_parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="timed calls per case")
    p.add_argument(
        "--distinct", type=int, default=20, help="different photos the calls cycle through"
    )
    return p


def run(args: argparse.Namespace, work: Path) -> str:
    from garbage_sorter.classifier import Classifier
    from garbage_sorter.onnx_runtime import load_onnx_checkpoint

    sets, calibration = photo_sets(args, args.distinct, work)
    out = [f"Command: {command_line()}", "", f"Machine: {machine_line()}", ""]
    for arch in args.archs:
        ckpt = make_checkpoint(arch, work)
        fp32, int8 = onnx_files(ckpt, calibration)
        cases = {}
        for n in args.threads:
            runners = {
                "naive": naive_pipeline(ckpt),
                "project": Classifier.load(ckpt, device="cpu").predict,
                "onnx fp32": Classifier(load_onnx_checkpoint(fp32, threads=n), "cpu").predict,
                "onnx int8": Classifier(load_onnx_checkpoint(int8, threads=n), "cpu").predict,
            }
            for size, paths in sets.items():
                for backend, fn in runners.items():
                    name = (backend, size, n)
                    cases[name] = lambda r, fn=fn, paths=paths: fn(paths[r % len(paths)])
        # A case's name ends with its thread count.
        times = interleave(cases, args.rounds, before=lambda name: set_torch_threads(name[-1]))
        rows = []
        for size in sets:
            for n in args.threads:
                base = median(times[("naive", size, n)])
                for backend in BACKENDS:
                    t = times[(backend, size, n)]
                    rows.append(
                        [
                            size,
                            n,
                            backend,
                            f"{median(t) * 1e3:.1f}",
                            f"{p95(t) * 1e3:.1f}",
                            f"{median(t) / base:.2f}",
                        ]
                    )
        out += [
            f"**{ARCH_NAMES[arch]}**, single image, file to probabilities "
            f"({args.rounds} calls per case over {args.distinct} photos, interleaved)",
            "",
            table(["photo", "threads", "pipeline", "median ms", "p95 ms", "vs naive"], rows),
            "",
        ]
    return "\n".join(out)


def main(args: argparse.Namespace) -> None:
    run_in_work_folder(run, args, "gs-latency-")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
