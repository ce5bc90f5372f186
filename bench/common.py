"""What the benchmark scripts share: the models and photos they time, interleaved timing, tables.

Every comparison runs its cases interleaved (round 1: A, B, C; round 2: B, C, A; ...) in one
process, so a background job slows all of them alike, and reports medians. The machine line
printed with each table says how busy the machine was while it ran.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "trashnet"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
ARCH_NAMES = {"resnet18": "ResNet-18", "efficientnet_lite0": "EfficientNet-Lite0"}


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` prints it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """CPU, cores, library versions, date, and the load average when the table was made."""
    import onnxruntime
    import torch

    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    # The benchmark's own threads count in the load average: up to about one per core is its own.
    busy = (
        f"**contended**: load average {load:.1f} on {cores} cores"
        if load > cores + 0.5
        else f"quiet: load average {load:.1f} on {cores} cores, mostly this benchmark"
    )
    return (
        f"{cpu_name()}, {cores} cores; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; {dt.datetime.now():%Y-%m-%d %H:%M}; {busy}"
    )


def command_line() -> str:
    """How this table was made, to paste above it."""
    return "`" + " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]) + "`"


def photo_files(folder: Path, count: int) -> list[Path]:
    """``count`` photos spread evenly over the (sorted) photos under ``folder``."""
    from garbage_sorter.images import iter_image_paths

    files = list(iter_image_paths([folder]))
    if not files:
        raise SystemExit(f"no photos under {folder}")
    step = max(1, len(files) // count)
    return (files[::step] * count)[:count]


def upscaled(files: Sequence[Path], out: Path, size: tuple[int, int] = (2000, 1500)) -> list[Path]:
    """The same photos as large phone-camera JPEGs (where decoding at reduced size pays),
    ``size`` turned to the photo's orientation."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i, path in enumerate(files):
        target = out / f"{i:04d}-{path.name}"
        if not target.exists():
            with Image.open(path) as image:
                turned = (
                    size if (image.width >= image.height) == (size[0] >= size[1]) else size[::-1]
                )
                image.convert("RGB").resize(turned, Image.Resampling.BICUBIC).save(
                    target, quality=90
                )
        made.append(target)
    return made


def make_checkpoint(arch: str, out: Path) -> Path:
    """A checkpoint to time: ResNet-18 as built (speed does not depend on training),
    EfficientNet-Lite0 with its ImageNet backbone (real activations for int8 calibration)."""
    import torch

    from garbage_sorter.model import build_model, save_checkpoint
    from garbage_sorter.presets import default_preprocessing

    path = out / f"{arch}.pt"
    if not path.exists():
        torch.manual_seed(0)
        weights = None if arch == "resnet18" else "imagenet"
        save_checkpoint(
            path,
            build_model(arch, len(CLASSES), weights),
            arch=arch,
            classes=CLASSES,
            preprocessing=default_preprocessing(arch),
        )
    return path


def onnx_files(checkpoint: Path, calibration: Sequence[Path]) -> tuple[Path, Path]:
    """The checkpoint exported to ONNX fp32 and quantised to int8 (beside it)."""
    from garbage_sorter.onnx_runtime import export_onnx, quantize_int8

    fp32, int8 = checkpoint.with_suffix(".onnx"), checkpoint.with_suffix(".int8.onnx")
    if not fp32.exists():
        export_onnx(checkpoint, fp32)
    if not int8.exists():
        quantize_int8(fp32, int8, list(calibration), count=len(calibration))
    return fp32, int8


def set_torch_threads(n: int) -> None:
    """Set PyTorch's intra-op threads and wake the new pool outside any timed region."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        torch.ones(1 << 20).mul(2).sum()


def interleave(
    cases: dict[str, Callable[[int], object]],
    rounds: int,
    warmup: int = 2,
    before: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each case: ``rounds`` timed rounds after ``warmup`` untimed ones.

    Round ``r`` calls every case once with ``r``, starting at a different case each round.
    ``before(name)``, untimed, runs before each call (thread settings). A case that returns a
    float has timed itself (work after an untimed start-up): that float is taken instead.
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if before:
                before(name)
            t0 = time.perf_counter()
            result = cases[name](r)
            elapsed = result if isinstance(result, float) else time.perf_counter() - t0
            if r >= warmup:
                times[name].append(elapsed)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    return float(np.percentile(values, 95))


def rate(value: float) -> str:
    """A throughput for a table: whole numbers when large, three digits when small."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if n else c.ljust(w)
                for c, w, n in zip(row, widths, numeric, strict=True)
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if n else ("-" * (w + 2))
            for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x×%"))
    except ValueError:
        return False
    return True


def naive_model(checkpoint: Path):
    """``(model, transform)`` as a fine-tuning tutorial writes them: the eager fp32 model and
    torchvision ``Resize/CenterCrop/ToTensor/Normalize`` for a PIL image."""
    from torchvision import transforms as T

    from garbage_sorter.model import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    prep = ckpt.preprocessing
    transform = T.Compose(
        [
            T.Resize(prep.resize),
            T.CenterCrop(prep.crop),
            T.ToTensor(),
            T.Normalize(prep.mean, prep.std),
        ]
    )
    return ckpt.build(), transform


def naive_pipeline(checkpoint: Path):
    """PIL + torchvision transforms + eager fp32 model, as a fine-tuning tutorial writes it."""
    import torch
    from PIL import Image

    model, transform = naive_model(checkpoint)

    def predict(path: Path):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            return torch.softmax(model(transform(image).unsqueeze(0)), dim=1)[0].numpy()

    return predict


def speed_parser(description: str):
    """The options the CPU speed benchmarks share (architectures, threads, photos, int8
    calibration, the large-photo case, the work folder)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--archs", nargs="+", default=["resnet18", "efficientnet_lite0"], choices=sorted(ARCH_NAMES)
    )
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of photos (recursive)")
    p.add_argument("--calibration", type=int, default=64, help="photos to calibrate int8 on")
    p.add_argument(
        "--large", default="2000x1500", help="size of the large-photo case; 'none' skips it"
    )
    p.add_argument(
        "--work", type=Path, help="folder for models and photos (default: a temporary one)"
    )
    return p


def photo_sets(args, count: int, work: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The photos a speed benchmark times, by size ("341x256" as found, and ``args.large``
    upscaled copies unless it is "none"), and the other photos, to calibrate int8 on."""
    from PIL import Image

    files = photo_files(args.photos, count + args.calibration)
    timed, calibration = files[::2][:count], files[1::2][: args.calibration]
    sizes = {Image.open(p).size for p in timed}
    sets = {"x".join(map(str, sizes.pop())) if len(sizes) == 1 else "original": timed}
    if args.large != "none":
        w, h = (int(v) for v in args.large.split("x"))
        sets[args.large] = upscaled(timed, work / f"photos-{args.large}", (w, h))
    return sets, calibration


def run_in_work_folder(run, args, prefix: str) -> None:
    """Print ``run(args, folder)``: in ``args.work`` if given (kept), else a temporary folder."""
    import tempfile

    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        print(run(args, args.work))
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            print(run(args, Path(tmp)))
