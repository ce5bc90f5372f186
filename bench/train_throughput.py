"""Training throughput on the CPU (images per second) for head and full modes.

    python bench/train_throughput.py [--steps 3] [--rounds 3]

Cases, interleaved round by round in one process, on real photos with the training code's own
pieces (``SampleDataset``, ``train_transform``, ``frozen_modules``, ``train_one_epoch``,
``cached_features``, ``fit_head``), batch 32, one loader worker, PyTorch's default threads:

- head: backbone features of new photos (the first retrain; later ones hit the feature cache)
  plus fitting the linear head on them, timed as a whole;
- full: fine-tuning steps, after one untimed step that starts the loader, with the stem and the
  first ``--freeze-blocks`` blocks frozen (0: everything trains).

The baseline is full fine-tuning of ResNet-18.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from common import (
    ARCH_NAMES,
    PHOTOS,
    command_line,
    interleave,
    machine_line,
    median,
    photo_files,
    table,
)
from common import (
    rate as rate_text,
)

BATCH = 32
# (arch, mode, frozen blocks); the first is the baseline.
CASES = [
    ("resnet18", "full", 0),
    ("resnet18", "head", None),
    ("efficientnet_lite0", "full", 0),
    ("efficientnet_lite0", "full", 8),
    ("efficientnet_lite0", "head", None),
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed training steps per case per round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder-per-class photos")
    p.add_argument("--archs", nargs="+", default=sorted(ARCH_NAMES), choices=sorted(ARCH_NAMES))
    return p


def samples_of(folder: Path, count: int):
    """Training samples from a folder-per-class tree (labels from the folder names)."""
    from garbage_sorter.training.data import Sample

    files = photo_files(folder, count)
    return [Sample(str(p), p.parent.name.lower(), folder.name, p.stem) for p in files]


def model_for(arch: str):
    """ResNet-18 as built (no download needed; speed does not depend on the weights),
    EfficientNet-Lite0 with its ImageNet backbone as training uses it."""
    import torch

    from garbage_sorter.model import build_model

    torch.manual_seed(0)
    return build_model(arch, 6, None if arch == "resnet18" else "imagenet")


def full_case(arch: str, freeze: int, samples, args: argparse.Namespace):
    """A callable running one untimed step then ``args.steps`` timed ones; returns their seconds."""
    import torch
    from garbage_sorter.training import train as T
    from garbage_sorter.training.config import TrainConfig

    from garbage_sorter.presets import default_preprocessing, train_transform

    config = TrainConfig(arch=arch, freeze_blocks=freeze, batch_size=args.batch)
    prep = default_preprocessing(arch)
    classes = sorted({s.label for s in samples})
    model = model_for(arch).to(memory_format=torch.channels_last)
    frozen = T.frozen_modules(model, arch, freeze)
    for module in frozen:
        module.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    scheduler = T.WarmupCosine(optimizer, 10**6, 0, 0.01)
    dataset = T.SampleDataset(samples, classes, train_transform(prep, normalize=False), prep.resize)
    device = torch.device("cpu")
    norm = T.normalizer(prep, device)

    def steps(batches, count: int) -> float:
        stats = T.train_one_epoch(
            model,
            _Take(batches, count),
            optimizer,
            scheduler,
            device=device,
            ctx=contextlib.nullcontext(),
            norm=norm,
            epoch=0,
            epochs=1,
            config=config,
            teacher=None,
            report=lambda p: None,
            should_stop=lambda: False,
            frozen=frozen,
        )
        return stats["seconds"]

    def run(r: int) -> float:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch,
            num_workers=1,
            drop_last=True,
            sampler=torch.utils.data.RandomSampler(
                dataset, replacement=True, num_samples=args.batch * (args.steps + 1)
            ),
        )
        batches = iter(loader)
        steps(batches, 1)
        return steps(batches, args.steps)

    return run


def head_case(arch: str, samples, args: argparse.Namespace):
    """A callable computing features of ``steps * batch`` new photos and fitting the head."""
    import numpy as np
    import torch
    from garbage_sorter.training import train as T
    from garbage_sorter.training.config import TrainConfig

    from garbage_sorter.presets import default_preprocessing

    config = TrainConfig(arch=arch, mode="head", batch_size=args.batch)
    prep = default_preprocessing(arch)
    model = model_for(arch).to(memory_format=torch.channels_last)  # as train.main does
    classes = sorted({s.label for s in samples})
    count = args.batch * args.steps

    def run(r: int) -> None:
        # A different key each call: every photo is new to the feature cache.
        chosen = [samples[(r * count + i) % len(samples)] for i in range(count)]
        feats = T.cached_features(
            model,
            arch,
            f"bench-{arch}-{r}-{os.getpid()}",
            chosen,
            prep,
            torch.device("cpu"),
            config.batch_size * 2,
            lambda p: None,
            lambda: False,
        )
        labels = np.array([classes.index(s.label) for s in chosen])
        T.fit_head(feats, labels, feats, labels, len(classes), config)

    return run


class _Take:
    """The next ``count`` batches of an iterator, as a sized loader for ``train_one_epoch``."""

    def __init__(self, batches, count: int):
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            yield next(self.batches)


def run(args: argparse.Namespace) -> str:
    samples = samples_of(args.photos, 600)
    cases, labels = {}, {}
    for arch, mode, freeze in CASES:
        if arch not in args.archs:
            continue
        name = (arch, mode, freeze)
        cases[name] = (
            head_case(arch, samples, args)
            if mode == "head"
            else full_case(arch, freeze, samples, args)
        )
        labels[name] = (f"{ARCH_NAMES[arch]}", mode, "-" if freeze is None else str(freeze))
    times = interleave(cases, args.rounds, warmup=1)
    images = args.batch * args.steps
    rates = {name: images / median(t) for name, t in times.items()}
    base = rates.get(CASES[0]) or next(iter(rates.values()))
    rows = [[*labels[name], rate_text(r), f"{r / base:.2f}"] for name, r in rates.items()]
    return "\n".join(
        [
            f"Command: {command_line()}",
            "",
            f"Machine: {machine_line()}",
            "",
            f"Training throughput, batch {args.batch}, {images} images per case per round "
            f"(median of {args.rounds} rounds, interleaved)",
            "",
            table(["model", "mode", "frozen blocks", "images/s", "vs first row"], rows),
            "",
        ]
    )


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gs-train-bench-") as tmp:
        # The feature cache goes to a throw-away folder, never the user's.
        os.environ["GARBAGE_SORTER_CACHE_DIR"] = tmp
        print(run(args))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
