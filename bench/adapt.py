"""Adapting to one setting (issue 17): leave-one-setting-out, base against adapted.

Each setting is split by object or source photo into an adaptation half and a test half. The
adaptation half is given to :func:`garbage_sorter.adapt.adapt_model` unlabelled (every
method variant), and then with 5 and 10 labelled photos per class drawn from it (two draws;
the rest stay unlabelled), as ``garbage-sorter adapt --labelled`` would; the test half is
never seen. For each: accuracy, the share answered as sure (calibrated confidence at or above
the model's threshold) and the accuracy of those answers. For the unlabelled rows also two
quantities a rule could use without labels, on the adaptation half: the mean calibrated
max-softmax confidence and the mean prediction entropy (nats), before (the base row) and after.
The first unlabelled row is what ``adapt`` itself chooses without labels.

Besides ``adapt_model``'s fixed (blend, blocks) variants, four methods measured here only:
a *mixture* blend (the variance keeps the spread between the two means), a *sequential*
blend (each layer's statistics measured behind earlier layers that already use the blend),
*shift-corrected* AdaBN (the shipped statistics moved by the setting's shift from TrashNet
training photos that no setting adapts on, measured the same way) and TENT (one epoch of
entropy minimisation on the BatchNorm scales and shifts, after AdaBN of every layer).

Settings:

* ``trashnetpp``: TrashNet++ crops (tiled floor and concrete yard, three classes), halves by
  ``source_photo``. New to the bundled model.
* ``bin camera``: a synthetic fixed setting, new to the model: TrashNet objects cut off their
  board and pasted on ONE held-out background under ONE strong blue LED cast with a vignette;
  adaptation half = the TrashNet validation photos, test half = the TrashNet test photos (the
  split keeps near-duplicates on one side).
* ``smart bin``: a harsh synthetic fixed setting, after the issue's real smart-bin camera
  (`garbage_sorter.training.backgrounds.smart_bin_set`): the TrashNet board kept as a white
  shelf inside a dark bin, ONE narrow-band blue LED, low exposure, blur and sensor noise; the
  same halves as ``bin camera``, one camera (seed 0) for both.
* ``taco``, ``floor-photos``: only their photos outside the bundled model's training split, by
  TACO source photo / file. The model was trained on these sources, so they are not new to it.
* ``trashnet``: the training domain. Adapt on (up to 250) TrashNet training photos, test on the
  TrashNet test photos: adaptation must not cost more than a point here.

    python bench/adapt.py [--model PATH] [--seeds 2] [--only trashnetpp,bin camera]
        [--labelled-only] [--before] [--test]

``--labelled-only`` skips the unlabelled variants; ``--before`` adds, for each labelled draw,
``adapt_model`` without the tuned candidate (the heads-only baseline, in the same run);
``--test`` runs the settings nothing was chosen on (``bench/adapt_choice.py --test``'s).

``--seeds 0`` measures the unlabelled variants only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, machine_line, table  # noqa: E402

import garbage_sorter.adapt as adapt_module  # noqa: E402
from garbage_sorter.adapt import (  # noqa: E402
    DEFAULT,
    Photos,
    Stats,
    adapt_model,
    adapted_layers,
    current_statistics,
    setting_statistics,
)
from garbage_sorter.classifier import bundled_model_path  # noqa: E402
from garbage_sorter.images import load_image  # noqa: E402
from garbage_sorter.model import Checkpoint, load_checkpoint  # noqa: E402
from garbage_sorter.presets import EvalTransform  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SPLIT = REPO / "docs" / "model" / "split"
VARIANTS = {  # name: (alpha, blocks) for adapt_model(fixed=...)
    "AdaBN, all layers": (1.0, None),
    "blend 0.75, all layers": (0.75, None),
    "blend 0.5, all layers": (0.5, None),
    "AdaBN, stem + 8 blocks": (1.0, 8),
    "blend 0.75, stem + 8 blocks": (0.75, 8),
    "AdaBN, stem + 4 blocks": (1.0, 4),
    "blend 0.5, stem + 4 blocks": (0.5, 4),
    "AdaBN, stem + 2 blocks": (1.0, 2),
}
CAP = 250  # photos per half at most: the benchmark runs every variant on every setting


def split_lines(name: str) -> list[tuple[str, str, Path]]:
    """(label, source, absolute path) of a split file written by train."""
    rows = []
    for line in (SPLIT / name).read_text().splitlines():
        label, source, _, rel = line.split("\t")
        rows.append((label, source, (SPLIT / rel).resolve()))
    return rows


def manifest_groups(source: str, column: str | None) -> list[tuple[str, str, Path]]:
    """(label, group, path) of every photo of a real-world source."""
    folder = DATA / "realworld" / source
    with open(folder / "manifest.csv", newline="") as handle:
        return [
            (row["class"], row[column] if column else row["file"], folder / row["file"])
            for row in csv.DictReader(handle)
        ]


def halves(rows, seed: int = 0):
    """Split (label, group, path) rows by group into two halves, in a seeded order."""
    groups = sorted({g for _, g, _ in rows})
    rng = np.random.default_rng(seed)
    first = set(rng.permutation(groups)[: len(groups) // 2])
    return capped([r for r in rows if r[1] in first]), capped(
        [r for r in rows if r[1] not in first]
    )


def capped(rows, seed: int = 0):
    """At most ``CAP`` rows, a seeded sample in the original order."""
    if len(rows) <= CAP:
        return rows
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:CAP])
    return [rows[i] for i in keep]


def bin_camera(paths: list[Path], seed: int) -> list[Image.Image]:
    """TrashNet objects on one held-out background under one blue LED cast (a fixed setting)."""
    from garbage_sorter.training.backgrounds import (
        composite,
        make_background,
        white_background_mask,
    )

    rng = np.random.default_rng(seed)
    background = make_background((384, 288), np.random.default_rng(17), split="heldout")
    h, w = background.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1 - 0.45 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 4
    led = np.array([0.55, 0.8, 1.35], np.float32)  # cold blue-white LED, weak red
    out = []
    for path in paths:
        rgb = np.asarray(load_image(path))
        placed = composite(rgb, white_background_mask(rgb), background, rng, relight=False)
        lit = placed.astype(np.float32) * led * vignette[..., None] * 0.9 + 8
        out.append(Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)))
    return out


def smart_bin(paths: list[Path]) -> list[Image.Image]:
    """TrashNet photos as the one camera of a synthetic smart bin sees them (seed 0 for both
    halves: the same camera; the sensor noise differs photo by photo)."""
    from garbage_sorter.training.backgrounds import smart_bin_set

    frames = smart_bin_set([np.asarray(load_image(p)) for p in paths], seed=0)
    return [Image.fromarray(frame) for frame in frames]


def tensors(ckpt: Checkpoint, images) -> list[torch.Tensor]:
    transform = EvalTransform(ckpt.preprocessing)
    prep = ckpt.preprocessing
    return [
        transform(im if isinstance(im, Image.Image) else load_image(im, draft=prep.resize))
        for im in images
    ]


def logits_of(model, tensors_) -> torch.Tensor:
    """``model``'s logits for preprocessed tensors, in eval mode."""
    model.eval()
    with torch.inference_mode():
        return torch.cat(
            [
                model(
                    torch.stack(tensors_[i : i + 64]).contiguous(memory_format=torch.channels_last)
                ).float()
                for i in range(0, len(tensors_), 64)
            ]
        )


def probabilities(model, tensors_, calibration) -> np.ndarray:
    """Calibrated class probabilities (softmax of logits / temperature), in eval mode."""
    return torch.softmax(logits_of(model, tensors_) / calibration["temperature"], 1).numpy()


def unsupervised(model, tensors_, calibration) -> tuple[float, float]:
    """(mean max-softmax confidence, mean prediction entropy in nats): no labels needed."""
    probs = probabilities(model, tensors_, calibration)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    return float(probs.max(1).mean()), float(entropy.mean())


def scores(model, tensors_, labels, calibration) -> tuple[float, float, float]:
    """(accuracy, share answered as sure, accuracy of the sure answers)."""
    probs = probabilities(model, tensors_, calibration)
    pred, y = probs.argmax(1), np.asarray(labels)
    sure = probs.max(1) >= calibration["threshold"]
    acc_sure = float((pred[sure] == y[sure]).mean()) if sure.any() else float("nan")
    return float((pred == y).mean()), float(sure.mean()), acc_sure


def settings(ckpt: Checkpoint, only: set[str] | None):
    """name -> (adapt tensors, adapt labels, test tensors, test labels, note)."""
    index = {c: i for i, c in enumerate(ckpt.classes)}
    trained = {str(p) for _, _, p in split_lines("train.txt")}
    out = {}

    def add(name, adapt_rows, test_rows, note, images=None):
        if only and name not in only:
            return
        t0 = time.perf_counter()
        a_img, t_img = images or ([r[2] for r in adapt_rows], [r[2] for r in test_rows])
        out[name] = (
            tensors(ckpt, a_img),
            [index[r[0]] for r in adapt_rows],
            tensors(ckpt, t_img),
            [index[r[0]] for r in test_rows],
            note,
        )
        print(
            f"{name}: {len(adapt_rows)} adaptation / {len(test_rows)} test photos "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )

    add("trashnetpp", *halves(manifest_groups("trashnetpp", "source_photo")), "new")
    tn_val = capped([r for r in split_lines("val.txt") if r[1] == "trashnet"])
    tn_test = capped(split_lines("test-trashnet.txt"))
    if not only or "bin camera" in only:
        images = (bin_camera([r[2] for r in tn_val], 1), bin_camera([r[2] for r in tn_test], 2))
        add("bin camera", tn_val, tn_test, "new (synthetic)", images)
    if not only or "smart bin" in only:
        images = (smart_bin([r[2] for r in tn_val]), smart_bin([r[2] for r in tn_test]))
        add("smart bin", tn_val, tn_test, "new (synthetic, harsh)", images)
    for source, column in (("taco", "taco_image"), ("floor-photos", None)):
        rows = [r for r in manifest_groups(source, column) if str(r[2].resolve()) not in trained]
        add(source, *halves(rows), "trained on this source")
    tn_train = [r for r in split_lines("train.txt") if r[1] == "trashnet"]
    tn_train = capped(tn_train)
    add("trashnet", tn_train, tn_test, "training domain")
    return out


def fmt(acc: float, sure: float, acc_sure: float) -> list[str]:
    return [f"{acc:.3f}", f"{sure:.0%}", f"{acc_sure:.3f}"]


def draw_labelled(labels: list[int], k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` photos per class present (all of a class with fewer)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)])


def reference_tensors(ckpt: Checkpoint) -> list[torch.Tensor]:
    """TrashNet training photos that no setting adapts on: the training domain's statistics."""
    tn_train = [r for r in split_lines("train.txt") if r[1] == "trashnet"]
    adapt_half = {r[2] for r in capped(tn_train)}  # the "trashnet" setting's adaptation half
    return tensors(ckpt, [r[2] for r in capped([r for r in tn_train if r[2] not in adapt_half], 1)])


def shift_corrected(shipped: Stats, reference: Stats, setting: Stats) -> Stats:
    """The shipped statistics moved by the setting's shift from the training domain.

    Both ``reference`` (training-domain photos) and ``setting`` are measured the same way, so
    on photos like the training ones the result is the shipped statistics: the mean moves by
    ``setting - reference``, the variance scales by ``setting / reference``.
    """
    return [
        (m + (tm - rm), v * tv / rv.clamp_min(1e-5))
        for (m, v), (rm, rv), (tm, tv) in zip(shipped, reference, setting, strict=True)
    ]


def mixture(shipped: Stats, setting: Stats, alpha: float) -> Stats:
    """The statistics of a mixture of the two distributions, ``alpha`` of the setting's.

    Unlike ``garbage_sorter.adapt.blend`` (a linear blend of means and of variances), the
    variance keeps the spread between the two means, ``alpha (1 - alpha) (setting - shipped)^2``:
    without it a blend of two far-apart distributions is narrower than either, and the layer
    amplifies what it normalises.
    """
    return [
        (
            (1 - alpha) * m + alpha * tm,
            (1 - alpha) * v + alpha * tv + alpha * (1 - alpha) * (tm - m) ** 2,
        )
        for (m, v), (tm, tv) in zip(shipped, setting, strict=True)
    ]


def sequential_blend(
    model: nn.Module, layers: list[nn.BatchNorm2d], tensors_, alpha: float, seed: int = 0
) -> Stats:
    """``alpha`` of the setting's statistics into every layer, each measured behind earlier
    layers that already normalise with the blend.

    ``setting_statistics`` measures every layer behind fully adapted earlier layers, so a blend
    of its result hands later layers inputs that match neither set of statistics. Here each
    layer normalises each batch by ``alpha * batch + (1 - alpha) * shipped`` while its batch
    statistics are averaged, so what a layer measures is what it will see once blended.
    """
    shipped = current_statistics(layers)
    sums = [[torch.zeros_like(m), torch.zeros_like(v)] for m, v in shipped]

    def hook(i: int):
        def replace(bn: nn.BatchNorm2d, inputs, output):
            x = inputs[0]
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
            sums[i][0] += mean
            sums[i][1] += var
            m = alpha * mean + (1 - alpha) * shipped[i][0]
            v = alpha * var + (1 - alpha) * shipped[i][1]
            return F.batch_norm(x, m, v, bn.weight, bn.bias, False, 0.0, bn.eps)

        return replace

    handles = [bn.register_forward_hook(hook(i)) for i, bn in enumerate(layers)]
    order = np.random.default_rng(seed).permutation(len(tensors_))
    chunks = np.array_split(order, max(1, round(len(tensors_) / 32)))
    model.eval()
    try:
        with torch.no_grad():
            for chunk in chunks:
                model(
                    torch.stack([tensors_[j] for j in chunk]).contiguous(
                        memory_format=torch.channels_last
                    )
                )
    finally:
        for handle in handles:
            handle.remove()
    n = len(chunks)
    return [
        (alpha * sm / n + (1 - alpha) * m, alpha * sv / n + (1 - alpha) * v)
        for (sm, sv), (m, v) in zip(sums, shipped, strict=True)
    ]


def tent(model: nn.Module, tensors_, calibration, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """TENT (Wang et al. 2021), one epoch: the BatchNorm scales and shifts moved to lower the
    mean prediction entropy on the unlabelled photos (Adam, batches of 32). The layers stay in
    eval mode with the statistics already adapted, as the adapted model is used afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for bn in norms for p in (bn.weight, bn.bias)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    order = np.random.default_rng(seed).permutation(len(tensors_))
    for chunk in np.array_split(order, max(1, round(len(tensors_) / 32))):
        x = torch.stack([tensors_[i] for i in chunk]).contiguous(memory_format=torch.channels_last)
        logp = torch.log_softmax(model(x).float() / calibration["temperature"], 1)
        loss = -(logp.exp() * logp).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return model.eval()


@contextlib.contextmanager
def heads_only(on: bool):
    """``adapt_model`` as it was before it could tune the network's later BatchNorm layers."""
    keep = adapt_module.MIN_TO_TUNE
    adapt_module.MIN_TO_TUNE = 10**9 if on else keep
    try:
        yield
    finally:
        adapt_module.MIN_TO_TUNE = keep


def run(args) -> None:
    ckpt = load_checkpoint(args.model or bundled_model_path())
    only = set(args.only.split(",")) if args.only else None
    if args.test:
        from adapt_choice import test_settings

        data = {
            name: (a_x, a_y, t_x, t_y, "held out")
            for name, (a_x, t_x, t_y, a_y) in test_settings(ckpt, only).items()
        }
    else:
        data = settings(ckpt, only)
    header = ["setting", "method", "photos", "accuracy", "sure", "accuracy when sure", "chosen"]
    header += ["confidence (adaptation half)", "entropy (adaptation half)"]
    rows = []
    base_model = ckpt.build()
    layers = adapted_layers(base_model, ckpt.arch, None)
    t0 = time.perf_counter()
    reference = setting_statistics(base_model, layers, reference_tensors(ckpt))
    print(f"training-domain statistics: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for name, (a_x, a_y, t_x, t_y, note) in data.items():
        n = f"{len(a_x)} / {len(t_x)}"
        acc, sure, acc_sure = scores(base_model, t_x, t_y, ckpt.calibration)
        conf, ent = unsupervised(base_model, a_x, ckpt.calibration)
        rows.append(
            [
                f"{name} ({note})",
                "base",
                n,
                *fmt(acc, sure, acc_sure),
                "",
                f"{conf:.3f}",
                f"{ent:.3f}",
            ]
        )
        base_acc = acc
        print(f"  {name} base: {acc:.3f}", file=sys.stderr)
        # Every choice below adapts to the same photos: measure their statistics once.
        t0 = time.perf_counter()
        stats = setting_statistics(base_model, layers, a_x)
        print(f"  {name} statistics: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        shipped = current_statistics(layers)
        corrected = shift_corrected(shipped, reference, stats)
        # adapt's own choice without labels (the base model's familiarity with the photos),
        # then each fixed variant.
        unlabelled = [("adapt's choice without labels", None, stats)]
        unlabelled += [(method, fixed, stats) for method, fixed in VARIANTS.items()]
        unlabelled += [
            (f"mixture {a:g}, all layers", (1.0, None), mixture(shipped, stats, a))
            for a in (0.75, 0.5)
        ]
        unlabelled += [
            (
                f"sequential blend {a:g}, all layers",
                (1.0, None),
                sequential_blend(base_model, layers, a_x, a),
            )
            for a in (0.75, 0.5, 0.25)
        ]
        unlabelled += [
            ("shift-corrected AdaBN, all layers", (1.0, None), corrected),
            ("shift-corrected blend 0.5, all layers", (0.5, None), corrected),
            ("TENT 1 epoch after AdaBN, all layers", (1.0, None), stats),
        ]
        for method, fixed, statistics in () if args.labelled_only else unlabelled:
            t0 = time.perf_counter()
            adapted = adapt_model(ckpt, Photos(unlabelled=a_x), fixed=fixed, statistics=statistics)
            if method.startswith("TENT"):
                tent(adapted.model, a_x, adapted.calibration)
            took = time.perf_counter() - t0
            if fixed == DEFAULT and statistics is stats:
                method += " (the default without a familiarity reference)"
            acc, sure, acc_sure = scores(adapted.model, t_x, t_y, adapted.calibration)
            conf, ent = unsupervised(adapted.model, a_x, adapted.calibration)
            c = adapted.choice
            blocks = "all" if c["blocks"] is None else c["blocks"]
            chose = "" if fixed else f"; chose {c['alpha']:g}/{blocks}"
            rows.append(
                [
                    name,
                    method,
                    n,
                    *fmt(acc, sure, acc_sure),
                    f"{acc - base_acc:+.3f}{chose}",
                    f"{conf:.3f}",
                    f"{ent:.3f}",
                ]
            )
            print(f"  {name} {method}: {acc:.3f} ({took:.0f} s)", file=sys.stderr)
        for k in args.per_class if args.seeds else ():
            if Counter(a_y).most_common()[-1][1] < 2:
                continue
            for before in (True, False) if args.before else (False,):
                runs, chosen, took = [], Counter(), []
                for seed in range(args.seeds):
                    picked = draw_labelled(a_y, k, seed)
                    rest = np.setdiff1d(np.arange(len(a_x)), picked)
                    photos = Photos(
                        unlabelled=[a_x[i] for i in rest],
                        labelled=[a_x[i] for i in picked],
                        labels=[a_y[i] for i in picked],
                    )
                    t0 = time.perf_counter()
                    with heads_only(before):
                        adapted = adapt_model(ckpt, photos, statistics=stats)
                    took.append(time.perf_counter() - t0)
                    runs.append(scores(adapted.model, t_x, t_y, adapted.calibration))
                    c = adapted.choice
                    blocks = "all" if c["blocks"] is None else c["blocks"]
                    cal = ", recalibrated" if "calibrated_on" in c else ""
                    chosen[f"{c['alpha']:g}/{blocks}/{c['head']}{cal}"] += 1
                acc, sure, acc_sure = np.nanmean(np.array(runs), 0)
                label = f"+{k} labelled/class (mean of {args.seeds})"
                rows.append(
                    [
                        name,
                        label + (", heads only (before tuning)" if before else ""),
                        n,
                        *fmt(acc, sure, acc_sure),
                        f"{acc - base_acc:+.3f}; "
                        + ", ".join(f"{v}x {c}" for c, v in chosen.items()),
                        "",
                        "",
                    ]
                )
                print(
                    f"  {name} +{k} before={before}: {acc:.3f} ({max(took):.0f} s)", file=sys.stderr
                )
    print(machine_line())
    print(f"\n`{command_line()}`\n")
    print(table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base checkpoint (default: the bundled model)")
    parser.add_argument(
        "--seeds", type=int, default=2, help="draws of the labelled photos (0: unlabelled only)"
    )
    parser.add_argument("--only", help="comma-separated settings to run")
    parser.add_argument(
        "--per-class",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[5, 10],
        help="labelled photos per class to draw, comma-separated (default 5,10)",
    )
    parser.add_argument("--labelled-only", action="store_true", help="skip the unlabelled variants")
    parser.add_argument(
        "--test",
        action="store_true",
        help="the settings nothing was chosen on (bench/adapt_choice.py --test's)",
    )
    parser.add_argument(
        "--before",
        action="store_true",
        help="also run the labelled draws without tuning the network (the heads-only baseline)",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
