"""Grad-CAM: where in the picture the model looked when it chose a class.

The original project's failure was a model that read the table instead of the object; a heatmap
over the photo lets a user see that happen. Selvaraju et al. 2017: weigh the last feature map's
channels by the gradient of the class score, keep the positive part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .archs import feature_map
from .images import load_image
from .model import head_name
from .presets import resize_and_crop


class ExplainError(ValueError):
    """This model cannot be explained (an ONNX export has no gradients)."""


@dataclass(frozen=True)
class Explanation:
    """A heatmap in [0, 1] over ``image``: the square crop the model actually saw."""

    label: str
    heatmap: np.ndarray  # (H, W) float32, same size as ``image``
    image: Image.Image

    def overlay(self, alpha: float = 0.45) -> Image.Image:
        """The crop with the heatmap blended on top (blue = ignored, red = looked at)."""
        heat = self.heatmap[..., None]
        # A small colour ramp (blue -> yellow -> red) without needing matplotlib at run time.
        colour = np.concatenate(
            [
                np.clip(2 * heat, 0, 1),
                np.clip(2 - 2 * heat, 0, 1) * np.clip(2 * heat, 0, 1),
                np.clip(1 - 2 * heat, 0, 1),
            ],
            axis=2,
        )
        base = np.asarray(self.image, dtype=np.float32) / 255.0
        mixed = (1 - alpha) * base + alpha * colour
        return Image.fromarray((mixed * 255).clip(0, 255).astype(np.uint8))


def gradcam(
    classifier: Any, image: Any, target: str | None = None, *, channels: str = "RGB"
) -> Explanation:
    """Grad-CAM of ``classifier``'s model for ``target`` (default: the predicted class).

    Runs on the classifier's device in float32 (gradients in fp16 are too coarse for a map) and
    holds the classifier's lock, so it can be called from any worker thread.
    """
    if next(classifier.model.parameters(), None) is None:
        raise ExplainError(
            "the heatmap needs the model's PyTorch checkpoint (.pt); "
            f"{classifier.name} is an ONNX export, which has no gradients"
        )
    pil = load_image(image, channels=channels)
    prep = classifier.checkpoint.preprocessing
    crop = resize_and_crop(pil, prep)
    x = classifier.transform(pil).unsqueeze(0).to(classifier.device, torch.float32)
    arch = classifier.checkpoint.arch
    model = classifier.model
    with classifier._lock, torch.enable_grad():
        model.float()
        try:
            fmap = feature_map(model, arch, x)
            fmap.retain_grad()
            logits = getattr(model, head_name(arch))(fmap.mean((2, 3)))
            index = int(logits.argmax(1)) if target is None else classifier.classes.index(target)
            model.zero_grad(set_to_none=True)
            logits[0, index].backward()
            weights = fmap.grad.mean((2, 3), keepdim=True)
            cam = torch.relu((weights * fmap).sum(1, keepdim=True)).detach()
        finally:
            model.to(classifier.dtype)
            model.zero_grad(set_to_none=True)
    cam = (
        torch.nn.functional.interpolate(
            cam, size=(prep.crop, prep.crop), mode="bilinear", align_corners=False
        )[0, 0]
        .cpu()
        .numpy()
    )
    peak = cam.max()
    heat = (cam / peak if peak > 0 else cam).astype(np.float32)
    return Explanation(label=classifier.classes[index], heatmap=heat, image=crop)
