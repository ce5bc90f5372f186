"""Leave-one-source-out (LOSO): how well does a recipe do on real-world photos from a source
it never saw?

For each real-world source under ``DATA/realworld`` (taco, floor-photos, trashnetpp) a model is
trained WITHOUT it -- on TrashNet's training photos and the other real-world sources -- and tested
on ALL of its photos; the mean over sources is the headline real-world figure. One more model,
trained on every source, is tested on the held-out TrashNet part of the committed split
(``docs/model/split``: groups of near-duplicates kept whole), which no model here trains on.

Everything chosen -- the head's regularisation C, the "not sure" threshold, which recipe wins --
is chosen on validation photos only: TrashNet's validation part of the committed split and a
group-aware 15% of each real-world source that is trained on. Test and LOSO figures are computed
once per candidate recipe, and the output says how many candidates were compared.

    python bench/loso.py [--recipes lite0 lite2-balanced ...] [--out runs/loso] [--bundled]

Probe recipes (minutes on 2 CPU cores): frozen ImageNet features of EfficientNet-Lite0 or Lite2,
cached on disk by file content with training's own cache (``train.cached_features``), and a
logistic-regression head (scikit-learn); optionally with class-balanced sample weights (training's
``balance_weights``) and with one augmented copy of every training photo per augmentation family
(``light``: blue/orange LED casts, low light, glare; ``framing``: cut by the frame edge, seen from
close, small in a large frame; see ``training/backgrounds.py``). Recipe ``full`` runs training's
real ``--mode full`` pipeline per fold (``--set key=value`` fills its TrainConfig): hours on a CPU,
meant for a GPU; the test suite runs it only on a tiny setting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import CLASSES, REPO, command_line, machine_line, table

DATA = REPO.parent / "shared" / "data"
SPLIT = REPO / "docs" / "model" / "split"
CS = (0.03, 0.1, 0.3, 1.0)  # the probe's inverse regularisation, chosen per fold on validation
AUGMENT_SEED = 0


@dataclass(frozen=True)
class Recipe:
    arch: str = "efficientnet_lite0"
    balanced: bool = False  # training's class- and source-balanced weights on the head's loss
    augment: tuple[str, ...] = ()  # families of augmented copies added to training
    full: bool = False  # training's --mode full pipeline instead of a probe


L0, L2 = "efficientnet_lite0", "efficientnet_lite2"
RECIPES = {
    "lite0": Recipe(L0),  # the baseline: where the bundled model is on unseen photos
    "lite0-balanced": Recipe(L0, balanced=True),
    "lite0-light": Recipe(L0, augment=("light",)),
    "lite0-framing": Recipe(L0, augment=("framing",)),
    "lite0-light-framing-balanced": Recipe(L0, True, ("light", "framing")),
    "lite2": Recipe(L2),
    "lite2-balanced": Recipe(L2, balanced=True),
    "lite2-light-balanced": Recipe(L2, True, ("light",)),
    "lite2-light-framing-balanced": Recipe(L2, True, ("light", "framing")),
    "full": Recipe(full=True),
}


# --------------------------------------------------------------------------------------------
# Data and folds


@dataclass
class Fold:
    """One model to train: ``held_out`` is the real-world source it never sees (None: none)."""

    held_out: str | None
    train: list
    val: list
    test: list  # TrashNet's test photos, then every photo of the held-out source


def make_folds(data: Path, split_dir: Path, val_fraction: float = 0.15) -> list[Fold]:
    """One fold per real-world source, and a last one trained on every source."""
    from garbage_sorter.training import data as D

    committed = D.load_split(split_dir)
    tn = {name: [s for s in part if s.source == "trashnet"] for name, part in committed.items()}
    realworld = D.scan_folder(data / "realworld")
    realworld = D.clean(realworld, D.audit(realworld))
    parts = D.split(realworld, fractions=(1 - val_fraction, val_fraction, 0.0), seed=0)
    sources = sorted({s.source for s in realworld})
    folds = []
    for held in [*sources, None]:
        folds.append(
            Fold(
                held,
                tn["train"] + [s for s in parts["train"] if s.source != held],
                tn["val"] + [s for s in parts["val"] if s.source != held],
                tn["test"] + [s for s in realworld if s.source == held],
            )
        )
    return folds


def augmented_copies(samples: list, family: str, folder: Path) -> list:
    """One copy of each sample made by ``family`` ("light" or "framing"), as JPEG files under
    ``folder`` named by the original's content, so the feature cache knows them next time."""
    from garbage_sorter.training import backgrounds as B
    from garbage_sorter.training.data import Sample
    from PIL import Image

    make = {"light": B.relight, "framing": B.reframe}[family]
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for s in samples:
        digest = hashlib.sha256(Path(s.path).read_bytes()).hexdigest()[:20]
        path = folder / f"{digest}.jpg"
        if not path.exists():
            rng = np.random.default_rng([AUGMENT_SEED, int(digest[:12], 16)])
            with Image.open(s.path) as image:
                rgb = np.asarray(image.convert("RGB"))
            tmp = path.with_suffix(".tmp")
            Image.fromarray(make(rgb, rng)).save(tmp, "JPEG", quality=90)
            tmp.replace(path)
        copies.append(Sample(str(path), s.label, s.source, s.group))
    return copies


def bin_camera_photos(samples: list, folder: Path) -> list:
    """``samples`` (TrashNet photos) through `training.backgrounds.bin_camera_set`: held-out
    backgrounds, strong colour casts or low light, a vignette. Saved as JPEGs, source "bin-camera"."""
    from garbage_sorter.training.backgrounds import bin_camera_set
    from garbage_sorter.training.data import Sample
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}_{Path(s.path).stem}.jpg" for i, s in enumerate(samples)]
    if not all(p.exists() for p in paths):
        rgbs = [np.asarray(Image.open(s.path).convert("RGB")) for s in samples]
        for path, rgb in zip(paths, bin_camera_set(rgbs, seed=0), strict=True):
            Image.fromarray(rgb).save(path, "JPEG", quality=90)
    return [
        Sample(str(p), s.label, "bin-camera", s.group) for p, s in zip(paths, samples, strict=True)
    ]


def features(arch: str, samples: list) -> np.ndarray:
    """Frozen ImageNet backbone features of ``samples``, through training's on-disk cache."""
    import torch
    from garbage_sorter.training.train import _model_key, cached_features

    from garbage_sorter.model import build_model
    from garbage_sorter.presets import default_preprocessing

    prep = default_preprocessing(arch)
    model = build_model(arch, len(CLASSES), "imagenet")
    last = [0]

    def report(p) -> None:
        if p.step - last[0] >= 256 or p.step == p.steps:
            last[0] = p.step
            print(f"  {arch}: {p.message}", file=sys.stderr, flush=True)

    key = _model_key(arch, "imagenet", prep)
    return cached_features(
        model, arch, key, samples, prep, torch.device("cpu"), 32, report, lambda: False
    )


# --------------------------------------------------------------------------------------------
# Scoring


def scores(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, threshold: float) -> dict:
    """Accuracy, recall of each class present, share answered ("sure") and accuracy there."""
    sure = conf >= threshold
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "recall": {
            c: float((pred[y == i] == i).mean()) for i, c in enumerate(CLASSES) if (y == i).any()
        },
        "sure": float(sure.mean()),
        "accuracy_sure": float((pred[sure] == y[sure]).mean()) if sure.any() else None,
        "confusion": [[int(((y == i) & (pred == j)).sum()) for j in range(6)] for i in range(6)],
    }


def by_source(samples: list, y, pred, conf, threshold: float) -> dict[str, dict]:
    sources = np.array([s.source for s in samples])
    return {
        src: scores(y[sources == src], pred[sources == src], conf[sources == src], threshold)
        for src in sorted(set(sources))
    }


def labels_of(samples: list) -> np.ndarray:
    return np.array([CLASSES.index(s.label) for s in samples])


def val_score(per_source: dict[str, dict]) -> float:
    """Validation accuracy with every source weighted equally, as the LOSO mean weighs them."""
    return float(np.mean([m["accuracy"] for m in per_source.values()]))


# --------------------------------------------------------------------------------------------
# Recipes


def run_probe(recipe: Recipe, folds: list[Fold], work: Path) -> list[dict]:
    """Fit and score the probe on every fold; C and the threshold come from validation."""
    from garbage_sorter.training.data import balance_weights
    from garbage_sorter.training.report import calibrate, softmax
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    # Every photo any fold needs, and augmented copies of every photo any fold trains on.
    everything = {s.path: s for f in folds for s in [*f.train, *f.val, *f.test]}
    trained = list({s.path: s for f in folds for s in f.train}.values())
    copies = {
        fam: augmented_copies(trained, fam, work / "augmented" / fam) for fam in recipe.augment
    }
    copy_of = {
        fam: {s.path: c for s, c in zip(trained, cs, strict=True)} for fam, cs in copies.items()
    }
    listed = list(everything.values()) + [c for cs in copies.values() for c in cs]
    stacked = features(recipe.arch, listed)
    row = {s.path: i for i, s in enumerate(listed)}
    feats = lambda samples: stacked[[row[s.path] for s in samples]]  # noqa: E731

    results = []
    for fold in folds:
        train = fold.train + [copy_of[fam][s.path] for fam in recipe.augment for s in fold.train]
        x, y = feats(train), labels_of(train)
        weight = np.array(balance_weights(train)) if recipe.balanced else None
        scaler = StandardScaler().fit(x)
        xv, yv = scaler.transform(feats(fold.val)), labels_of(fold.val)
        best = None
        for c in CS:
            head = LogisticRegression(C=c, max_iter=3000).fit(
                scaler.transform(x), y, sample_weight=weight
            )
            logits = head.decision_function(xv)
            per = by_source(fold.val, yv, logits.argmax(1), softmax(logits).max(1), 0.0)
            if best is None or val_score(per) > best[0]:
                best = (val_score(per), c, head, logits)
        _, c, head, val_logits = best
        cal = calibrate(val_logits, yv, 0.95)
        test_logits = head.decision_function(scaler.transform(feats(fold.test)))
        probs = softmax(test_logits, cal["temperature"])
        val_probs = softmax(val_logits, cal["temperature"])
        results.append(
            {
                "held_out": fold.held_out,
                "C": c,
                "calibration": cal,
                "val": by_source(
                    fold.val, yv, val_probs.argmax(1), val_probs.max(1), cal["threshold"]
                ),
                "test": by_source(
                    fold.test, labels_of(fold.test), probs.argmax(1), probs.max(1), cal["threshold"]
                ),
                "mistakes": mistakes(fold, probs.argmax(1)),
            }
        )
        print(
            f"  fold without {fold.held_out}: C {c}, val {best[0]:.3f}", file=sys.stderr, flush=True
        )
    return results


def run_full(folds: list[Fold], work: Path, overrides: dict) -> list[dict]:
    """Training's real --mode full pipeline per fold, scored with `evaluate` on the saved model."""
    from garbage_sorter.training import data as D
    from garbage_sorter.training.config import TrainConfig
    from garbage_sorter.training.train import TerminalProgress, main

    from garbage_sorter import Classifier
    from garbage_sorter.evaluation import evaluate_path

    base = dict(arch=L0, weights="imagenet", freeze_blocks=8, linear_probe_epochs=1, epochs=5)
    results = []
    for fold in folds:
        name = fold.held_out or "all"
        run = work / "full" / name
        D.save_split({"train": fold.train, "val": fold.val, "test": fold.test}, run / "split")
        if not (run / "model" / "best.pt").exists():
            config = TrainConfig(
                **{**base, **overrides}, splits=str(run / "split"), out=str(run / "model")
            )
            main(config, TerminalProgress())
        clf = Classifier.load(run / "model" / "best.pt", device="cpu")
        measured = {}
        for part in ("val", "test"):
            got = evaluate_path(clf, run / "split" / f"{part}.txt", crop=False)
            measured[part] = {
                src: {
                    "n": m["n"],
                    "accuracy": m["accuracy"],
                    "recall": {c: r for c, r in m["recall"].items() if r is not None},
                    "sure": 1 - m["abstain_rate"],
                    "accuracy_sure": m["accuracy_answered"],
                }
                for src, m in got["by_source"].items()
            }
        results.append({"held_out": fold.held_out, "C": None, **measured, "mistakes": {}})
    return results


def mistakes(fold: Fold, pred: np.ndarray) -> dict:
    """For TACO photos: recall of trash by TACO category, and what was wrongly called trash."""
    import csv

    taco = [i for i, s in enumerate(fold.test) if s.source == "taco"]
    if not taco:
        return {}
    manifest = Path(fold.test[taco[0]].path).parents[1] / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as f:
        category = {
            (manifest.parent / r["file"]).resolve(): r.get("taco_category", "?")
            for r in csv.DictReader(f)
        }
    trash, said = defaultdict(lambda: [0, 0]), Counter()
    index = CLASSES.index("trash")
    for i in taco:
        s, cat = fold.test[i], category.get(Path(fold.test[i].path).resolve(), "?")
        if s.label == "trash":
            trash[cat][0] += 1
            trash[cat][1] += int(pred[i] == index)
        elif pred[i] == index:
            said[f"{s.label}: {cat}"] += 1
    return {"trash_by_category": dict(trash), "called_trash": dict(said)}


def run_bundled(data: Path, studio: list, work: Path) -> dict[str, dict]:
    """The bundled model per source -- NOT leave-one-source-out: it trained on taco and floor.

    ``studio``: the TrashNet test photos and their bin-camera copies."""
    from garbage_sorter.training.data import save_split

    from garbage_sorter import Classifier
    from garbage_sorter.classifier import bundled_model_path
    from garbage_sorter.evaluation import evaluate_path

    clf = Classifier.load(bundled_model_path(), device="cpu")
    out = {}
    save_split({"test": studio}, work / "studio-split")
    studio_file = work / "studio-split" / "test.txt"
    targets = [("trashnet", studio_file), ("bin-camera", studio_file)] + [
        (p.name, p) for p in sorted((data / "realworld").iterdir()) if p.is_dir()
    ]
    cache = {}
    for name, path in targets:
        got = cache.get(path) or evaluate_path(clf, path, crop=False)
        cache[path] = got
        m = got["by_source"][name]
        out[name] = {
            "n": m["n"],
            "accuracy": m["accuracy"],
            "recall": {c: r for c, r in m["recall"].items() if r is not None},
            "sure": 1 - m["abstain_rate"],
            "accuracy_sure": m["accuracy_answered"],
        }
        if path.is_dir():  # a split file mixes sources in its confusion matrix
            out[name]["confusion"] = got["confusion_matrix"]
    return out


# --------------------------------------------------------------------------------------------
# Tables


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_rows(name: str, results: list[dict]) -> list:
    loso = {r["held_out"]: r["test"][r["held_out"]] for r in results if r["held_out"]}
    everything = next(r for r in results if r["held_out"] is None)
    val = np.mean([val_score(r["val"]) for r in results])
    trash = [loso[s]["recall"].get("trash") for s in loso]
    trash = [t for t in trash if t is not None]
    return [
        name,
        fmt(val),
        fmt(everything["test"]["trashnet"]["accuracy"]),
        fmt(everything["test"].get("bin-camera", {}).get("accuracy")),
        *(fmt(loso[s]["accuracy"]) for s in sorted(loso)),
        fmt(np.mean([loso[s]["accuracy"] for s in loso])),
        fmt(min(trash)) if trash else "–",
        fmt(np.mean([loso[s]["sure"] for s in loso])),
        fmt(np.mean([loso[s]["accuracy_sure"] or 0.0 for s in loso])),
    ]


def detail_rows(name: str, per: dict[str, dict]) -> list:
    return [
        [
            name,
            src,
            m["n"],
            fmt(m["accuracy"]),
            *(fmt(m["recall"].get(c)) for c in CLASSES),
            fmt(m["sure"]),
            fmt(m["accuracy_sure"]),
        ]
        for src, m in per.items()
    ]


def confusion_table(matrix: list[list[int]]) -> str:
    return table(
        ["true \\ predicted", *CLASSES, "recall"],
        [
            [c, *row, fmt(row[i] / sum(row)) if sum(row) else "–"]
            for i, (c, row) in enumerate(zip(CLASSES, matrix, strict=True))
        ],
    )


def _value(text: str):
    """A --set value: a JSON number, list or boolean, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["lite0"], choices=list(RECIPES))
    parser.add_argument("--out", default="runs/loso", help="work folder: caches, copies, results")
    parser.add_argument("--data", default=str(DATA), help="folder holding trashnet/ and realworld/")
    parser.add_argument("--split", default=str(SPLIT), help="committed split; TrashNet parts used")
    parser.add_argument(
        "--bundled", action="store_true", help="also score the bundled model (not LOSO)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig fields for recipe full",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).absolute()  # split files written here must not hold relative paths
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GARBAGE_SORTER_CACHE_DIR", str(out / "cache"))
    folds = make_folds(Path(args.data), Path(args.split))
    # The model trained on every source is also tested on a synthetic bin camera.
    folds[-1].test += bin_camera_photos(folds[-1].test, out / "bin-camera")
    sizes = ", ".join(
        f"without {f.held_out or 'none'}: train {len(f.train)}, val {len(f.val)}, test {len(f.test)}"
        for f in folds
    )

    results = {}
    for name in args.recipes:
        print(f"{name} ...", file=sys.stderr, flush=True)
        if RECIPES[name].full:
            overrides = dict(kv.split("=", 1) for kv in args.set)
            results[name] = run_full(folds, out, {k: _value(v) for k, v in overrides.items()})
        else:
            results[name] = run_probe(RECIPES[name], folds, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"Machine: {machine_line()}\n\n{command_line()}\n")
    print(f"Folds ({sizes})\n")

    sources = sorted(f.held_out for f in folds if f.held_out)
    chosen = max(results, key=lambda n: np.mean([val_score(r["val"]) for r in results[n]]))
    print(
        f"{len(results)} candidate recipe(s) compared, each tested once; C from {list(CS)} and the "
        f'"not sure" threshold (95% precision) chosen per fold on validation photos. '
        f"Chosen on validation: **{chosen}**.\n"
    )
    print(
        table(
            [
                "recipe",
                "val (sources equal)",
                "TrashNet test",
                "bin camera",
                *(f"LOSO {s}" for s in sources),
                "LOSO mean",
                "trash recall (min)",
                "sure (mean)",
                "acc. when sure (mean)",
            ],
            [summary_rows(n, r) for n, r in results.items()],
        )
    )
    print("\nLOSO per source (each model tested on the source it never saw; recall per class):\n")
    print(
        table(
            ["recipe", "source", "n", "accuracy", *CLASSES, "sure", "acc. when sure"],
            [
                row
                for n, r in results.items()
                for f in r
                if f["held_out"]
                for row in detail_rows(n, {f["held_out"]: f["test"][f["held_out"]]})
            ],
        )
    )
    for name in dict.fromkeys([args.recipes[0], chosen]):
        pooled = np.zeros((6, 6), int)
        for f in results[name]:
            if f["held_out"] and "confusion" in f["test"][f["held_out"]]:
                pooled += np.array(f["test"][f["held_out"]]["confusion"])
        if pooled.any():
            print(f"\nConfusion on real-world photos under LOSO, {name} (all sources pooled):\n")
            print(confusion_table(pooled.tolist()))
        taco = next(
            (f["mistakes"] for f in results[name] if f["held_out"] == "taco" and f["mistakes"]),
            None,
        )
        if taco:
            cats = sorted(taco["trash_by_category"].items(), key=lambda kv: -kv[1][0])
            print(
                f"\n{name}, TACO trash under LOSO, recall by TACO category: "
                + "; ".join(f"{c} {k}/{n}" for c, (n, k) in cats)
            )
            said = sorted(taco["called_trash"].items(), key=lambda kv: -kv[1])
            print(
                f"{name}, TACO photos wrongly called trash: "
                + ("; ".join(f"{c} {n}" for c, n in said) or "none")
            )
    if args.bundled:
        bundled = run_bundled(Path(args.data), folds[-1].test, out)
        print(
            "\nThe bundled model, NOT leave-one-source-out (it trained on part of taco and floor-photos; trashnetpp it never saw; TrashNet: the committed test split):\n"
        )
        print(
            table(
                ["model", "source", "n", "accuracy", *CLASSES, "sure", "acc. when sure"],
                detail_rows("bundled", bundled),
            )
        )
        print("\nBundled model on trashnetpp (held out: it never saw the source):\n")
        print(
            confusion_table(bundled["trashnetpp"]["confusion"]) if "trashnetpp" in bundled else ""
        )
        (out / "bundled.json").write_text(json.dumps(bundled, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
