"""Where a single-image prediction's time goes: stage by stage, and the network's top operators.

    python bench/latency_profile.py [--arch resnet18] [--threads 2] [--rounds 50]

Stages of the naive pipeline and of the project's, timed separately on the same photos (median
over ``--rounds`` calls): decoding, preprocessing, the network. Then ``torch.profiler`` over the
project's network calls, its most expensive operators by self CPU time, and the same network in
ONNX Runtime fp32 and int8 for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ARCH_NAMES,
    PHOTOS,
    command_line,
    machine_line,
    make_checkpoint,
    naive_model,
    onnx_files,
    photo_files,
    set_torch_threads,
    table,
)


def median_ms(fn, rounds: int) -> float:
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=sorted(ARCH_NAMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from garbage_sorter.classifier import Classifier
    from garbage_sorter.images import load_image
    from garbage_sorter.onnx_runtime import load_onnx_checkpoint

    set_torch_threads(args.threads)
    files = photo_files(PHOTOS, 84)
    photos, calibration = files[::4][:20], files[1::4][:64]
    with tempfile.TemporaryDirectory(prefix="gs-profile-") as tmp:
        ckpt_path = make_checkpoint(args.arch, Path(tmp))
        fp32, int8 = onnx_files(ckpt_path, calibration)
        clf = Classifier.load(ckpt_path, device="cpu")
        onnx32 = Classifier(load_onnx_checkpoint(fp32, threads=args.threads), "cpu")
        onnx8 = Classifier(load_onnx_checkpoint(int8, threads=args.threads), "cpu")
        prep = clf.checkpoint.preprocessing
        eager, naive_tf = naive_model(ckpt_path)
        pick = lambda r: photos[r % len(photos)]  # noqa: E731
        raw = [Image.open(p).convert("RGB") for p in photos]
        ours = [load_image(p, draft=prep.resize) for p in photos]
        x_naive = [naive_tf(im).unsqueeze(0) for im in raw]
        x_ours = [clf.transform(im) for im in ours]
        arrays = [np.ascontiguousarray(t.numpy()[None]) for t in x_ours]

        def naive_forward(r):
            with torch.no_grad():
                eager(x_naive[r % len(photos)])

        rows = [
            [
                "naive",
                "decode (PIL open + convert)",
                f"{median_ms(lambda r: Image.open(pick(r)).convert('RGB'), args.rounds):.1f}",
            ],
            [
                "naive",
                "preprocess (torchvision)",
                f"{median_ms(lambda r: naive_tf(raw[r % len(raw)]), args.rounds):.1f}",
            ],
            [
                "naive",
                "network (eager fp32, no_grad)",
                f"{median_ms(naive_forward, args.rounds):.1f}",
            ],
            [
                "project",
                "decode (load_image, JPEG draft)",
                f"{median_ms(lambda r: load_image(pick(r), draft=prep.resize), args.rounds):.1f}",
            ],
            [
                "project",
                "preprocess (numpy)",
                f"{median_ms(lambda r: clf.transform(ours[r % len(ours)]), args.rounds):.1f}",
            ],
            [
                "project",
                "network (PyTorch, channels_last)",
                f"{median_ms(lambda r: clf.probabilities([x_ours[r % len(photos)]]), args.rounds):.1f}",
            ],
            [
                "project",
                "network (ONNX Runtime fp32)",
                f"{median_ms(lambda r: onnx32.checkpoint.session.run(['logits'], {'input': arrays[r % len(photos)]}), args.rounds):.1f}",
            ],
            [
                "project",
                "network (ONNX Runtime int8)",
                f"{median_ms(lambda r: onnx8.checkpoint.session.run(['logits'], {'input': arrays[r % len(photos)]}), args.rounds):.1f}",
            ],
        ]
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for r in range(args.rounds):
                clf.probabilities([x_ours[r % len(photos)]])
        ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)

    print(f"Command: {command_line()}\n\nMachine: {machine_line()}\n")
    print(
        f"**{ARCH_NAMES[args.arch]}**, {args.threads} threads, one TrashNet photo per call "
        f"({Image.open(photos[0]).size[0]}x{Image.open(photos[0]).size[1]}), median of "
        f"{args.rounds} calls per stage\n"
    )
    print(table(["pipeline", "stage", "median ms"], rows))
    print(f"\ntorch.profiler, the project's network, {args.rounds} calls:\n\n```\n{ops}```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
