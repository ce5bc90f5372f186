"""Knowing a setting is unfamiliar (issue 17): the shift score against the obvious scores, and
what marking unfamiliar photos "not sure" does to the answers given as sure.

Part 1, the bundled model: its familiarity reference was fitted on its training photos
(``docs/model/split/train.txt``) with the threshold from its validation photos (``val.txt``), so
everything below is scored once, on photos not used for either: the TrashNet and real-world
test photos of the committed split (sources it was trained on), every TrashNet++ crop (a
source it never saw), and two synthetic settings made from the TrashNet test photos (the
"bin camera" of ``training/backgrounds.py`` and, when that module has it, the darker "smart
bin"). For each: the share called unfamiliar, how well each score separates the set from the
TrashNet test photos (AUROC: the shift score; the energy score and 1 - max softmax, the issue's
"obvious" ones; Mahalanobis of the pooled last features), and the sure answers before and after
unfamiliar photos are made "not sure".

Part 2, leave-one-source-out: for each real-world source a probe (frozen ImageNet
EfficientNet-Lite0, logistic-regression head, ``bench/loso.py``'s folds and choice of C on
validation, calibrated on validation) is trained without it, with a familiarity reference from
the same training photos and its threshold from the same validation photos. Reported: the
held-out source's sure share and the accuracy of its sure answers, and the TrashNet test
photos' sure share, before and after.

    python bench/familiarity.py [--model PATH] [--skip-loso]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import split_lines  # noqa: E402
from common import CLASSES, REPO, command_line, machine_line, table  # noqa: E402
from garbage_sorter.training.report import softmax  # noqa: E402

from garbage_sorter.familiarity import Reference, fit_reference, style_of  # noqa: E402
from garbage_sorter.images import load_image  # noqa: E402
from garbage_sorter.model import load_checkpoint  # noqa: E402
from garbage_sorter.presets import EvalTransform, Preprocessing  # noqa: E402
from garbage_sorter.storage import file_sha256  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SPLIT = REPO / "docs" / "model" / "split"
CACHE = REPO / "runs" / "familiarity"
BATCH = 32


def split_rows(name: str) -> list[tuple[int, Path]]:
    """(class index, absolute path) of a committed split file."""
    return [(CLASSES.index(label), path) for label, _, path in split_lines(name)]


def source_rows(source: str) -> list[tuple[int, Path]]:
    folder = DATA / "realworld" / source
    return [
        (CLASSES.index(p.parent.name), p)
        for p in sorted(folder.glob("*/*"))
        if p.parent.name in CLASSES and p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]


def synthetic(paths: Sequence[Path], kind: str) -> list[Image.Image] | None:
    """The TrashNet photos as one synthetic fixed setting sees them, or None if not available."""
    from garbage_sorter.training import backgrounds as B

    make = getattr(B, "smart_bin_set", None) if kind == "smart bin" else B.bin_camera_set
    if make is None:
        return None
    images = [np.asarray(load_image(p)) for p in paths]
    kwargs = {} if kind == "smart bin" else {"fixed": True}
    return [Image.fromarray(a) for a in make(images, 0, **kwargs)]


def batches(images: Sequence, prep: Preprocessing):
    """Preprocessed batches, decoded in a worker thread."""
    transform = EvalTransform(prep)

    def load(item):
        pil = item if isinstance(item, Image.Image) else load_image(item, draft=prep.resize)
        return transform(pil)

    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(images), BATCH):
            yield torch.stack(list(pool.map(load, images[start : start + BATCH])))


def run_model(model, arch: str, prep: Preprocessing, images: Sequence, key: str) -> dict:
    """logits, style and pooled features of ``images``, cached under ``runs/familiarity``."""
    from garbage_sorter.model import head_name

    cache = CACHE / f"{key}.npz"
    if cache.is_file():
        return dict(np.load(cache))

    def reported():
        for i, x in enumerate(batches(images, prep)):
            yield x
            print(f"  {key}: {min((i + 1) * BATCH, len(images))}/{len(images)}", file=sys.stderr)

    pooled: list[np.ndarray] = []  # the head's input: a pre-hook sees it on the same pass
    head = getattr(model, head_name(arch))
    hook = head.register_forward_pre_hook(lambda m, args: pooled.append(args[0].float().numpy()))
    try:
        logits, style = style_of(model, arch, reported())
    finally:
        hook.remove()
    result = {"logits": logits, "style": style, "pooled": np.concatenate(pooled)}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result


def auroc(familiar: np.ndarray, shifted: np.ndarray) -> float:
    """P(score of a shifted photo > score of a familiar one), ties counted half."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(familiar)), np.ones(len(shifted))]
    return float(roc_auc_score(y, np.r_[familiar, shifted]))


def sure(y, probs, threshold, unfamiliar=None) -> tuple[float, float]:
    """(share answered as sure, accuracy of those answers)."""
    ok = probs.max(1) >= threshold
    if unfamiliar is not None:
        ok &= ~unfamiliar
    right = probs.argmax(1) == y
    return float(ok.mean()), float(right[ok].mean()) if ok.any() else float("nan")


def pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.0f}%"


def bundled_part(model_path: Path) -> None:
    ckpt = load_checkpoint(model_path)
    record = ckpt.familiarity
    if record is None:
        sys.exit(f"{model_path} has no familiarity reference (scripts/fit_familiarity.py)")
    model = ckpt.build().to(memory_format=torch.channels_last)
    tag = f"{ckpt.arch}-{file_sha256(model_path)[:16]}"  # another model file, another cache
    test_tn = split_rows("test-trashnet.txt")
    sets: dict[str, tuple[np.ndarray, dict]] = {}

    def add(name, rows, images=None):
        images = images if images is not None else [p for _, p in rows]
        key = f"{tag}-{name.replace(' ', '-')}"
        sets[name] = (
            np.array([c for c, _ in rows]),
            run_model(model, ckpt.arch, ckpt.preprocessing, images, key),
        )

    add("trashnet test", test_tn)
    add("real-world test (trained-on sources)", split_rows("test-realworld.txt"))
    add("trashnetpp (never seen)", source_rows("trashnetpp"))
    for kind in ("bin camera", "smart bin"):
        images = synthetic([p for _, p in test_tn], kind)
        if images is not None:
            add(f"{kind} (synthetic)", test_tn, images)
    train = run_model(
        model,
        ckpt.arch,
        ckpt.preprocessing,
        [p for _, p in split_rows("train.txt")],
        f"{tag}-train",
    )
    pooled_ref = fit_reference(train["pooled"])
    reference = Reference(record["mean"].numpy(), record["whiten"].numpy())
    temp, cut = ckpt.calibration["temperature"], ckpt.calibration["threshold"]

    def scores_of(out: dict) -> dict[str, np.ndarray]:
        """Each score, higher = less like the training photos."""
        return {
            "shift": reference.distance(out["style"]) / record["threshold"],
            "energy": -temp * np.log(np.exp(out["logits"] / temp).sum(1)),
            "softmax": 1 - softmax(out["logits"], temp).max(1),
            "pooled": pooled_ref.distance(out["pooled"]),
        }

    base = sets["trashnet test"][1]
    base_scores = scores_of(base)
    rows = []
    for name, (y, out) in sets.items():
        probs = softmax(out["logits"], temp)
        scores = scores_of(out)
        s = scores["shift"]
        aurocs = [
            "-" if out is base else f"{auroc(base_scores[k], scores[k]):.2f}"
            for k in ("shift", "energy", "softmax", "pooled")
        ]
        before = sure(y, probs, cut)
        after = sure(y, probs, cut, s > 1)
        rows.append(
            [
                name,
                len(y),
                f"{(probs.argmax(1) == y).mean():.3f}",
                pct(float((s > 1).mean())),
                *aurocs,
                f"{pct(before[0])} / {pct(before[1])}",
                f"{pct(after[0])} / {pct(after[1])}",
            ]
        )
    print(
        table(
            [
                "photos",
                "n",
                "accuracy",
                "unfamiliar",
                "AUROC shift",
                "energy",
                "1-softmax",
                "pooled Mahalanobis",
                "sure / right (softmax only)",
                "sure / right (+ unfamiliar = not sure)",
            ],
            rows,
        )
    )


def loso_part() -> None:
    """Sure answers under leave-one-source-out, with and without unfamiliar = not sure."""
    import loso
    from garbage_sorter.training.report import calibrate
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from garbage_sorter.model import build_model
    from garbage_sorter.presets import default_preprocessing

    folds = [f for f in loso.make_folds(DATA, SPLIT) if f.held_out is not None]
    everything = list({s.path: s for f in folds for s in [*f.train, *f.val, *f.test]}.values())
    arch = "efficientnet_lite0"
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), "imagenet").eval()
    out = run_model(
        model,
        arch,
        default_preprocessing(arch),
        [Path(s.path) for s in everything],
        f"imagenet-lite0-loso-{len(everything)}",
    )
    row = {s.path: i for i, s in enumerate(everything)}

    def part(samples, key):
        return out[key][[row[s.path] for s in samples]]

    rows = []
    for fold in folds:
        x, y = part(fold.train, "pooled"), loso.labels_of(fold.train)
        scaler = StandardScaler().fit(x)
        xv, yv = scaler.transform(part(fold.val, "pooled")), loso.labels_of(fold.val)
        best = None
        for c in loso.CS:
            head = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)
            logits = head.decision_function(xv)
            per = loso.by_source(fold.val, yv, logits.argmax(1), logits.max(1), 0.0)
            if best is None or loso.val_score(per) > best[0]:
                best = (loso.val_score(per), head, logits)
        _, head, val_logits = best
        cal = calibrate(val_logits, yv, 0.95)
        reference = fit_reference(part(fold.train, "style"))
        threshold = float(np.quantile(reference.distance(part(fold.val, "style")), 0.95))
        test_y = loso.labels_of(fold.test)
        probs = softmax(
            head.decision_function(scaler.transform(part(fold.test, "pooled"))), cal["temperature"]
        )
        shift = reference.distance(part(fold.test, "style")) / threshold
        sources = np.array([s.source for s in fold.test])
        for name in ("trashnet", fold.held_out):
            m = sources == name
            before = sure(test_y[m], probs[m], cal["threshold"])
            after = sure(test_y[m], probs[m], cal["threshold"], shift[m] > 1)
            rows.append(
                [
                    fold.held_out,
                    f"{name} (test)" if name == "trashnet" else f"{name} (held out, all)",
                    int(m.sum()),
                    f"{(probs[m].argmax(1) == test_y[m]).mean():.3f}",
                    pct(float((shift[m] > 1).mean())),
                    f"{pct(before[0])} / {pct(before[1])}",
                    f"{pct(after[0])} / {pct(after[1])}",
                ]
            )
    print(
        table(
            [
                "trained without",
                "photos",
                "n",
                "accuracy",
                "unfamiliar",
                "sure / right (softmax only)",
                "sure / right (+ unfamiliar = not sure)",
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=REPO / "resources" / "models" / "garbage_sorter.pt"
    )
    parser.add_argument("--skip-loso", action="store_true")
    args = parser.parse_args(argv)
    print(machine_line())
    print(command_line())
    print()
    bundled_part(args.model)
    if not args.skip_loso:
        print()
        loso_part()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
