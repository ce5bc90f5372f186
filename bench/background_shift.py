"""Background-shift benchmark (issue 5): does a model read the object or the table under it?

TrashNet shows every item on the same white board, so a model trained on it can learn the board
as part of every class; the original project's failure was a metal can on a brown wooden table
called "cardboard". This benchmark takes the held-out TrashNet test photos, cuts each object off
its board (``training.backgrounds.white_background_mask``) and pastes it, at fixed seeds, onto
two surfaces of the held-out background family, which training never uses:

* ``wood``: a brown wooden table (``heldout_wood``), the failure case;
* ``mixed``: one draw from the whole held-out family (``make_background(split="heldout")``:
  marble, checker tiles, painted colours, and in 40% of draws the same held-out wood).

and, as a control, onto ``board``: a flat surface of the photo's own board colour. Everything
but the surface changes as on the other two (the cut-out, scale, position, shadow, light), so
the drop from clean to board is what cutting and pasting costs by itself, and only the drop
from board to wood or mixed is the background's.

Frame-filling close-ups (mostly cardboard and paper), whose mask falls back to the whole photo,
have no board to replace: they count in the clean set only, and the output says how many.

For each model and isolation at inference (off; the U2-Net-P crop as ``classify --crop`` makes
it; or "whole+crop", the mean of the probabilities for the whole image and the crop, at each
``--isolation-size``) one Markdown table gives accuracy on the clean photos, on the same photos
before shifting, on the board control, on the shifted ones (wood, mixed, both), and how often
metal on wood is called cardboard. Every image is isolated once per size and its crop reused
for all models; the median isolation time is measured in the same run.

    python bench/background_shift.py --model plain=runs/recipes/tn_linear-probe/best.pt \\
        --model bgaug=runs/recipes/tnrw_LP-FT_backgrounds_strong-aug/best.pt \\
        [--split runs/recipes/split-all/test.txt] [--seed 0] [--limit N] \\
        [--isolation-size 320 --isolation-size 256]

The shifted images are cached under ``runs/background_shift/seed<seed>-<generator hash>/``
(the hash of ``training/backgrounds.py``, so a changed generator never reuses stale images),
with ``contact_sheet.png`` showing 16 of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from garbage_sorter.segmentation import DEFAULT_SIZE  # U2-Net-P's size as the app and CLI run it

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPLIT = REPO / "runs" / "recipes" / "split-all" / "test.txt"
CACHE = REPO / "runs" / "background_shift"
SHIFTED = ("wood", "mixed")  # the held-out surfaces: "shifted" in the table
SURFACES = (*SHIFTED, "board")
JPEG_QUALITY = 95  # TrashNet's photos are JPEGs; a high quality keeps re-encoding out of the result


@dataclass(frozen=True)
class Sample:
    """One image the models are scored on."""

    path: Path  # the image file (the original photo, or its shifted copy in the cache)
    label: str
    surface: str  # "clean", or one of SURFACES
    photo: Path  # the original TrashNet photo it comes from


@dataclass
class Report:
    """Everything the table is made of."""

    samples: list[Sample]
    closeups: int  # clean photos left out of the shifted set (their mask fell back)
    predictions: dict[tuple[str, str], list[str]]  # (model, isolation) -> label per sample
    # U2-Net-P input size -> wall time per sample
    isolation_seconds: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    # ... and its CPU time (all threads): unlike wall time, barely moved by other jobs' load
    isolation_cpu_seconds: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    # size -> whether U2-Net-P cropped each sample
    cropped: dict[int, list[bool]] = field(default_factory=lambda: defaultdict(list))


def trashnet_photos(split: Path, limit: int | None = None) -> list[tuple[Path, str]]:
    """(photo, label) of the TrashNet lines of a split file, in file order.

    ``limit`` keeps that many, taken from the classes in turn, so a short run still sees metal.
    """
    from garbage_sorter.evaluation import read_labelled

    photos = [(p, label) for p, label, source in read_labelled(split) if source == "trashnet"]
    if not photos:
        raise SystemExit(f"{split}: no TrashNet photos")
    if limit is None or limit >= len(photos):
        return photos
    by_class: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for item in photos:
        by_class[item[1]].append(item)
    queues = [iter(by_class[label]) for label in sorted(by_class)]
    picked: list[tuple[Path, str]] = []
    while len(picked) < limit:
        for queue in queues:
            item = next(queue, None)
            if item is not None and len(picked) < limit:
                picked.append(item)
    return picked


def cache_folder(root: Path, seed: int) -> Path:
    """Where the shifted images of ``seed`` live, keyed by the generator's source as well."""
    from garbage_sorter.training import backgrounds

    digest = hashlib.sha256(Path(backgrounds.__file__).read_bytes()).hexdigest()[:8]
    return root / f"seed{seed}-{digest}"


def shifted_samples(
    photos: list[tuple[Path, str]], seed: int, cache: Path = CACHE
) -> tuple[list[Sample], int]:
    """The shifted copies of ``photos`` (made on first use, then read from the cache) and the
    number of close-ups left out.

    Each photo's copies depend only on ``seed`` and its file name, so a ``--limit`` run makes
    the same images as the full run and shares its cache.
    """
    folder = cache_folder(cache, seed)
    manifest_path = folder / "manifest.json"
    # photo key -> {surface: file relative to the folder}; {} for a close-up
    manifest: dict[str, dict[str, str]] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
    # A photo is (re)made when it is new or lacks a surface (a cache from before "board");
    # every surface has its own seed, so remaking one leaves the others' images as they were.
    missing = [
        (p, label)
        for p, label in photos
        if (files := manifest.get(_key(p, label))) is None
        or (files and not set(SURFACES) <= set(files))
    ]
    for photo, label in missing:
        manifest[_key(photo, label)] = _shift(photo, label, seed, folder)
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
        tmp.replace(manifest_path)
    samples, closeups = [], 0
    for surface in SURFACES:  # grouped by surface, so a batch holds one kind of image
        for photo, label in photos:
            files = manifest[_key(photo, label)]
            if files:
                samples.append(Sample(folder / files[surface], label, surface, photo))
            elif surface == SURFACES[0]:
                closeups += 1
    return samples, closeups


def _key(photo: Path, label: str) -> str:
    return f"{label}/{photo.name}"


def _shift(photo: Path, label: str, seed: int, folder: Path) -> dict[str, str]:
    """Cut ``photo``'s object out and save it on each held-out surface; {} for a close-up."""
    from garbage_sorter.training.backgrounds import (
        composite,
        heldout_wood,
        make_background,
        white_background_mask,
    )
    from PIL import Image

    from garbage_sorter.images import load_image

    rgb = np.asarray(load_image(photo))
    alpha = white_background_mask(rgb)
    if alpha.min() >= 1.0:  # "keep the whole photo": a close-up with no board to replace
        return {}
    h, w = rgb.shape[:2]
    files = {}
    for index, surface in enumerate(SURFACES):
        # Seeded by the photo's name, not its position, so subsets make the same images.
        rng = np.random.default_rng([seed, zlib.crc32(_key(photo, label).encode()), index])
        if surface == "wood":
            background = heldout_wood((w, h), rng)
        elif surface == "board":
            board = np.median(rgb[alpha < 0.1], axis=0).astype(np.uint8)
            background = np.broadcast_to(board, rgb.shape).copy()
        else:
            background = make_background((w, h), rng, split="heldout")
        relative = f"{surface}/{label}/{photo.stem}.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(composite(rgb, alpha, background, rng))
        image.save(folder / relative, quality=JPEG_QUALITY)
        files[surface] = relative
    return files


def contact_sheet(samples: list[Sample], target: Path, count: int = 16) -> None:
    """A 4-column grid of ``count`` shifted images spread over the set, captioned."""
    import cv2
    from PIL import Image

    shifted = [s for s in samples if s.surface in SHIFTED]
    if not shifted:
        return
    picks = [
        shifted[i] for i in np.linspace(0, len(shifted) - 1, min(count, len(shifted))).astype(int)
    ]
    cols, cell_h = 4, 256
    with Image.open(picks[0].path) as first:  # cells take the photos' shape (TrashNet: 3:4)
        cell_w = round(cell_h * first.width / first.height)
    rows = -(-len(picks) // cols)
    sheet = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    for i, sample in enumerate(picks):
        with Image.open(sample.path) as image:
            image = image.convert("RGB")
            image.thumbnail((cell_w, cell_h))
            thumb = np.array(image)
        y, x = (i // cols) * cell_h, (i % cols) * cell_w
        sheet[y : y + thumb.shape[0], x : x + thumb.shape[1]] = thumb
        sheet[y + cell_h - 20 : y + cell_h, x : x + cell_w] = 0
        caption = f"{sample.label} / {sample.surface}"
        cv2.putText(
            sheet,
            caption,
            (x + 6, y + cell_h - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    Image.fromarray(sheet).save(target)


def run_benchmark(
    models: dict[str, Path],
    photos: list[tuple[Path, str]],
    *,
    seed: int = 0,
    cache: Path = CACHE,
    batch_size: int = 32,
    sizes: tuple[int, ...] = (DEFAULT_SIZE,),
) -> Report:
    """Classify the clean and shifted images with every model: the whole image, the U2-Net-P
    crop at each of ``sizes``, and the mean of the two ("whole+crop")."""
    from garbage_sorter import Classifier
    from garbage_sorter.images import load_image
    from garbage_sorter.segmentation import U2NetPIsolator, apply_box

    shifted, closeups = shifted_samples(photos, seed, cache)
    contact_sheet(shifted, cache_folder(cache, seed) / "contact_sheet.png")
    samples = [Sample(p, label, "clean", p) for p, label in photos] + shifted
    classifiers = {name: Classifier.load(path, device="cpu") for name, path in models.items()}
    isolators = {size: U2NetPIsolator(size=size) for size in sizes}
    report = Report(samples, closeups, {(m, i): [] for m in models for i in modes(sizes)})
    for start in range(0, len(samples), batch_size):
        images = [load_image(s.path) for s in samples[start : start + batch_size]]
        # Isolate once per size; every model then classifies the same crops.
        crops = {}
        for size, isolator in isolators.items():
            isolations = []
            for image in images:
                cpu = time.process_time()
                isolations.append(isolator.isolate(image))
                report.isolation_cpu_seconds[size].append(time.process_time() - cpu)
            report.isolation_seconds[size] += [iso.seconds for iso in isolations]
            report.cropped[size] += [iso.box is not None for iso in isolations]
            crops[size] = [
                apply_box(image, iso.box) for image, iso in zip(images, isolations, strict=True)
            ]
        for name, clf in classifiers.items():
            whole = clf.predict_batch(images, crop=False, batch_size=batch_size)
            report.predictions[name, "off"] += [p.label for p in whole]
            for size, batch in crops.items():
                cropped = clf.predict_batch(batch, crop=False, batch_size=batch_size)
                report.predictions[name, f"u2netp {size}"] += [p.label for p in cropped]
                report.predictions[name, f"whole+crop {size}"] += [
                    _mean_label(a, b) for a, b in zip(whole, cropped, strict=True)
                ]
    return report


def modes(sizes: tuple[int, ...]) -> list[str]:
    """The isolation column's values: off, then the crop and whole+crop at each size."""
    return ["off", *(f"{mode} {size}" for size in sizes for mode in ("u2netp", "whole+crop"))]


def _mean_label(a, b) -> str:
    """The label of the mean of two predictions' probabilities."""
    return max(a.probabilities, key=lambda c: a.probabilities[c] + b.probabilities[c])


def table_rows(report: Report) -> list[list[str]]:
    """One row per model x isolation: accuracies (%) and metal-as-cardboard on wood."""
    samples = report.samples
    shiftable = {s.photo for s in samples if s.surface != "clean"}
    groups = {
        "clean": lambda s: s.surface == "clean",
        "same": lambda s: s.surface == "clean" and s.photo in shiftable,
        "board": lambda s: s.surface == "board",
        "wood": lambda s: s.surface == "wood",
        "mixed": lambda s: s.surface == "mixed",
        "shifted": lambda s: s.surface in SHIFTED,
    }
    rows = []
    for (name, isolation), labels in report.predictions.items():
        row = [name, isolation]
        for keep in groups.values():
            hits = [label == s.label for s, label in zip(samples, labels, strict=True) if keep(s)]
            row.append(f"{100 * np.mean(hits):.1f}" if hits else "-")
        metal = [
            label
            for s, label in zip(samples, labels, strict=True)
            if s.surface == "wood" and s.label == "metal"
        ]
        wrong = metal.count("cardboard")
        row.append(f"{100 * wrong / len(metal):.1f} ({wrong}/{len(metal)})" if metal else "-")
        rows.append(row)
    return rows


def format_report(report: Report) -> str:
    """The Markdown table and the lines that say what it was measured on."""
    counts = defaultdict(int)
    for s in report.samples:
        counts[s.surface] += 1
    n_clean, n_wood = counts["clean"], counts["wood"]
    header = [
        "model",
        "isolation",
        f"clean (n={n_clean})",
        f"same photos, clean (n={n_wood})",
        f"cut out, on its board (n={counts['board']})",
        f"wood (n={n_wood})",
        f"mixed held-out (n={counts['mixed']})",
        f"shifted, both (n={n_wood + counts['mixed']})",
        "metal called cardboard on wood",
    ]
    lines = [_markdown_table(header, table_rows(report)), ""]
    lines.append(
        f"Held-out TrashNet test photos: {n_clean} clean; {n_wood} shifted onto each surface; "
        f"{report.closeups} frame-filling close-ups kept clean only (no board to replace). "
        f"Accuracy in %; one standard error is at most {50 / max(1, n_wood) ** 0.5:.1f} points "
        f"on a surface's {n_wood} images."
    )
    for size, seconds in report.isolation_seconds.items():
        crop = defaultdict(list)
        for s, cropped in zip(report.samples, report.cropped[size], strict=True):
            if s.surface != "board":
                crop[s.surface == "clean"].append(cropped)
        shares = ", ".join(
            f"{100 * np.mean(crop[clean]):.0f}% of {'clean' if clean else 'shifted'} images"
            for clean in (True, False)
            if crop[clean]
        )
        lines.append(
            f"U2-Net-P isolation at {size} px: median {1000 * statistics.median(seconds):.0f} ms "
            f"per image (p90 {1000 * np.percentile(seconds, 90):.0f} ms) over {len(seconds)} "
            f"images on {os.cpu_count()} cores, using a median "
            f"{1000 * statistics.median(report.isolation_cpu_seconds[size]):.0f} ms of CPU time "
            f"(all threads); it cropped {shares}, the rest fell back to the whole image."
        )
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; all but the two name columns right-aligned."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
    return "\n".join([line(header), f"|{rule}|", *(line(row) for row in rows)])


def machine_line() -> str:
    """CPU model (as lscpu names it), cores, date, and how busy the machine was."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = "contended" if load > 0.5 * cores else "quiet"
    return f"{cpu}, {cores} cores, load average {load:.1f} ({busy}), {dt.datetime.now():%Y-%m-%d %H:%M}"


def _model_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=_model_arg,
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model to score, named NAME in the table",
    )
    parser.add_argument(
        "--split",
        type=Path,
        default=DEFAULT_SPLIT,
        help="split file; its TrashNet lines are used (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifted set")
    parser.add_argument("--limit", type=int, help="use only this many photos, classes in turn")
    parser.add_argument(
        "--isolation-size",
        type=int,
        action="append",
        metavar="PX",
        help=f"U2-Net-P input size; repeat to compare sizes (default: {DEFAULT_SIZE})",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    models = dict(args.model)
    if len(models) != len(args.model):
        raise SystemExit("two --model arguments share a NAME")
    for name, path in models.items():
        if not path.is_file():
            raise SystemExit(f"--model {name}: no such file {path}")
    t0 = time.perf_counter()
    sizes = tuple(args.isolation_size or (DEFAULT_SIZE,))
    report = run_benchmark(
        models, trashnet_photos(args.split, args.limit), seed=args.seed, sizes=sizes
    )
    print(format_report(report))
    print(
        f"Made by `python {' '.join(['bench/background_shift.py', *sys.argv[1:]])}` in "
        f"{time.perf_counter() - t0:.0f} s on {machine_line()}."
    )
    print(f"Shifted images and contact sheet: {cache_folder(CACHE, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
