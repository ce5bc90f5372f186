"""Which training recipe is most accurate on real-world photos without losing the studio?

Trains each variant on one shared split of ../shared/data (TrashNet + realworld; TrashNet-only
variants use the TrashNet part of the same split), then evaluates every model on the same two
held-out test sets, TrashNet and real-world, plus inference-time variants (test-time flip,
object isolation, WiSE-FT weight averaging) of the trained models. Prints one table.

    python bench/recipes.py --out runs/recipes [--epochs 5] [--only NAME ...]

Runs already finished in --out are reused, so an interrupted comparison continues.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

BASE = dict(
    arch="efficientnet_lite0",
    weights="imagenet",
    freeze_blocks=8,
    batch_size=32,
    lr=1e-3,
    lr_min=1e-5,
    patience=10,
    workers=1,
    linear_probe_epochs=1,
)
# Training on from a checkpoint: no linear probe, a lower peak, the compositing recipe.
CONTINUE = dict(
    background_aug=0.5, aug_strength=1.5, linear_probe_epochs=0, lr=3e-4, warmup_epochs=0.2
)
BUNDLED = (
    "runs/recipes/tnrw_LP-FT_backgrounds_strong-aug_5-epochs/best.pt"  # until the fourth session
)
SEED_1 = "runs/recipes/tnrw_LP-FT_more-backgrounds_strong-aug_5-more-epochs_4-blocks-frozen_seed-1/best.pt"
# fmt: off
VARIANTS = {
    # name: (sources, overrides)
    "tn+rw, LP-FT, backgrounds, strong aug": ("all", dict(background_aug=0.5, aug_strength=1.5)),
    # The same model trained 5 more epochs from its best checkpoint at a lower peak rate (a CPU
    # budget split in two sessions of training).
    "tn+rw, LP-FT, backgrounds, strong aug, +5 epochs": ("all", dict(
        CONTINUE, weights="runs/recipes/tnrw_LP-FT_backgrounds_strong-aug/best.pt")),
    # The bundled model trained 5 more epochs with most TrashNet objects moved onto new
    # backgrounds (background shift, issue 5).
    "tn+rw, LP-FT, backgrounds 0.8, strong aug, +5 more epochs": ("all", dict(
        CONTINUE, background_aug=0.8, weights=BUNDLED)),
    # ... or with only the stem and first 4 blocks frozen: more of the network adapts.
    "tn+rw, LP-FT, backgrounds, strong aug, +5 more epochs, 4 blocks frozen": ("all", dict(
        CONTINUE, freeze_blocks=4, weights=BUNDLED)),
    # ... and with two more kinds of training background, any-colour clutter and stripes, and a
    # three times larger pool of them (fourth session).
    "tn+rw, LP-FT, more backgrounds, strong aug, +5 more epochs, 4 blocks frozen": ("all", dict(
        CONTINUE, freeze_blocks=4, weights=BUNDLED)),
    "tn+rw, LP-FT, more backgrounds 0.8, strong aug, +5 more epochs, 4 blocks frozen": ("all", dict(
        CONTINUE, background_aug=0.8, freeze_blocks=4, weights=BUNDLED)),
    # ... the same with another seed (sampling, augmentation, backgrounds): a soup ingredient.
    "tn+rw, LP-FT, more backgrounds, strong aug, +5 more epochs, 4 blocks frozen, seed 1": ("all", dict(
        CONTINUE, freeze_blocks=4, seed=1, weights=BUNDLED)),
    # ... averaged with the bundled model and the seed-1 run: a uniform model soup of three
    # fine-tunes of one start (bundled since the fourth session).
    "tn+rw, LP-FT, more backgrounds, strong aug, +5 more epochs, 4 blocks frozen, soup": ("all", dict(
        CONTINUE, freeze_blocks=4, weights=BUNDLED, soup=[BUNDLED, SEED_1])),
    "tn, LP-FT, plain": ("trashnet", dict()),
    "tn+rw, LP-FT, plain": ("all", dict()),
    "tn, linear probe": ("trashnet", dict(mode="head")),
    "tn+rw, linear probe": ("all", dict(mode="head")),
    "tn+rw, linear probe, Lite2": ("all", dict(mode="head", arch="efficientnet_lite2")),
    "tn+rw, LP-FT, Lite2, backgrounds, strong aug": ("all", dict(
        arch="efficientnet_lite2", background_aug=0.5, aug_strength=1.5)),
    "tn+rw, LP-FT, Lite2, backgrounds, strong aug, peak 3e-4": ("all", dict(
        arch="efficientnet_lite2", background_aug=0.5, aug_strength=1.5, lr=3e-4)),
}
# fmt: on


def shared_split(out: Path) -> Path:
    """One split of TrashNet + realworld (seed 0) and its TrashNet-only restriction."""
    from garbage_sorter.training import data as D

    both, tn_only = out / "split-all", out / "split-trashnet"
    if not (both / "test.txt").exists():
        samples = D.scan_folder(DATA / "trashnet") + D.scan_folder(DATA / "realworld")
        D.save_split(D.split(D.clean(samples, D.audit(samples)), seed=0), both)
    if not (tn_only / "test.txt").exists():
        parts = D.load_split(both)
        D.save_split(
            {k: [s for s in v if s.source == "trashnet"] for k, v in parts.items()}, tn_only
        )
    return both


def train_variant(name: str, out: Path, epochs: int) -> Path:
    from garbage_sorter.training.config import TrainConfig
    from garbage_sorter.training.train import TerminalProgress, main

    sources, overrides = VARIANTS[name]
    run = out / name.replace(", ", "_").replace(" ", "-").replace("+", "")
    if (run / "metrics.json").exists():
        return run / "best.pt"
    split = out / ("split-all" if sources == "all" else "split-trashnet")
    config = TrainConfig(**{**BASE, "epochs": epochs, **overrides}, splits=str(split), out=str(run))
    t0 = time.perf_counter()
    main(config, TerminalProgress())
    (run / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
    return run / "best.pt"


def wise_model(best: Path, alpha: float) -> Path:
    """WiSE-FT: average the fine-tuned weights with the linear-probe weights saved in last.pt."""
    import torch

    from garbage_sorter.model import load_checkpoint, save_checkpoint

    target = best.with_name(f"wise{alpha:.2f}.pt")
    if target.exists():
        return target
    ckpt = load_checkpoint(best)
    probe = torch.load(best.with_name("last.pt"), weights_only=True)["train_state"]["probe_state"]
    model = ckpt.build()
    mixed = {
        k: (alpha * v.float() + (1 - alpha) * probe[k].float()) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(mixed)
    save_checkpoint(
        target,
        model,
        arch=ckpt.arch,
        classes=ckpt.classes,
        preprocessing=ckpt.preprocessing,
        calibration=ckpt.calibration,
        config=ckpt.config,
        metrics=ckpt.metrics,
        half=True,
    )
    return target


def evaluate(model: Path, split: Path, **kwargs) -> dict[str, float]:
    from garbage_sorter import Classifier
    from garbage_sorter.evaluation import evaluate_path

    result = evaluate_path(Classifier.load(model, device="cpu"), split / "test.txt", **kwargs)
    by = result["by_source"]
    rw = [s for s in by if s != "trashnet"]
    n_rw = sum(by[s]["n"] for s in rw)
    return {
        "trashnet": by["trashnet"]["accuracy"],
        "realworld": sum(by[s]["accuracy"] * by[s]["n"] for s in rw) / n_rw,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GARBAGE_SORTER_CACHE_DIR", str(out / "cache"))
    split = shared_split(out)
    rows = []
    for name in args.only or VARIANTS:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        best = train_variant(name, out, args.epochs)
        seconds = (best.parent / "wall_seconds.txt").read_text().strip()
        rows.append((name, "-", evaluate(best, split), seconds))
        if VARIANTS[name][1].get("mode") != "head":
            rows.append((name, "test-time flip", evaluate(best, split, tta=True), ""))
            rows.append((name, "isolate object", evaluate(best, split, crop=True), ""))
            if VARIANTS[name][1].get("linear_probe_epochs", 1):
                rows.append((name, "WiSE-FT a=0.5", evaluate(wise_model(best, 0.5), split), ""))
        print_table(rows, args.epochs)
    return 0


def print_table(rows, epochs: int) -> None:
    print(
        f"\nTest accuracy, shared split (seed 0); Lite0 ImageNet init, {epochs} epochs, first 8 blocks frozen"
    )
    print(f"| {'training recipe':<40} | {'at inference':<15} | TrashNet | real-world | train s |")
    print(f"|{'-' * 42}|{'-' * 17}|---------:|-----------:|--------:|")
    for name, inference, acc, seconds in rows:
        print(
            f"| {name:<40} | {inference:<15} | {acc['trashnet']:.4f}   | {acc['realworld']:.4f}     | {seconds:>7} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
