"""Grad-CAM: where in the picture the model looked when it chose a class.

The original project's failure was a model that read the table instead of the object; a heatmap
over the photo lets a user see that happen. Selvaraju et al. 2017: weigh the last feature map's
channels by the gradient of the class score, keep the positive part.

For these networks (global average pooling, then one linear layer) that gradient is the head's
weight divided by the map's area, the same at every position, so Grad-CAM is the class
activation map of Zhou et al. 2016 (sum over channels of ``w_ck * A_k``) up to a constant that
the normalisation removes. ONNX Runtime's graph outputs that map (``cams``), so a model served by
ONNX Runtime is explained in numpy without PyTorch; a PyTorch model uses its gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .images import load_image
from .presets import resize_and_crop


class ExplainError(ValueError):
    """This model cannot be explained (an ONNX export made before the graph gave its maps)."""


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

    With ONNX Runtime it is the graph's class activation map (the same map, see the module
    docstring); with PyTorch it runs on the classifier's device in float32 (gradients in fp16 are
    too coarse for a map). Either way it holds the classifier's lock, so it can be called from
    any worker thread.

    Raises:
        ExplainError: an ONNX file exported before the graph gave class activation maps.
    """
    pil = load_image(image, channels=channels)
    prep = classifier.checkpoint.preprocessing
    crop = resize_and_crop(pil, prep)
    if classifier.engine == "onnxruntime":
        cam, index = _onnx_cam(classifier, pil, target)
    else:
        cam, index = _torch_gradcam(classifier, pil, target)
    cam = upsample_bilinear(np.maximum(cam, 0.0), prep.crop)
    peak = cam.max()
    heat = (cam / peak if peak > 0 else cam).astype(np.float32)
    return Explanation(label=classifier.classes[index], heatmap=heat, image=crop)


def upsample_bilinear(cam: np.ndarray, size: int) -> np.ndarray:
    """(h, w) -> (size, size), as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` does it."""
    return _linear_weights(cam.shape[0], size) @ cam @ _linear_weights(cam.shape[1], size).T


def _linear_weights(n: int, size: int) -> np.ndarray:
    # Pixel centres line up; positions before the first or after the last source pixel clamp.
    src = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = src - lo
    weights = np.zeros((size, n))
    np.add.at(weights, (np.arange(size), lo), 1 - frac)
    np.add.at(weights, (np.arange(size), hi), frac)
    return weights


def _onnx_cam(classifier: Any, pil: Image.Image, target: str | None) -> tuple[np.ndarray, int]:
    from .onnx_runtime import run

    if not classifier.checkpoint.has_cams:
        raise ExplainError(
            f"{classifier.name} was exported without class activation maps; export it again "
            "(garbage-sorter export --onnx) or open the PyTorch checkpoint (.pt) for the heatmap"
        )
    x = classifier.transform.array(pil)[None]
    with classifier._lock:
        logits, cams = run(classifier.checkpoint.session, ["logits", "cams"], {"input": x})
    index = int(logits[0].argmax()) if target is None else classifier.classes.index(target)
    return cams[0, index].astype(np.float64), index


def _torch_gradcam(classifier: Any, pil: Image.Image, target: str | None) -> tuple[np.ndarray, int]:
    import torch

    from .archs import feature_map
    from .model import head_name

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
            cam = (weights * fmap).sum(1)[0].detach()
        finally:
            model.to(classifier.dtype)
            model.zero_grad(set_to_none=True)
    return cam.cpu().double().numpy(), index
