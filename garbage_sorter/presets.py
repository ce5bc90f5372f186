"""Preprocessing, defined once and stored in every checkpoint.

Training, the app, the web page and the benchmarks all build their transforms from a
:class:`Preprocessing` read out of the checkpoint, so a model is always fed the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite was trained on (x - 127) / 128.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
# Extreme panoramas are squeezed to this aspect ratio instead of becoming 100,000-pixel-wide tensors.
MAX_ASPECT = 4.0


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: resize the short side, centre-crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Rebuild from checkpoint data, refusing values that cannot be right."""
        prep = cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )
        if not (16 <= prep.crop <= prep.resize <= 2048):
            raise ValueError(f"implausible sizes resize={prep.resize} crop={prep.crop}")
        if len(prep.mean) != 3 or len(prep.std) != 3 or min(prep.std) <= 0:
            raise ValueError("mean and std need three values, std positive")
        if prep.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {prep.interpolation!r}")
        return prep


def default_preprocessing(arch: str) -> Preprocessing:
    """The preprocessing an architecture's pretrained weights expect."""
    if arch == "efficientnet_lite2":
        return Preprocessing(resize=292, crop=260, mean=LITE_MEAN, std=LITE_STD)
    if arch == "efficientnet_lite1":
        return Preprocessing(resize=274, crop=240, mean=LITE_MEAN, std=LITE_STD)
    if arch.startswith("efficientnet_lite"):
        return Preprocessing(mean=LITE_MEAN, std=LITE_STD)
    return Preprocessing()


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_and_crop(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize the short side to ``prep.resize`` and take the centre ``prep.crop`` square."""
    w, h = image.size
    scale = prep.resize / min(w, h)
    new_w = min(max(round(w * scale), prep.crop), round(prep.resize * MAX_ASPECT))
    new_h = min(max(round(h * scale), prep.crop), round(prep.resize * MAX_ASPECT))
    # reducing_gap makes PIL shrink big photos in two cheap steps with the same result to the eye.
    image = image.resize((new_w, new_h), _RESAMPLE[prep.interpolation], reducing_gap=3.0)
    # The centre as torchvision's CenterCrop rounds it: a one-pixel shift flips borderline photos.
    left, top = round((new_w - prep.crop) / 2.0), round((new_h - prep.crop) / 2.0)
    return image.crop((left, top, left + prep.crop, top + prep.crop))


@dataclass
class EvalTransform:
    """PIL RGB image -> normalised float tensor (3, crop, crop). Picklable for DataLoader workers."""

    prep: Preprocessing
    _scale: np.ndarray = field(init=False, repr=False)
    _shift: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        std = np.asarray(self.prep.std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self._shift = (np.asarray(self.prep.mean, dtype=np.float32) / std).reshape(3, 1, 1)

    def __call__(self, image: Image.Image):
        import torch

        return torch.from_numpy(self.array(image))

    def array(self, image: Image.Image) -> np.ndarray:
        """The same as a float32 numpy array (for ONNX Runtime)."""
        pixels = np.asarray(resize_and_crop(image, self.prep), dtype=np.float32).transpose(2, 0, 1)
        return pixels * self._scale - self._shift


def normalize_module(prep: Preprocessing):
    """``torchvision`` Normalize for tensors already in [0, 1] (training-side augmentation)."""
    from torchvision.transforms import v2

    return v2.Normalize(mean=list(prep.mean), std=list(prep.std))


def train_transform(
    prep: Preprocessing, strength: float = 1.0, background=None, normalize: bool = True
):
    """Augmentation for training, from the same ``prep`` values.

    ``strength`` scales photometric and geometric jitter (0 = only flips and crops). The
    original project's future work asked for random crops, flips and colour jitter; rotations,
    blur and JPEG-like softening are here because phone photos of waste have all of them.
    ``background`` is an optional PIL->PIL callable (background compositing) run first.
    ``normalize=False`` leaves values in [0, 1] for a loop that normalises on the device (and
    can hand the same batch to a teacher with other statistics).
    """
    import torch
    from torchvision.transforms import v2

    s = max(0.0, float(strength))
    steps = [] if background is None else [background]
    steps += [
        v2.PILToTensor(),
        v2.RandomResizedCrop(prep.crop, scale=(max(0.25, 1 - 0.6 * s), 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(p=0.2 * min(s, 1.0)),
        v2.RandomApply([v2.RandomRotation(25 * s)], p=0.5 * min(s, 1.0)),
        v2.ColorJitter(0.35 * s, 0.35 * s, 0.3 * s, 0.04 * min(s, 1.0)),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5 * s + 0.1))], p=0.2 * min(s, 1.0)),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(normalize_module(prep))
    return v2.Compose(steps)
