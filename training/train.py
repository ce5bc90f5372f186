"""Train a Garbage Sorter model: the torchvision-reference shape on top of the core.

``main(config, on_progress)`` runs one training: data audit and split, model, the loop with
early stopping, calibration, the reports, checkpoints written atomically. The terminal maps the
progress callback to a progress bar, the desktop app to a Qt signal; nothing here knows either.
Device and precision are chosen once; the loop has no device branches. It also runs under
``torchrun`` with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from garbage_sorter.archs import ARCHS, feature_map
from garbage_sorter.images import ImageLoadError, load_image
from garbage_sorter.model import (
    CheckpointError,
    build_model,
    head_name,
    load_checkpoint,
    save_checkpoint,
)
from garbage_sorter.presets import (
    EvalTransform,
    Preprocessing,
    default_preprocessing,
    train_transform,
)
from garbage_sorter.storage import atomic_write, data_dir

from . import data as D
from .config import TrainConfig, add_config_options

# Training photos the familiarity reference is measured on at most: a sample of a few hundred
# fixes the mean and the shrunk covariance well enough, and a bigger one costs a longer pass.
FAMILIARITY_PHOTOS = 800


class Cancelled(Exception):
    """The user asked to stop; nothing already on disk was changed."""


@dataclass
class Progress:
    """One report from a running training, for a progress bar or a log."""

    stage: str  # audit | features | train | evaluate | calibrate | done
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    message: str = ""
    eta_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    out: Path
    best: Path
    metrics: dict[str, Any]


ProgressFn = Callable[[Progress], None]


# --------------------------------------------------------------------------------------------
# Data


class SampleDataset(torch.utils.data.Dataset):
    """Samples -> (image tensor, class index). A photo that fails to load is replaced by a
    neighbour rather than killing an hour of training; the audit already reported it."""

    def __init__(self, samples: Sequence[D.Sample], classes: Sequence[str], transform, draft: int):
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        for offset in range(len(self.samples)):
            sample = self.samples[(i + offset) % len(self.samples)]
            try:
                image = load_image(sample.path, draft=self.draft)
            except ImageLoadError:
                continue
            return self.transform(image), self.index[sample.label]
        raise RuntimeError("no readable image in the dataset")


class ToUnit:
    """Eval transform without normalisation: float tensor in [0, 1] (normalised on the device)."""

    def __init__(self, prep: Preprocessing):
        self.inner = EvalTransform(
            Preprocessing(prep.resize, prep.crop, (0.0,) * 3, (1.0,) * 3, prep.interpolation)
        )

    def __call__(self, image):
        return self.inner(image)


def normalizer(prep: Preprocessing, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


def prepare_data(
    config: TrainConfig, out: Path, log: Callable[[str], None]
) -> tuple[dict, list[str]]:
    """Find, audit, clean and split the data (or reuse a saved split). Returns (splits, classes)."""
    split_dir = Path(config.splits) if config.splits else out / "splits"
    if config.resume or config.splits:
        if (split_dir / "train.txt").exists():
            splits = D.load_split(split_dir)
            classes = sorted({s.label for part in splits.values() for s in part})
            log(f"Reusing the split in {split_dir}")
            if split_dir != out / "splits":
                D.save_split(splits, out / "splits")
            return splits, classes
        if config.splits:
            raise D.DataSourceError(f"no saved split in {split_dir}")
    roots: list[tuple[Path, str | None]] = [(Path(p), None) for p in config.data]
    if config.kaggle:
        roots.append((D.kaggle_download(config.kaggle), "kaggle"))
    if not roots:
        raise D.DataSourceError("no data: give --data DIR (a folder per class) or --kaggle")
    samples: list[D.Sample] = []
    for root, source in roots:
        if not root.is_dir():
            raise D.DataSourceError(f"{root}: no such folder")
        found = D.scan_folder(root, source)
        if not found:
            raise D.DataSourceError(f"{root}: no class folders with images found")
        samples += found
    audit = D.audit(samples)
    report = audit.format()
    log(report)
    atomic_write(out / "audit.txt", report + "\n")
    atomic_write(out / "audit.json", json.dumps(audit.to_dict(), indent=1) + "\n")
    samples = D.clean(samples, audit)
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise D.DataSourceError("need at least two classes with images")
    splits = D.split(samples, fractions=tuple(config.split_fractions), seed=config.seed)
    D.save_split(splits, out / "splits")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    log(f"Split (seed {config.seed}, groups kept whole): {sizes}")
    return splits, classes


# --------------------------------------------------------------------------------------------
# Model helpers


def resolve_model_choice(config: TrainConfig, log: Callable[[str], None]) -> tuple[str, str]:
    """Turn ``weights='auto'`` into something that can be had here, saying what was chosen."""
    arch, weights = config.arch, config.weights
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if weights != "auto":
        return arch, weights
    if config.mode == "head":
        from garbage_sorter.classifier import bundled_model_path

        bundled = bundled_model_path()
        if bundled.exists() and load_checkpoint(bundled).arch == arch:
            log(f"Head mode: reusing the bundled model's {arch} backbone")
            return arch, str(bundled)
    if arch.startswith("efficientnet_lite"):
        return arch, "imagenet"
    try:
        build_model(arch, 2, "imagenet")
        return arch, "imagenet"
    except RuntimeError as exc:
        log(f"{exc}\nTraining {arch} from random initialisation instead.")
        return arch, "none"


def features_of(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features (the input of the classification head)."""
    return feature_map(model, arch, x).mean((2, 3))


def frozen_modules(model: nn.Module, arch: str, blocks: int) -> list[nn.Module]:
    """The stem and the first ``blocks`` blocks (EfficientNet-Lite: MBConv blocks, 16 in Lite0;
    ResNet-18: its four layers).

    Freezing them keeps the pretrained low-level features intact (fine-tuning on a narrow
    dataset distorts them, Kumar et al. 2022) and, on a CPU, skips the backward pass through the
    high-resolution depthwise convolutions that dominates a step: Lite0 trains about ten times
    faster with its first 8 blocks frozen (measured on 2 cores, see BENCHMARKS.md).
    """
    if blocks <= 0:
        return []
    if arch == "resnet18":
        return [
            model.conv1,
            model.bn1,
            *[getattr(model, f"layer{i}") for i in range(1, min(blocks, 4) + 1)],
        ]
    return [model._conv_stem, model._bn0, *model._blocks[:blocks]]


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Train mode, except frozen parts keep their BatchNorm statistics."""
    model.train()
    for module in frozen:
        module.eval()


def head_of(model: nn.Module, arch: str) -> nn.Linear:
    return getattr(model, head_name(arch))


def cache_dir() -> Path:
    return Path(os.environ.get("GARBAGE_SORTER_CACHE_DIR") or data_dir() / "cache")


def cached_features(
    model: nn.Module,
    arch: str,
    model_key: str,
    samples: Sequence[D.Sample],
    prep: Preprocessing,
    device: torch.device,
    batch_size: int,
    report: ProgressFn,
    should_stop: Callable[[], bool],
) -> np.ndarray:
    """Backbone features for ``samples``, from a disk cache keyed by file content and model.

    Head-only retraining is dominated by the backbone's forward pass; with the cache, a second
    retrain (say, after a few corrections) only computes features of new photos.
    """
    import hashlib

    path = cache_dir() / f"features-{model_key}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        try:
            with np.load(path) as stored:
                cache = {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError):
            cache = {}  # a damaged cache is rebuilt, never trusted
    keys = [hashlib.sha256(Path(s.path).read_bytes()).hexdigest()[:32] for s in samples]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    if todo:
        norm = normalizer(prep, device)
        loader = torch.utils.data.DataLoader(
            SampleDataset(
                [samples[i] for i in todo],
                sorted({s.label for s in samples}),
                ToUnit(prep),
                prep.resize,
            ),
            batch_size=batch_size,
            num_workers=1,
            persistent_workers=False,
        )
        model.eval()
        done, t0 = 0, time.perf_counter()
        with torch.inference_mode():
            for images, _ in loader:
                if should_stop():
                    raise Cancelled()
                x = norm(images.to(device)).contiguous(memory_format=torch.channels_last)
                feats = features_of(model, arch, x).float().cpu().numpy()
                for f in feats:
                    cache[keys[todo[done]]] = f.astype(np.float16)
                    done += 1
                rate = done / (time.perf_counter() - t0)
                report(
                    Progress(
                        "features",
                        step=done,
                        steps=len(todo),
                        message=f"features {done}/{len(todo)}",
                        eta_seconds=(len(todo) - done) / max(rate, 1e-6),
                    )
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        from garbage_sorter.storage import atomic_save

        atomic_save(path, lambda handle: np.savez(handle, **cache))
    stacked = np.stack([cache[k].astype(np.float32) for k in keys])
    if not np.isfinite(stacked).all():
        raise ValueError(
            "the backbone's features overflow (infinite or NaN values): this model cannot be "
            "trained in head mode; use --mode full"
        )
    return stacked


def fit_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    weights: np.ndarray | None = None,
    epochs: int = 300,
    init: nn.Linear | None = None,
) -> tuple[nn.Linear, float]:
    """Train a linear head on cached features (full batch AdamW); returns (head, val accuracy).

    ``init``: start from this head's weights instead of a random one (adapting a trained model
    to a few labelled photos starts from the head it has).
    """
    torch.manual_seed(config.seed)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y).long()
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y).long()
    head = nn.Linear(x.shape[1], num_classes)
    if init is not None:
        head.load_state_dict({k: v.detach().float().cpu() for k, v in init.state_dict().items()})
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=config.lr * 10, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    w = None if weights is None else torch.from_numpy(weights).float()
    best, best_state = -1.0, None
    for epoch in range(epochs):
        head.train()
        logits = head(F.dropout(x, 0.2))
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing, reduction="none")
        loss = (loss * w).sum() / w.sum() if w is not None else loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sched.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            with torch.no_grad():
                acc = (head(vx).argmax(1) == vy).float().mean().item() if len(vy) else 0.0
            if acc >= best:
                best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head, best


# --------------------------------------------------------------------------------------------
# The loop


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer,
    scheduler,
    *,
    device: torch.device,
    ctx,
    norm,
    epoch: int,
    epochs: int,
    config: TrainConfig,
    teacher: tuple[nn.Module, Callable, int] | None,
    report: ProgressFn,
    should_stop: Callable[[], bool],
    step_offset: int = 0,
    frozen: Sequence[nn.Module] = (),
) -> dict[str, float]:
    """One pass over ``loader``. With a teacher, the loss mixes the true labels with the
    teacher's softened predictions on exactly the same augmented batch (function matching)."""
    set_train_mode(model, frozen)
    total_loss, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    steps = len(loader)
    for step, (images, targets) in enumerate(loader):
        if should_stop():
            raise Cancelled()
        if config.max_steps is not None and step_offset + step >= config.max_steps:
            break
        images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with ctx:
            logits = model(norm(images))
            loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
            if teacher is not None:
                t_model, t_norm, t_size = teacher
                with torch.no_grad():
                    t_in = (
                        images
                        if images.shape[-1] == t_size
                        else F.interpolate(
                            images,
                            size=(t_size, t_size),
                            mode="bilinear",
                            antialias=True,
                            align_corners=False,
                        )
                    )
                    t_logits = t_model(t_norm(t_in))
                temp = config.distill_temperature
                kd = (
                    F.kl_div(
                        F.log_softmax(logits / temp, 1),
                        F.log_softmax(t_logits.float() / temp, 1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    * temp
                    * temp
                )
                loss = config.distill_alpha * kd + (1 - config.distill_alpha) * loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # .item() syncs; once per step is cheap next to a CPU step and fine on a GPU at this size.
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        elapsed = time.perf_counter() - t0
        report(
            Progress(
                "train",
                epoch=epoch,
                epochs=epochs,
                step=step + 1,
                steps=steps,
                message=f"epoch {epoch + 1}/{epochs} loss {total_loss / seen:.3f}",
                eta_seconds=elapsed / (step + 1) * (steps - step - 1)
                + elapsed / (step + 1) * steps * (epochs - epoch - 1),
                metrics={"images_per_second": seen / elapsed},
            )
        )
    elapsed = time.perf_counter() - t0
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "images_per_second": seen / max(elapsed, 1e-9),
        "seconds": elapsed,
    }


def evaluate(
    model: nn.Module, loader, device: torch.device, ctx, norm
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets over ``loader`` (eval mode, no gradients)."""
    model.eval()
    all_logits, all_targets = [], []
    with torch.inference_mode(), ctx:
        for images, targets in loader:
            images = images.to(device).to(memory_format=torch.channels_last)
            all_logits.append(model(norm(images)).float().cpu())
            all_targets.append(targets)
    if not all_logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy()


def score_by_source(
    logits: np.ndarray, targets: np.ndarray, samples: Sequence[D.Sample]
) -> dict[str, float]:
    """Accuracy overall and per data source; the model is selected on the mean over sources so
    a small real-world source counts as much as the big studio one."""
    pred = logits.argmax(1) if len(logits) else np.zeros(0, int)
    scores = {"acc": float((pred == targets).mean()) if len(targets) else 0.0}
    sources = sorted({s.source for s in samples})
    for source in sources:
        mask = np.array([s.source == source for s in samples])
        if mask.any():
            scores[f"acc_{source}"] = float((pred[mask] == targets[mask]).mean())
    per = [scores[f"acc_{s}"] for s in sources if f"acc_{s}" in scores]
    scores["score"] = float(np.mean(per)) if per else scores["acc"]
    return scores


class WarmupCosine:
    """Linear warm-up to the peak learning rate, then a cosine down to ``lr_min``."""

    def __init__(self, optimizer, total: int, warmup: int, lr_min_ratio: float):
        self.optimizer, self.total, self.warmup, self.floor = (
            optimizer,
            max(total, 1),
            warmup,
            lr_min_ratio,
        )
        self.peaks = [g["lr"] for g in optimizer.param_groups]
        self.count = 0
        self._apply()

    def _factor(self) -> float:
        if self.count < self.warmup:
            return (self.count + 1) / (self.warmup + 1)
        t = min(1.0, (self.count - self.warmup) / max(self.total - self.warmup, 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * self._factor()

    def step(self) -> None:
        self.count += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = int(state["count"])
        self._apply()


# --------------------------------------------------------------------------------------------
# Entry points


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def default_out_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return data_dir() / "runs" / stamp


def main(
    config: TrainConfig,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Run one training as ``config`` says. Raises ``Cancelled`` if ``should_stop()`` turns true.

    On cancel or failure the files already written (an earlier best checkpoint, the bundled
    model) are untouched: every checkpoint is replaced atomically. The stages below run in this
    order; under torchrun only rank 0 audits, evaluates and writes.
    """
    run = start_run(config, on_progress, should_stop)
    config = run.config
    splits, classes = load_data(run)
    arch, weights, ingredients = choose_model(run, classes)
    model, prep = build_start_model(arch, weights, classes, run.log)

    history: list[dict[str, Any]] = []
    feats: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    if config.mode == "head" or config.linear_probe_epochs > 0:
        feats, ys, val_acc = linear_probe(run, model, arch, weights, prep, splits, classes)
        history.append({"epoch": 0, "phase": "linear-probe", "val_acc": val_acc})
    # The weights fine-tuning starts from: WiSE-FT averages back towards them at the end.
    probe_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}

    model = model.to(run.device, memory_format=torch.channels_last)
    meta = dict(arch=arch, classes=classes, preprocessing=prep, config=config.to_dict())
    epochs_run = 0
    if config.mode == "full":
        epochs_run, history, probe_state = fine_tune(
            run, model, meta, splits, history=history, probe_state=probe_state
        )
    if run.rank != 0:
        dist.barrier()
        return RunResult(run.out, run.best_path, {})

    if config.mode == "head":  # the probed head is the trained model
        save_checkpoint(
            run.best_path, model, **meta, metrics={"history": history}, half=config.half_checkpoint
        )
    model = final_model(run, probe_state, ingredients)
    calibration, metrics = calibrate_and_test(run, model, meta, splits, feats, ys, history)
    metrics["epochs_run"] = epochs_run
    meta["familiarity"] = familiarity_reference(run, model, meta, splits, weights)
    save_result(run, model, meta, calibration, metrics)
    if run.world > 1:
        dist.barrier()
    return RunResult(run.out, run.best_path, metrics)


# --------------------------------------------------------------------------------------------
# The stages of main


@dataclass
class Run:
    """Where and how one training runs: what every stage of :func:`main` reads."""

    config: TrainConfig  # on resume, the config saved in the run folder
    out: Path
    rank: int  # this process under torchrun (0 when alone)
    world: int
    device: torch.device
    ctx: Any  # bf16 autocast on a GPU, a null context on a CPU
    report: ProgressFn
    stop: Callable[[], bool]
    log: Callable[[str], None]  # a "log" progress message, from rank 0 only

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"


def start_run(
    config: TrainConfig,
    on_progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> Run:
    """Join the torchrun group if there is one, seed, make the run folder and choose the device
    and precision, once."""
    report = on_progress or (lambda p: None)
    stop = should_stop or (lambda: False)
    rank, world = _distributed()
    log = (lambda msg: report(Progress("log", message=msg))) if rank == 0 else (lambda msg: None)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    config, out = run_folder(config, world)
    device, ctx = choose_device(config)
    return Run(config, out, rank, world, device, ctx, report, stop, log)


def run_folder(config: TrainConfig, world: int) -> tuple[TrainConfig, Path]:
    """The run's folder, created. On ``resume`` the config saved there replaces ``config``;
    either way its ``out`` is set to the folder."""
    out = Path(config.out) if config.out else default_out_dir()
    if world > 1 and not config.out:
        raise ValueError("give --out when running under torchrun, so every process uses one folder")
    out.mkdir(parents=True, exist_ok=True)
    if config.resume and not (out / "last.pt").exists():
        raise FileNotFoundError(f"--resume: no last.pt in {out}")
    if config.resume:
        saved = TrainConfig.load(out / "config.json")
        saved.resume, saved.out = True, str(out)
        config = saved
    config.out = str(out)
    return config, out


def choose_device(config: TrainConfig) -> tuple[torch.device, Any]:
    """The device (this process's GPU under torchrun) and the precision context for it."""
    if config.device == "auto":
        device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        )
    else:
        device = torch.device(config.device)
    # Chosen once: bf16 autocast on a GPU, plain fp32 on a CPU.
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    return device, ctx


def load_data(run: Run) -> tuple[dict, list[str]]:
    """Rank 0 audits and splits the data (:func:`prepare_data`); the other processes wait, then
    read the split it saved. Returns (splits, classes)."""
    run.report(Progress("audit", message="checking the data"))
    splits, classes = prepare_data(run.config, run.out, run.log) if run.rank == 0 else (None, None)
    if run.world > 1:
        dist.barrier()
        if run.rank != 0:
            splits = D.load_split(run.out / "splits")
            classes = sorted({s.label for part in splits.values() for s in part})
    return splits, classes


def choose_model(run: Run, classes: list[str]) -> tuple[str, str, list[dict[str, torch.Tensor]]]:
    """Settle the architecture and starting weights, refuse what cannot work before any
    training, and save the resolved config. Returns (arch, weights, soup ingredients)."""
    config = run.config
    arch, weights = resolve_model_choice(config, run.log)
    if config.mode == "head" and weights == "none":
        raise ValueError(
            "head mode trains only the classifier on the backbone's features, and a randomly "
            f"initialised {arch} has none worth learning from. Give --weights PATH (a trained "
            "checkpoint), use --arch efficientnet_lite0 (its ImageNet weights install with the "
            "package), or train everything with --mode full."
        )
    config.arch, config.weights = arch, weights
    ingredients = [_soup_ingredient(path, arch, classes) for path in config.soup]
    if run.rank == 0 and not config.resume:
        config.save(run.out / "config.json")
    return arch, weights, ingredients


def build_start_model(
    arch: str, weights: str, classes: list[str], log: Callable[[str], None]
) -> tuple[nn.Module, Preprocessing]:
    """The network training starts from, and its preprocessing: a checkpoint's own, else the
    architecture's default. A checkpoint for the same classes gives its head too."""
    start = load_checkpoint(weights) if weights not in ("none", "imagenet") else None
    prep = start.preprocessing if start is not None else default_preprocessing(arch)
    model = build_model(arch, len(classes), weights)
    if start is not None and start.classes == classes:
        # Same classes: continue from the whole model, head included, not just its backbone.
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()}
        )
    log(f"Model: {arch}, weights {weights}, {len(classes)} classes: {', '.join(classes)}")
    return model, prep


def linear_probe(
    run: Run,
    model: nn.Module,
    arch: str,
    weights: str,
    prep: Preprocessing,
    splits: dict,
    classes: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Fit the head alone on cached backbone features (head mode, or the probe of LP-FT) and
    load it into ``model``. Returns (features, labels) per split and the validation accuracy.

    Head mode also caches the test photos' features: calibration and the test report then run
    the trained head on cached features instead of the whole network again.
    """
    config = run.config
    model = model.to(run.device, memory_format=torch.channels_last)
    model_key = _model_key(arch, weights, prep)
    parts = ("train", "val", "test") if config.mode == "head" else ("train", "val")
    every = [s for name in parts for s in splits[name]]
    stacked = cached_features(
        model, arch, model_key, every, prep, run.device, config.batch_size * 2, run.report, run.stop
    )
    bounds = np.cumsum([0] + [len(splits[name]) for name in parts])
    feats = {name: stacked[bounds[k] : bounds[k + 1]] for k, name in enumerate(parts)}
    index = {c: i for i, c in enumerate(classes)}
    ys = {name: np.array([index[s.label] for s in splits[name]]) for name in parts}
    w = np.array(D.balance_weights(splits["train"])) if config.balance else None
    head, val_acc = fit_head(
        feats["train"], ys["train"], feats["val"], ys["val"], len(classes), config, w
    )
    head_of(model, arch).load_state_dict(head.state_dict())
    run.log(f"Linear head on cached features: validation accuracy {val_acc:.3f}")
    return feats, ys, val_acc


def fine_tune(
    run: Run,
    model: nn.Module,
    meta: dict[str, Any],
    splits: dict,
    *,
    history: list[dict[str, Any]],
    probe_state: dict[str, torch.Tensor],
) -> tuple[int, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Train the network (less its frozen blocks) epoch by epoch with early stopping on the
    validation score; ``best.pt`` is written on each improvement and ``last.pt``, with what
    resuming needs, after every epoch. Returns (epochs run, history, the weights fine-tuning
    began from), the last two as reloaded when resuming. ``meta``: the checkpoint fields
    (arch, classes, preprocessing, config)."""
    config = run.config
    arch, classes, prep = meta["arch"], meta["classes"], meta["preprocessing"]
    teacher = load_teacher(run, classes) if config.teacher else None
    loader, sampler = train_loader(run, splits["train"], classes, prep)
    optimizer, frozen = make_optimizer(model, arch, config)
    steps_per_epoch = len(loader)
    scheduler = WarmupCosine(
        optimizer,
        steps_per_epoch * config.epochs,
        int(steps_per_epoch * config.warmup_epochs),
        config.lr_min / config.lr,
    )
    start_epoch, best_score = 0, -1.0
    if config.resume:
        start_epoch, best_score, history, probe_state = resume_training(
            run, model, optimizer, scheduler, probe_state
        )
    net = model
    if run.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    norm = normalizer(prep, run.device)
    val_loader = eval_loader(splits["val"], classes, prep, config)
    epochs_run, stale = start_epoch, 0
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            net,
            loader,
            optimizer,
            scheduler,
            device=run.device,
            ctx=run.ctx,
            norm=norm,
            epoch=epoch,
            epochs=config.epochs,
            config=config,
            teacher=teacher,
            report=run.report if run.rank == 0 else (lambda p: None),
            should_stop=run.stop,
            step_offset=epoch * steps_per_epoch,
            frozen=frozen,
        )
        epochs_run = epoch + 1
        if run.rank == 0:
            logits, targets = evaluate(model, val_loader, run.device, run.ctx, norm)
            scores = score_by_source(logits, targets, splits["val"])
            stats.update({f"val_{k}": v for k, v in scores.items()}, epoch=epoch)
            history.append(stats)
            improved = scores["score"] > best_score
            if improved:
                best_score = scores["score"]
            train_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best_score": best_score,
                "history": history,
                "probe_state": probe_state,
            }
            save_epoch(run, model, meta, history, improved, train_state)
            stale = 0 if improved else stale + 1
            report_epoch(run, epoch, stats, scores)
        if stop_early(run, stale, epoch, steps_per_epoch):
            break
    return epochs_run, history, probe_state


def load_teacher(run: Run, classes: list[str]) -> tuple[nn.Module, Callable, int]:
    """The model to distil from, its normaliser and its input size; its classes must match."""
    t_ckpt = load_checkpoint(run.config.teacher)
    if t_ckpt.classes != classes:
        raise CheckpointError(
            f"{run.config.teacher}: teacher classes {t_ckpt.classes} differ from {classes}"
        )
    t_model = t_ckpt.build().to(run.device, memory_format=torch.channels_last)
    run.log(f"Distilling from {run.config.teacher} ({t_ckpt.arch})")
    return t_model, normalizer(t_ckpt.preprocessing, run.device), t_ckpt.preprocessing.crop


def train_loader(
    run: Run, samples: Sequence[D.Sample], classes: list[str], prep: Preprocessing
) -> tuple[torch.utils.data.DataLoader, ShardedWeightedSampler]:
    """Augmented training batches (unnormalised: the device normalises), drawn with the
    balancing weights and dealt out by rank. Returns (loader, sampler)."""
    config = run.config
    background = None
    if config.background_aug > 0:
        from .backgrounds import BackgroundAugment

        background = BackgroundAugment(p=config.background_aug, seed=config.seed)
    transform = train_transform(prep, config.aug_strength, background=background, normalize=False)
    train_set = SampleDataset(samples, classes, transform, prep.resize)
    weights_vec = D.balance_weights(samples) if config.balance else [1.0] * len(train_set)
    sampler = ShardedWeightedSampler(weights_vec, len(train_set), run.rank, run.world, config.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=len(train_set) > config.batch_size,
        persistent_workers=config.workers > 0,
    )
    return loader, sampler


def eval_loader(
    samples: Sequence[D.Sample], classes: list[str], prep: Preprocessing, config: TrainConfig
) -> torch.utils.data.DataLoader:
    """Batches of ``samples`` through the eval transform (unnormalised), in order."""
    return torch.utils.data.DataLoader(
        SampleDataset(samples, classes, ToUnit(prep), prep.resize),
        batch_size=config.batch_size * 2,
        num_workers=config.workers,
    )


def make_optimizer(
    model: nn.Module, arch: str, config: TrainConfig
) -> tuple[torch.optim.Optimizer, list[nn.Module]]:
    """Freeze the first ``freeze_blocks`` blocks; AdamW over the rest, the backbone at
    ``backbone_lr_scale`` times the head's rate. Returns (optimizer, frozen modules)."""
    frozen = frozen_modules(model, arch, config.freeze_blocks)
    for module in frozen:
        module.requires_grad_(False)
    head_params = list(head_of(model, arch).parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone, "lr": config.lr * config.backbone_lr_scale},
            {"params": head_params, "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    return optimizer, frozen


def resume_training(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    probe_state: dict[str, torch.Tensor],
) -> tuple[int, float, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Reload the model, optimizer and schedule from ``last.pt``. Returns (the first epoch to
    run, the best validation score so far, the history, the weights fine-tuning began from)."""
    state = torch.load(run.last_path, map_location="cpu", weights_only=True)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    )
    train_state = state["train_state"]
    optimizer.load_state_dict(train_state["optimizer"])
    scheduler.load_state_dict(train_state["scheduler"])
    start_epoch = int(train_state["epoch"]) + 1
    best_score = float(train_state["best_score"])
    run.log(f"Resuming after epoch {start_epoch} (best validation score {best_score:.3f})")
    return (
        start_epoch,
        best_score,
        list(train_state["history"]),
        train_state.get("probe_state", probe_state),
    )


def save_epoch(
    run: Run,
    model: nn.Module,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    improved: bool,
    train_state: dict[str, Any],
) -> None:
    """``best.pt`` if the epoch improved the validation score; ``last.pt`` always, with the
    optimizer's state to resume from (kept in full precision)."""
    if improved:
        save_checkpoint(
            run.best_path,
            model,
            **meta,
            metrics={"history": history},
            half=run.config.half_checkpoint,
        )
    save_checkpoint(
        run.last_path,
        model,
        **meta,
        metrics={"history": history},
        extra={"train_state": train_state},
    )


def report_epoch(run: Run, epoch: int, stats: dict[str, Any], scores: dict[str, float]) -> None:
    """One log line and one "evaluate" progress report for a finished epoch."""
    epochs = run.config.epochs
    run.log(
        f"epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.3f}, "
        f"val acc {scores['acc']:.3f} (score {scores['score']:.3f}), "
        f"{stats['images_per_second']:.1f} img/s"
    )
    run.report(
        Progress(
            "evaluate",
            epoch=epoch,
            epochs=epochs,
            metrics=stats,
            message=f"epoch {epoch + 1}: validation accuracy {scores['acc']:.3f}",
        )
    )


def stop_early(run: Run, stale: int, epoch: int, steps_per_epoch: int) -> bool:
    """Whether training ends after ``epoch``: patience ran out (rank 0 decides, every process
    follows) or the step budget is spent."""
    config = run.config
    stop_now = torch.tensor([1 if (run.rank == 0 and stale >= config.patience) else 0])
    if run.world > 1:
        dist.broadcast(stop_now, 0)
    if stop_now.item() or (
        config.max_steps is not None and (epoch + 1) * steps_per_epoch >= config.max_steps
    ):
        run.log(
            "Stopping early: no validation improvement"
            if stale >= config.patience
            else "Step budget reached"
        )
        return True
    return False


def final_model(
    run: Run, probe_state: dict[str, torch.Tensor], ingredients: list[dict[str, torch.Tensor]]
) -> nn.Module:
    """The best checkpoint, averaged with the starting weights (WiSE-FT, ``wise_alpha`` < 1)
    and with the soup's ingredients if asked."""
    config = run.config
    model = load_checkpoint(run.best_path).build().to(run.device, memory_format=torch.channels_last)
    if config.mode == "full" and config.wise_alpha < 1.0:
        model = _wise(model, probe_state, config.wise_alpha).to(
            run.device, memory_format=torch.channels_last
        )
        start = "linear-probe" if config.linear_probe_epochs else "starting"
        run.log(f"WiSE-FT: averaged fine-tuned and {start} weights with alpha {config.wise_alpha}")
    if ingredients:
        model = _soup(model, ingredients).to(run.device, memory_format=torch.channels_last)
        run.log(f"Model soup: averaged the final weights with {', '.join(config.soup)}")
    return model


def calibrate_and_test(
    run: Run,
    model: nn.Module,
    meta: dict[str, Any],
    splits: dict,
    feats: dict[str, np.ndarray],
    ys: dict[str, np.ndarray],
    history: list[dict[str, Any]],
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the confidence calibration on the validation split, score the test split and write
    the reports. Returns (calibration, metrics)."""
    run.report(Progress("calibrate", message="calibrating confidences"))
    from .report import calibrate, write_reports

    config = run.config
    arch, classes, prep = meta["arch"], meta["classes"], meta["preprocessing"]
    norm = normalizer(prep, run.device)

    def logits_of(part: str) -> tuple[np.ndarray, np.ndarray]:
        if config.mode == "head":  # the saved head on the cached features of the same photos
            with torch.inference_mode():
                x = torch.from_numpy(feats[part]).to(run.device)
                return head_of(model, arch)(x).float().cpu().numpy(), ys[part]
        loader = eval_loader(splits[part], classes, prep, config)
        return evaluate(model, loader, run.device, run.ctx, norm)

    val_logits, val_targets = logits_of("val")
    calibration = calibrate(val_logits, val_targets, config.target_precision)
    if not config.calibrate:
        calibration.update(temperature=1.0, threshold=0.0)
    run.report(Progress("evaluate", message="testing on the held-out split"))
    test_logits, test_targets = logits_of("test")
    metrics = write_reports(
        run.out,
        classes,
        test_logits,
        test_targets,
        splits["test"],
        history,
        calibration,
        val_logits,
        val_targets,
        splits["val"],
    )
    return calibration, metrics


def familiarity_reference(
    run: Run, model: nn.Module, meta: dict[str, Any], splits: dict, weights: str
) -> dict[str, Any] | None:
    """The reference the shift score measures photos against (``garbage_sorter/familiarity.py``):
    from up to ``FAMILIARITY_PHOTOS`` training photos, its threshold from the validation photos.
    A head trained on a frozen backbone keeps its starting checkpoint's: same layers, same
    numbers, no extra pass over the photos."""
    from garbage_sorter.familiarity import fit_record

    arch, classes, prep = meta["arch"], meta["classes"], meta["preprocessing"]
    if run.config.mode == "head" and weights not in ("none", "imagenet"):
        start = load_checkpoint(weights)
        if start.familiarity is not None and start.preprocessing == prep:
            return start.familiarity
    if len(splits["train"]) < 2 or not splits["val"]:
        run.log("No familiarity reference: too few training or validation photos")
        return None
    run.report(Progress("calibrate", message="measuring what the training photos look like"))
    norm = normalizer(prep, run.device)
    rng = np.random.default_rng(run.config.seed)

    def batches(part: str):
        samples = splits[part]
        if len(samples) > FAMILIARITY_PHOTOS:
            samples = [
                samples[i] for i in sorted(rng.permutation(len(samples))[:FAMILIARITY_PHOTOS])
            ]
        for images, _ in eval_loader(samples, classes, prep, run.config):
            yield norm(images.to(run.device))

    return fit_record(
        model,
        arch,
        batches("train"),
        batches("val"),
        fitted_on={
            "train_photos": min(len(splits["train"]), FAMILIARITY_PHOTOS),
            "val_photos": min(len(splits["val"]), FAMILIARITY_PHOTOS),
            "sources": sorted({s.source for s in splits["train"]}),
        },
    )


def save_result(
    run: Run,
    model: nn.Module,
    meta: dict[str, Any],
    calibration: dict[str, float],
    metrics: dict[str, Any],
) -> None:
    """The final ``best.pt`` (calibration and metrics included) and ``metrics.json``, then the
    "done" report."""
    save_checkpoint(
        run.best_path,
        model,
        **meta,
        calibration=calibration,
        metrics=metrics,
        half=run.config.half_checkpoint,
    )  # meta holds the familiarity reference by now
    atomic_write(run.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    run.report(
        Progress("done", message=f"test accuracy {metrics['test']['acc']:.3f}", metrics=metrics)
    )


class ShardedWeightedSampler(torch.utils.data.Sampler):
    """Weighted sampling with replacement, drawn identically on every process from the seed and
    epoch, then dealt out by rank: one process sees the whole draw, N processes split it."""

    def __init__(
        self, weights: Sequence[float], num_samples: int, rank: int, world: int, seed: int
    ):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples, self.rank, self.world, self.seed, self.epoch = (
            num_samples,
            rank,
            world,
            seed,
            0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return iter(draw[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world))


def _wise(model: nn.Module, probe_state: dict[str, torch.Tensor], alpha: float) -> nn.Module:
    return _average_into(model, [model.state_dict(), probe_state], [alpha, 1 - alpha])


def _soup_ingredient(path: str, arch: str, classes: list[str]) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint to average into the trained model, checked before training
    starts so that a wrong file fails in seconds rather than after the last epoch."""
    ckpt = load_checkpoint(path)
    if ckpt.arch != arch or ckpt.classes != classes:
        raise ValueError(
            f"--soup {path}: a {ckpt.arch} for {', '.join(ckpt.classes)}; this run trains a "
            f"{arch} for {', '.join(classes)}, and only models of one architecture and classes "
            "can be averaged"
        )
    return ckpt.state_dict


def _soup(model: nn.Module, ingredients: list[dict[str, torch.Tensor]]) -> nn.Module:
    """Uniform model soup: the mean of the model's weights and the ingredients' (Wortsman et
    al., 2022). Fine-tunes of one starting point average into one model that is usually more
    robust to shifts than any of them, at the cost of a single model."""
    n = len(ingredients) + 1
    return _average_into(model, [model.state_dict(), *ingredients], [1 / n] * n)


def _average_into(
    model: nn.Module, states: list[dict[str, torch.Tensor]], weights: list[float]
) -> nn.Module:
    """Load the weighted sum of ``states`` into ``model``; integer buffers (BatchNorm's batch
    counts) are kept from the model."""
    mixed = {
        k: sum(w * s[k].float().to(v.device) for s, w in zip(states, weights, strict=True)).to(
            v.dtype
        )
        if v.is_floating_point()
        else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(mixed)
    return model


def _model_key(arch: str, weights: str, prep: Preprocessing) -> str:
    import hashlib

    ident = weights
    if weights not in ("none", "imagenet"):
        ident = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return hashlib.sha256(f"{arch}|{ident}|{prep.to_dict()}".encode()).hexdigest()[:16]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``train`` command line; every option fills a :class:`TrainConfig` field."""
    p = argparse.ArgumentParser(description="Train a Garbage Sorter model", add_help=add_help)
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DIR",
        help="folder-per-class tree of photos (repeat for several)",
    )
    p.add_argument(
        "--kaggle",
        nargs="?",
        const=D.KAGGLE_HANDLE,
        default=None,
        metavar="HANDLE",
        help=f"download a Kaggle dataset with kagglehub (default {D.KAGGLE_HANDLE})",
    )
    p.add_argument("--out", help="run folder (default: a new folder under the user's data folder)")
    p.add_argument(
        "--config", help="JSON config (e.g. a search's best_config.json); flags override it"
    )
    p.add_argument("--arch", choices=ARCHS, default=None, help="network (default resnet18)")
    p.add_argument(
        "--weights",
        default=None,
        help="auto (default) | imagenet | none | PATH: initialisation of the backbone",
    )
    p.add_argument(
        "--mode",
        choices=("head", "full"),
        default=None,
        help="head: linear classifier on cached features (minutes on a laptop); full: fine-tune everything",
    )
    add_config_options(
        p,
        [
            "epochs",
            "batch_size",
            "lr",
            "lr_min",
            "backbone_lr_scale",
            "freeze_blocks",
            "weight_decay",
            "label_smoothing",
            "aug_strength",
            "background_aug",
            "patience",
            "linear_probe_epochs",
            "wise_alpha",
            "distill_alpha",
            "distill_temperature",
            "seed",
            "workers",
            "max_steps",
            "search",
            "target_precision",
        ],
    )
    p.add_argument("--teacher", help="checkpoint to distil from")
    p.add_argument(
        "--soup",
        action="append",
        default=None,
        metavar="PATH",
        help="a checkpoint (same architecture and classes) to average the final weights with; "
        "repeat for several",
    )
    p.add_argument("--splits", help="reuse the split files in this folder")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--no-balance", dest="balance", action="store_false", default=None)
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then a ``--config`` file, then the flags given on the command line."""
    config = TrainConfig.load(args.config) if args.config else TrainConfig(weights="auto")
    for key, value in vars(args).items():
        if key == "config" or value is None or (key == "data" and not value):
            continue
        setattr(config, key, value)
    if config.mode == "head" and args.arch is None and not args.config:
        from garbage_sorter.classifier import bundled_model_path

        if bundled_model_path().exists():
            # Head retraining is for reusing a good backbone: the bundled model's.
            config.arch = load_checkpoint(bundled_model_path()).arch
    return config


class TerminalProgress:
    """Maps progress reports to one updating terminal line with an ETA, and logs to stderr."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        if p.stage == "log":
            self._clear()
            print(p.message, file=self.stream, flush=True)
            return
        now = time.monotonic()
        if p.steps and p.step < p.steps and now - self.last < 0.2:
            return
        self.last = now
        bar = ""
        if p.steps:
            filled = int(24 * p.step / p.steps)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {p.step}/{p.steps} "
        eta = f" ETA {_hms(p.eta_seconds)}" if p.eta_seconds is not None else ""
        if self.stream.isatty():
            self.stream.write(f"\r\033[K{bar}{p.message}{eta}")
            self.stream.flush()
        elif not p.steps or p.step == p.steps:
            print(f"{bar}{p.message}{eta}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.stream.isatty():
            self.stream.write("\r\033[K")


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``garbage-sorter train`` / ``python -m garbage_sorter.training``: exit 0 ok, 1 failed, 2 usage."""
    args = get_args_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        progress = TerminalProgress()
        if config.search:
            from .search import run_search

            config = run_search(config, progress)
        result = main(config, progress)
    except KeyboardInterrupt:
        print(
            "\nInterrupted. The last completed epoch is in last.pt; continue with --resume.",
            file=sys.stderr,
        )
        return 130
    except (D.DataSourceError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    test = result.metrics.get("test", {})
    print(f"Model: {result.best}")
    if test:
        print(
            f"Test accuracy: {test['acc']:.4f} on {test['n']} photos; "
            + ", ".join(f"{k[4:]} {v:.4f}" for k, v in test.items() if k.startswith("acc_"))
        )
    return 0
