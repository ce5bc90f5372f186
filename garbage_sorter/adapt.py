"""Adapting a model to one fixed setting: one camera, one bin, one light.

A desktop sorter lives in one place, and a photo from there differs from the training photos in
ways the network's BatchNorm statistics measure: colour cast, exposure, background, lens. Here:

1. **Unlabelled photos** of the setting re-estimate those statistics (AdaBN, Li et al. 2016):
   the BatchNorm layers' running means and variances are reset, the photos are forwarded with
   the layers in train mode and a cumulative average (``momentum=None``), and the result is
   blended with the shipped statistics, ``alpha * setting + (1 - alpha) * shipped``. ``alpha``
   and how many blocks from the input are adapted are the method's two knobs. Without labels,
   the base model's familiarity with the photos (familiarity.py) sets them: a setting whose
   photos mostly look unfamiliar is adapted in full, a familiar one keeps the shipped model,
   and a full adaptation is kept only if it makes the answers on the photos more informative
   (:func:`information`).
2. **Labelled photos** (a folder per class, the user's corrections) choose among the shipped
   model, blends, a linear head refitted on the adapted features (training's ``fit_head``,
   started from the shipped head) and, with enough of them, the network's last BatchNorm
   scales and shifts tuned with the head (:func:`tune_norms`), by accuracy on photos each
   candidate was not fitted on (k-fold). The shipped model is one candidate, so labels never
   make a setting worse by more than their own noise; with enough of them, temperature and the
   "not sure" threshold are refitted too (training's ``calibrate``).

Adaptation belongs to one setting chosen by the user, not to random uploads: on mixed photos
the re-estimated statistics describe no one setting and cost accuracy (BENCHMARKS.md, "Adapting
to one setting"). The result is a new checkpoint; the base file is never written to.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .archs import feature_map
from .images import ImageLoadError, iter_image_paths, load_image
from .model import Checkpoint, CheckpointError, head_name, load_checkpoint, save_checkpoint
from .presets import EvalTransform
from .storage import file_sha256

MIN_PHOTOS = 16  # a floor, not a measured optimum: a batch of fewer gives noisy channel variances
# (alpha, blocks): the blend weight of the setting's statistics and how many blocks after the
# stem are adapted (None: all). Without labels, the base model's familiarity with the photos
# decides (familiarity.py). A setting it finds familiar keeps the shipped statistics: on photos
# like the training ones every re-estimate cost accuracy (TrashNet -2 to -7 points, TrashNet++
# and TACO up to -16; bench/adapt.py). One it finds unfamiliar -- most photos above the
# threshold, as a new camera's light makes them -- gets UNFAMILIAR if that makes the answers
# more informative (on synthetic cameras where it cost 12-19 points, it made them less so).
FAMILIAR: tuple[float, int | None] = (0.0, None)
UNFAMILIAR: tuple[float, int | None] = (1.0, None)
# A model without a familiarity reference cannot tell: the one variant measured within a point
# of the shipped model on TrashNet (0.880 -> 0.884).
DEFAULT: tuple[float, int | None] = (0.5, None)
# What labelled photos choose among, the shipped model first: on a tie the earlier wins.
CANDIDATES: tuple[tuple[float, int | None], ...] = (
    (0.0, None),
    (0.5, 4),
    (1.0, 4),
    (0.5, None),
    (1.0, None),
)
MIN_TO_CHOOSE = 12  # labelled photos needed to choose by k-fold accuracy instead of the default
MIN_TO_CALIBRATE = 30  # ... and to refit temperature and threshold
# ... and to try tuning the last blocks' BatchNorm scales and shifts with the head
# (:func:`tune_norms`). The recipe -- the blocks after the shift score's layers, two views (the
# photo and its mirror), 10 epochs, AdamW at 3e-3 -- was chosen with 10 photos per class on
# three synthetic smart bins, a bin camera, TrashNet++ and TrashNet (BENCHMARKS.md, "Tuning
# the network on labelled photos").
MIN_TO_TUNE = 30
# Labelled photos the choice is judged on, at most (:func:`_balanced`): each candidate costs a
# pass over them, and the choice was measured with 60 (10 per class). More photos are all used
# to fit the candidate chosen.
CHOOSE_ON = 60
TUNE_EPOCHS, TUNE_LR = 10, 3e-3
TUNE_STEPS = 40  # at most, with more photos fewer epochs (:func:`_tune`)
BATCH = 32
METHOD = "adabn-blend"

ProgressFn = Callable[[str], None]


class AdaptError(ValueError):
    """Input that adaptation cannot use; ``status`` is the CLI's exit status (1 or 2)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass
class Photos:
    """Preprocessed photos of one setting: unlabelled tensors and labelled (tensor, class index)."""

    unlabelled: list[torch.Tensor] = field(default_factory=list)
    labelled: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    unreadable: int = 0


def labelled_folder(
    folder: str | os.PathLike[str], classes: Sequence[str]
) -> dict[str, list[Path]]:
    """The photos of a folder-per-class tree, by class; any subset of ``classes`` may be present.

    Raises:
        AdaptError (status 2): not a folder, a folder named after no class, or loose photos.
    """
    root = Path(folder)
    if not root.is_dir():
        raise AdaptError(f"--labelled {folder}: not a folder", 2)
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    unknown = [p.name for p in entries if p.is_dir() and p.name not in classes]
    if unknown:
        raise AdaptError(
            f"--labelled {folder}: unknown class folder(s) {', '.join(unknown)}; "
            f"use some of {', '.join(classes)}",
            2,
        )
    loose = [p.name for p in entries if p.is_file()]
    if loose:
        raise AdaptError(
            f"--labelled {folder}: {loose[0]} is not in a class folder; put each photo in a "
            f"folder named after its class ({', '.join(classes)})",
            2,
        )
    return {p.name: list(iter_image_paths([p])) for p in entries if p.is_dir()}


def read_photos(
    checkpoint: Checkpoint,
    unlabelled: Sequence[Path],
    labelled: dict[str, list[Path]] | None = None,
    progress: ProgressFn | None = None,
) -> Photos:
    """Decode and preprocess the photos as the checkpoint says; unreadable files are counted."""
    report = progress or (lambda message: None)
    prep = checkpoint.preprocessing
    transform = EvalTransform(prep)
    index = {c: i for i, c in enumerate(checkpoint.classes)}
    jobs = [(p, None) for p in unlabelled]
    jobs += [(p, index[c]) for c, paths in (labelled or {}).items() for p in paths]

    def read(job: tuple[Path, int | None]) -> torch.Tensor | None:
        try:
            return transform(load_image(job[0], draft=prep.resize))
        except ImageLoadError:
            return None

    photos = Photos()
    # PIL's decoder releases the GIL: two threads keep both cores busy.
    with ThreadPoolExecutor(2, thread_name_prefix="adapt-decode") as pool:
        for i, ((_, label), tensor) in enumerate(zip(jobs, pool.map(read, jobs), strict=True), 1):
            if tensor is None:
                photos.unreadable += 1
            elif label is None:
                photos.unlabelled.append(tensor)
            else:
                photos.labelled.append(tensor)
                photos.labels.append(label)
            if i % 50 == 0 or i == len(jobs):
                report(f"reading photos {i}/{len(jobs)}")
    return photos


def bn_groups(model: nn.Module, arch: str) -> list[list[nn.BatchNorm2d]]:
    """BatchNorm layers grouped from the input: the stem, each block, then the head's."""

    def norms(module: nn.Module) -> list[nn.BatchNorm2d]:
        return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]

    if arch == "resnet18":
        return [[model.bn1], *[norms(getattr(model, f"layer{i}")) for i in range(1, 5)]]
    return [[model._bn0], *[norms(block) for block in model._blocks], [model._bn1]]


def adapted_layers(model: nn.Module, arch: str, blocks: int | None) -> list[nn.BatchNorm2d]:
    """The layers adaptation changes: the stem and the first ``blocks`` blocks, or all (None)."""
    groups = bn_groups(model, arch)
    chosen = groups if blocks is None else groups[: blocks + 1]
    return [bn for group in chosen for bn in group]


Stats = list[tuple[torch.Tensor, torch.Tensor]]


def current_statistics(layers: Sequence[nn.BatchNorm2d]) -> Stats:
    """Copies of the layers' running (mean, variance)."""
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in layers]


def set_statistics(layers: Sequence[nn.BatchNorm2d], stats: Stats) -> None:
    for bn, (mean, var) in zip(layers, stats, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


def setting_statistics(
    model: nn.Module,
    layers: Sequence[nn.BatchNorm2d],
    tensors: Sequence[torch.Tensor],
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> Stats:
    """AdaBN: the layers' statistics re-estimated on ``tensors``; the model is left as it was.

    The photos are forwarded in a fixed shuffled order in near-equal batches, with the adapted
    layers in train mode (each normalises by its batch, as in training) and a cumulative
    average of the batch statistics; every other layer keeps its shipped statistics.
    """
    report = progress or (lambda message: None)
    before = current_statistics(layers)
    momenta = [bn.momentum for bn in layers]
    counts = [bn.num_batches_tracked.clone() for bn in layers]
    order = np.random.default_rng(seed).permutation(len(tensors))
    chunks = np.array_split(order, max(1, round(len(tensors) / BATCH)))
    model.eval()
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for i, chunk in enumerate(chunks, 1):
                model(_batch([tensors[j] for j in chunk]))
                report(f"measuring the setting {min(i * len(chunk), len(tensors))}/{len(tensors)}")
        stats = current_statistics(layers)
    finally:
        for bn, momentum, count in zip(layers, momenta, counts, strict=True):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(count)
            bn.eval()
        set_statistics(layers, before)
    return stats


def _batch(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    # channels_last: the depthwise convolutions run about twice as fast on a CPU.
    return torch.stack(list(tensors)).contiguous(memory_format=torch.channels_last)


def _batches(tensors: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``tensors`` in batches of ``BATCH``, in order."""
    for start in range(0, len(tensors), BATCH):
        yield _batch(tensors[start : start + BATCH])


def blend(source: Stats, target: Stats, alpha: float) -> Stats:
    """``alpha * target + (1 - alpha) * source``, mean and variance each."""
    return [
        ((1 - alpha) * sm + alpha * tm, (1 - alpha) * sv + alpha * tv)
        for (sm, sv), (tm, tv) in zip(source, target, strict=True)
    ]


def pooled_features(model: nn.Module, arch: str, tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """The head's input (pooled last feature map) for preprocessed tensors, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for x in _batches(tensors):
            out.append(feature_map(model, arch, x).mean((2, 3)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def head_logits(head: nn.Linear, feats: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head(torch.from_numpy(feats)).numpy()


def _fit(head: nn.Linear, feats: np.ndarray, y: np.ndarray, num_classes: int) -> nn.Linear:
    """Training's linear-head fitting, started from ``head``, on labelled features."""
    from .training.config import TrainConfig
    from .training.train import fit_head

    fitted, _ = fit_head(feats, y, feats, y, num_classes, TrainConfig(), epochs=100, init=head)
    return fitted.eval()


def out_of_fold_logits(
    head: nn.Linear, feats: np.ndarray, y: np.ndarray, num_classes: int, folds: int = 5
) -> np.ndarray:
    """Logits of a head refitted on the other folds, for every labelled photo (k-fold)."""
    logits = np.zeros((len(y), num_classes), np.float32)
    for fit_idx, held in _folds(y, folds):
        logits[held] = head_logits(_fit(head, feats[fit_idx], y[fit_idx], num_classes), feats[held])
    return logits


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def _balanced(y: np.ndarray, most: int) -> np.ndarray:
    """Indices of at most ``most`` photos, as many of each class as the classes allow: all of
    them, in order, when there are no more; else a seeded draw taking one photo of each class
    in turn."""
    if len(y) <= most:
        return np.arange(len(y))
    rng = np.random.default_rng(0)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in np.unique(y)]
    chosen: list[int] = []
    while len(chosen) < most:
        for pool in pools:
            if pool and len(chosen) < most:
                chosen.append(int(pool.pop()))
    return np.sort(np.array(chosen))


def _folds(y: np.ndarray, folds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit, held-out) indices of up to ``folds`` folds, stratified by class where every class
    has two photos or more."""
    from sklearn.model_selection import KFold, StratifiedKFold

    smallest = int(np.bincount(y)[np.unique(y)].min())
    k = max(2, min(folds, smallest))
    if smallest < 2:  # a class with one photo: plain k-fold, that photo is judged by the others
        return KFold(k, shuffle=True, random_state=0).split(y)
    return StratifiedKFold(k, shuffle=True, random_state=0).split(y, y)


def _halves(model: nn.Module, arch: str) -> tuple[Callable, Callable, list[nn.Module]]:
    """(first part, last part to logits, the last part's modules) of the network, split after
    the last layer familiarity.py reads the style at (EfficientNet-Lite0: after block 10 of 16;
    ResNet-18: before layer3), so that tuning the last part leaves the shift score as it was."""
    from .familiarity import style_layers

    if arch == "resnet18":
        m = model

        def first(x: torch.Tensor) -> torch.Tensor:
            return m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))

        def second(x: torch.Tensor) -> torch.Tensor:
            return m.fc(m.layer4(m.layer3(x)).mean((2, 3)))

        return first, second, [m.layer3, m.layer4]
    middle = 1 + max(int(n.split(".")[1]) for n in style_layers(arch) if n.startswith("_blocks."))

    def first(x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(model._bn0(model._conv_stem(x)))
        for block in model._blocks[:middle]:
            x = block(x)
        return x

    def second(x: torch.Tensor) -> torch.Tensor:
        for block in model._blocks[middle:]:
            x = block(x)
        return model._fc(nn.functional.relu6(model._bn1(model._conv_head(x))).mean((2, 3)))

    return first, second, [*model._blocks[middle:], model._bn1]


def first_views(model: nn.Module, arch: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The output of the network's first part (:func:`_halves`) for every photo and its mirror,
    in that order (rows ``2 i`` and ``2 i + 1`` are photo ``i``). Tuning leaves the first part
    as it is, so the pass over the judged photos serves both the checks and the final tuning
    (:func:`adapt_model` runs the other photos only when tuning wins)."""
    model.eval()
    first, _, _ = _halves(model, arch)
    with torch.no_grad():
        views = [v for x in tensors for v in (x, x.flip(2))]
        return torch.cat([first(b) for b in _batches(views)])


def _view_rows(photos: np.ndarray) -> torch.Tensor:
    """The rows of :func:`first_views` that hold these photos and their mirrors."""
    return torch.from_numpy(np.stack([2 * photos, 2 * photos + 1], 1).reshape(-1))


def tune_norms(
    model: nn.Module,
    arch: str,
    tensors: Sequence[torch.Tensor],
    labels: Sequence[int],
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """Fine-tune, on labelled photos, the BatchNorm scales and shifts of the network's last
    blocks and the head; everything else, the running statistics included, stays. Returns
    ``model``.

    A colour cast or a dark bin changes more than a linear head on the shipped features can
    undo; a few thousand scales and shifts are what a few dozen photos can set without learning
    them by heart. The first part runs once on each photo and its mirror; only the last is
    trained (in eval mode: the shipped statistics normalise). The layers the shift score reads
    are all in the first part, so the base model's familiarity reference still holds.
    """
    return _tune(model, arch, first_views(model, arch, tensors), labels, seed, progress)


def _tune(
    model: nn.Module,
    arch: str,
    cached: torch.Tensor,
    labels: Sequence[int],
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """:func:`tune_norms` on the first part's output already computed (:func:`first_views`).

    ``TUNE_EPOCHS`` epochs, fewer where they would take more than ``TUNE_STEPS`` steps: the
    recipe was chosen with 60 photos (40 steps), and a user's hundreds of corrections should
    not make Retrain take minutes."""
    model.eval()
    _, second, tuned = _halves(model, arch)
    y = torch.tensor([label for label in labels for _ in range(2)])
    head = getattr(model, head_name(arch))
    params = [
        p
        for module in tuned
        for bn in module.modules()
        if isinstance(bn, nn.BatchNorm2d)
        for p in (bn.weight, bn.bias)
    ] + list(head.parameters())
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    batches = -(-len(cached) // BATCH)
    epochs = max(1, min(TUNE_EPOCHS, TUNE_STEPS // batches))
    optimizer = torch.optim.AdamW(params, TUNE_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches)
    gen = torch.Generator().manual_seed(seed)
    report = progress or (lambda message: None)
    try:
        for epoch in range(epochs):
            report(f"tuning on {len(cached) // 2} labelled photos, epoch {epoch + 1}/{epochs}")
            order = torch.randperm(len(cached), generator=gen)
            for start in range(0, len(cached), BATCH):
                batch = order[start : start + BATCH]
                x = cached[batch].contiguous(memory_format=torch.channels_last)
                loss = nn.functional.cross_entropy(second(x), y[batch], label_smoothing=0.1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        for p in params:
            p.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
    return model.eval()


def tuned_out_of_fold_logits(
    model: nn.Module,
    arch: str,
    cached: torch.Tensor,
    y: np.ndarray,
    num_classes: int,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Logits of a copy of ``model`` tuned (:func:`tune_norms`) on the other half, for every
    labelled photo (2-fold: each tuning costs seconds, and half the photos judge it cautiously).
    ``cached``: the photos' :func:`first_views` through ``model``."""
    import copy

    report = progress or (lambda message: None)
    logits = np.zeros((len(y), num_classes), np.float32)
    for k, (fit_idx, held) in enumerate(_folds(y, 2), 1):
        tuned = _tune(
            copy.deepcopy(model),
            arch,
            cached[_view_rows(fit_idx)],
            y[fit_idx],
            progress=lambda m, k=k: report(f"check {k}/2: {m}"),
        )
        _, second, _ = _halves(tuned, arch)
        with torch.inference_mode():
            logits[held] = second(cached[torch.from_numpy(2 * held)]).float().numpy()
    return logits


@dataclass
class Adapted:
    """An adapted network with its calibration and a record of how it was chosen."""

    model: nn.Module
    calibration: dict[str, float]
    choice: dict[str, Any]
    familiarity: dict[str, Any] | None = None  # the base's, or one fitted on the setting


def information(logits: np.ndarray, temperature: float) -> float:
    """The mutual information between photo and answer, ``H(mean p) - mean H(p)`` in nats, of
    calibrated probabilities: high when each answer is confident *and* the answers differ from
    photo to photo (the criterion of SHOT, Liang et al. 2020). A model that a new light has
    pushed towards one or two classes scores low however confident it is."""
    z = torch.from_numpy(np.asarray(logits, np.float32)) / temperature
    p = torch.softmax(z, 1)
    logp = torch.log_softmax(z, 1)
    mean = p.mean(0)
    marginal = -(mean * mean.clamp_min(1e-12).log()).sum()
    return float(marginal + (p * logp).sum(1).mean())


def shift_scores(
    model: nn.Module, arch: str, reference: dict[str, Any], tensors: Sequence[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, familiarity shift scores) of ``model`` for preprocessed tensors, in one pass."""
    from .familiarity import ShiftScore

    scorer = ShiftScore(model, arch, reference).eval()
    logits, shifts = [], []
    try:
        with torch.inference_mode():
            for x in _batches(tensors):
                out, shift = scorer(x)
                logits.append(out.float())
                shifts.append(shift)
    finally:
        scorer.style.remove()
    return torch.cat(logits).numpy(), torch.cat(shifts).numpy()


def unlabelled_choice(
    model: nn.Module,
    checkpoint: Checkpoint,
    tensors: Sequence[torch.Tensor],
    apply: Callable[[float, int | None], None],
    progress: ProgressFn | None = None,
) -> tuple[tuple[float, int | None], dict[str, Any], np.ndarray | None]:
    """(alpha, blocks) for photos without labels, applied to ``model``, a record of why, and
    the photos' style through the adapted network when it was adapted (for its reference).

    The base model (``model`` with the shipped statistics) judges how familiar the photos look.
    Familiar ones keep the shipped statistics. Unfamiliar ones are adapted (``UNFAMILIAR``), and
    the adaptation kept only if it makes the answers on the photos more informative
    (:func:`information`): on settings where re-estimating every layer cost 12-16 points the
    shipped model's answers were the more informative, on those where it gained the adapted
    model's were (BENCHMARKS.md, "Can unlabelled photos tell whether adapting helps?").
    """
    if checkpoint.familiarity is None:
        apply(*DEFAULT)
        chosen_by = "default (no labels, no familiarity reference to judge by)"
        return DEFAULT, {"chosen_by": chosen_by}, None
    report = progress or (lambda message: None)
    report("checking how familiar the photos look")
    logits, shifts = shift_scores(model, checkpoint.arch, checkpoint.familiarity, tensors)
    share = float((shifts > 1).mean())
    record: dict[str, Any] = {
        "chosen_by": f"no labels: {share:.0%} of the photos look unfamiliar to the base model",
        "unfamiliar_share": round(share, 4),
        "median_shift": round(float(np.median(shifts)), 4),
    }
    if share <= 0.5:
        return FAMILIAR, record, None
    from .familiarity import style_of

    apply(*UNFAMILIAR)
    report("checking the adapted model's answers")
    adapted_logits, style = style_of(model, checkpoint.arch, _batches(tensors))
    temperature = float(checkpoint.calibration.get("temperature", 1.0))
    before = information(logits, temperature)
    after = information(adapted_logits, temperature)
    record["information"] = {"shipped": round(before, 4), "adapted": round(after, 4)}
    if after > before:
        return UNFAMILIAR, record, style
    apply(*FAMILIAR)
    record["chosen_by"] += (
        f", but adapting made its answers less informative ({before:.2f} -> {after:.2f} nats): "
        "kept the shipped model"
    )
    record["kept_shipped"] = True
    return FAMILIAR, record, None


def adapt_model(
    checkpoint: Checkpoint,
    photos: Photos,
    *,
    fixed: tuple[float, int | None] | None = None,
    statistics: Stats | None = None,
    progress: ProgressFn | None = None,
) -> Adapted:
    """Adapt ``checkpoint``'s network to the setting the photos show.

    Args:
        fixed: (alpha, blocks) to use instead of choosing: the blend weight of the setting's
            statistics, and how many blocks after the stem are adapted (None: every layer).
            Without it they are chosen by the labelled photos when there are at least
            ``MIN_TO_CHOOSE`` of two classes or more, else as below.
        statistics: the setting's statistics of every BatchNorm layer, already measured with
            :func:`setting_statistics` on these photos (to try several choices on one setting).

    Without ``fixed`` and without enough labelled photos to choose, the base model's shift
    scores of the photos choose (``FAMILIAR`` or ``UNFAMILIAR``; ``DEFAULT`` for a model without
    a familiarity reference).
    """
    report = progress or (lambda message: None)
    arch, classes = checkpoint.arch, checkpoint.classes
    model = checkpoint.build().to(memory_format=torch.channels_last)
    layers = adapted_layers(model, arch, None)
    source = current_statistics(layers)
    # Labelled photos are photos of the setting too: they count towards its statistics. A
    # layer's statistics depend only on the layers before it, so one pass serves every choice
    # of how many blocks to adapt.
    target = statistics or setting_statistics(
        model, layers, photos.unlabelled + photos.labelled, report
    )

    def apply(alpha: float, blocks: int | None) -> None:
        n = len(adapted_layers(model, arch, blocks))
        set_statistics(layers, blend(source[:n], target[:n], alpha) + source[n:])

    head = getattr(model, head_name(arch))
    calibration = dict(checkpoint.calibration)
    y = np.array(photos.labels, dtype=np.int64)
    if fixed is not None:
        apply(*fixed)
        choice = {"alpha": fixed[0], "blocks": fixed[1], "head": "original", "chosen_by": "given"}
        return _finish(model.eval(), checkpoint, photos, calibration, choice, report)
    if len(y) < MIN_TO_CHOOSE or len(np.unique(y)) < 2:
        (alpha, blocks), choice, style = unlabelled_choice(
            model, checkpoint, photos.unlabelled + photos.labelled, apply, report
        )
        choice = {"alpha": alpha, "blocks": blocks, "head": "original", **choice}
        return _finish(model.eval(), checkpoint, photos, calibration, choice, report, style)

    # Candidates in order of caution: on a tie the earlier (closer to the shipped model) wins.
    # They are judged on at most CHOOSE_ON photos; the one chosen is then fitted on all.
    on = _balanced(y, CHOOSE_ON)
    judged, yj = [photos.labelled[i] for i in on], y[on]
    report(f"choosing with {len(on)} labelled photos")
    candidates = []
    for alpha, blocks in CANDIDATES:
        apply(alpha, blocks)
        feats = pooled_features(model, arch, judged)
        candidates.append((alpha, blocks, "original", head_logits(head, feats), feats))
    for alpha, blocks, _, _, feats in list(candidates):
        oof = out_of_fold_logits(head, feats, yj, len(classes))
        candidates.append((alpha, blocks, "refitted", oof, feats))
    scores = [float((c[3].argmax(1) == yj).mean()) for c in candidates]
    alpha, blocks, kind, logits, feats = candidates[int(np.argmax(scores))]  # first of ties
    duel = None
    if len(yj) >= MIN_TO_TUNE:
        # Tuning is judged on two folds (each costs seconds), so against the best of the others
        # on the same two folds: both fitted on half the photos, judged on the other half.
        apply(*FAMILIAR)
        views = first_views(model, arch, judged)
        tuned = tuned_out_of_fold_logits(model, arch, views, yj, len(classes), report)
        rival = (
            logits if kind == "original" else out_of_fold_logits(head, feats, yj, len(classes), 2)
        )
        duel = {"best other": _accuracy(rival, yj), "tuned": _accuracy(tuned, yj)}
        candidates.append((*FAMILIAR, "tuned", tuned, None))
        scores.append(duel["tuned"])
        if duel["tuned"] > duel["best other"]:  # on a tie the untuned one wins
            alpha, blocks, kind, logits, feats = candidates[-1]
    apply(alpha, blocks)
    if kind == "refitted":
        if len(on) < len(y):
            report(f"fitting the head on all {len(y)} labelled photos")
            feats = pooled_features(model, arch, photos.labelled)
        head.load_state_dict(_fit(head, feats, y, len(classes)).state_dict())
    elif kind == "tuned":
        rest = np.setdiff1d(np.arange(len(y)), on)  # the photos the checks did not need
        if len(rest):
            views = torch.cat([views, first_views(model, arch, [photos.labelled[i] for i in rest])])
        _tune(model, arch, views, y[np.r_[on, rest]], progress=report)
    judged_on = f"{len(on)} of {len(y)}" if len(on) < len(y) else f"{len(y)}"
    choice = {
        "alpha": alpha,
        "blocks": blocks,
        "head": kind,
        "chosen_by": f"{judged_on} labelled photos, k-fold accuracy",
        "candidates": [
            {"alpha": c[0], "blocks": c[1], "head": c[2], "accuracy": score}
            for c, score in zip(candidates, scores, strict=True)
        ],
    }
    if duel is not None:
        choice["two_fold_accuracy"] = duel
    # The shipped model keeps its own calibration, fitted on hundreds of validation photos; a
    # refit on a few dozen moved TrashNet's threshold so that its sure answers fell from 0.957
    # to 0.90 right, and TACO's so that it answered 2% of photos (bench/adapt.py).
    shipped = alpha == 0.0 and kind == "original"
    if len(yj) >= MIN_TO_CALIBRATE and not shipped:
        from .training.report import calibrate

        target_precision = float(checkpoint.config.get("target_precision", 0.95))
        calibration = calibrate(logits, yj, target_precision)
        choice["calibrated_on"] = len(yj)
    return _finish(model.eval(), checkpoint, photos, calibration, choice, report)


def _finish(
    model: nn.Module,
    checkpoint: Checkpoint,
    photos: Photos,
    calibration: dict[str, float],
    choice: dict[str, Any],
    report: ProgressFn,
    style: np.ndarray | None = None,
) -> Adapted:
    """The adapted model with its familiarity reference: the base's where the statistics were
    kept (the style layers are unchanged), else one fitted on the setting's photos (their
    ``style`` through ``model``, measured here unless given)."""
    familiarity = checkpoint.familiarity
    if familiarity is not None and choice["alpha"] != 0.0:
        from .familiarity import fit_setting_record, style_of

        report("measuring what the setting looks like")
        if style is None:
            style = style_of(model, checkpoint.arch, _batches(photos.unlabelled + photos.labelled))[
                1
            ]
        familiarity = fit_setting_record(checkpoint.arch, style)
    return Adapted(model, calibration, choice, familiarity)


def adapt(
    out: str | os.PathLike[str],
    photos: Sequence[str | os.PathLike[str]] = (),
    *,
    base: str | os.PathLike[str] | None = None,
    labelled: str | os.PathLike[str] | None = None,
    newest: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Adapt ``base`` (default: the bundled model) to one setting and write the result to ``out``.

    ``photos``: unlabelled photos of the setting (files or folders, walked like ``classify``);
    ``labelled``: a folder per class of labelled photos from the same setting; ``newest``: use
    at most that many of each class, the last by name (the app's corrections are named by time).

    Returns:
        The adaptation record stored in the checkpoint (``config["adaptation"]``).

    Raises:
        AdaptError: unusable input, with the CLI's exit status (2: usage, 1: unusable files).
    """
    from .classifier import bundled_model_path

    report = progress or (lambda message: None)
    base_path = Path(base) if base else bundled_model_path()
    if not photos and labelled is None:
        raise AdaptError("give photos of the setting, --labelled DIR, or both", 2)
    if base_path.suffix.lower() == ".onnx":
        raise AdaptError(
            f"{base_path}: an ONNX model cannot be adapted; give the .pt checkpoint it was "
            "exported from",
            2,
        )
    if Path(out).resolve() == base_path.resolve():
        raise AdaptError(f"--out {out}: that is the base model; write the adapted one elsewhere", 2)
    try:
        checkpoint = load_checkpoint(base_path)
    except CheckpointError as exc:
        raise AdaptError(str(exc), 1) from None
    by_class = labelled_folder(labelled, checkpoint.classes) if labelled is not None else {}
    left_out = 0
    if newest is not None:
        left_out = sum(max(0, len(paths) - newest) for paths in by_class.values())
        by_class = {c: paths[max(0, len(paths) - newest) :] for c, paths in by_class.items()}
    unlabelled = list(iter_image_paths(photos))
    found = len(unlabelled) + sum(len(v) for v in by_class.values())
    if not found:
        where = [str(p) for p in photos] + ([str(labelled)] if labelled is not None else [])
        raise AdaptError("no photos found in " + ", ".join(where), 1)
    read = read_photos(checkpoint, unlabelled, by_class, report)
    readable = len(read.unlabelled) + len(read.labelled)
    if readable < MIN_PHOTOS:
        raise AdaptError(
            f"only {readable} readable photos ({read.unreadable} could not be read); adapting "
            f"needs at least {MIN_PHOTOS} photos of the setting",
            1,
        )
    adapted = adapt_model(checkpoint, read, progress=report)
    record = {
        "method": METHOD,
        **adapted.choice,
        "unlabelled_photos": len(read.unlabelled),
        "labelled_photos": len(read.labelled),
        "labelled_per_class": {
            c: int(n)
            for c, n in zip(
                checkpoint.classes,
                np.bincount(read.labels, minlength=len(checkpoint.classes)),
                strict=True,
            )
            if n
        },
        "unreadable_photos": read.unreadable,
        "older_labelled_left_out": left_out,
        "base_model": str(base_path),
        "base_sha256": file_sha256(base_path)[:16],
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    half = any(
        v.dtype == torch.float16 for v in checkpoint.state_dict.values() if v.is_floating_point()
    )
    report(f"writing {out}")
    save_checkpoint(
        out,
        adapted.model,
        arch=checkpoint.arch,
        classes=checkpoint.classes,
        preprocessing=checkpoint.preprocessing,
        calibration=adapted.calibration,
        config={**checkpoint.config, "adaptation": record},
        metrics={"adaptation": record},
        half=half,
        familiarity=adapted.familiarity,
    )
    return record
