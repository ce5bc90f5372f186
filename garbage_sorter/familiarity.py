"""How familiar a photo looks to the model: a shift score from early and middle layer statistics.

A photo from a setting the model never saw (a dark bin under a blue LED, a phone on a tiled
floor) can still get a confident softmax. What gives the setting away is its "style": the
per-image mean and spread of each channel after the stem and a few blocks, the statistics that
BatchNorm (and AdaBN) normalise. Each photo gives one vector of them (channel means and log
standard deviations); the training photos give a reference mean and a shrunk (Ledoit-Wolf)
covariance, and a photo's shift is its Mahalanobis distance from that reference, divided by
the distance that a chosen share of validation photos stay under. So ``shift <= 1`` is
familiar and ``shift > 1`` unfamiliar, whatever the architecture.

The reference travels in the checkpoint (``familiarity``: layers, mean, whitening matrix,
threshold, what it was fitted on). The score is computed inside the network's forward pass by
:class:`ShiftScore` for PyTorch, and exported as the ONNX graph's ``shift`` output, so both
engines give the same number. A model adapted to one setting (adapt.py) gets a reference of its own, fitted on
that setting's photos: the adapted statistics change every later layer's style, so the base's
reference no longer describes anything, and "familiar" then means "like this camera".

A camera stream says more than one photo: ``classifier.StreamFamiliarity`` keeps the recent
frames' scores and calls the camera unfamiliar when most of them are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# Where the style statistics are read, from the input: the stem and the ends of the early and
# middle stages (EfficientNet-Lite blocks 2, 4, 7 and 10 close the 24-, 40-, 80- and 112-channel
# stages; ResNet-18's stem and its first two stages). Later layers describe the object more
# than the setting. Chosen before measuring, from the account of what separated an
# unseen camera; BENCHMARKS.md, "Knowing a setting is unfamiliar", reports what they do.
LAYERS = {
    "efficientnet": ("_bn0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10"),
    "resnet18": ("bn1", "layer1", "layer2"),
}
# Share of validation photos of the training domain that count as familiar.
FAMILIAR_SHARE = 0.95
EPS = 1e-5


def style_layers(arch: str) -> tuple[str, ...]:
    """The module names whose outputs give the style statistics for ``arch``."""
    return LAYERS["resnet18" if arch == "resnet18" else "efficientnet"]


class StyleFeatures(nn.Module):
    """``model`` returning ``(logits, style)``: style is (N, D), per layer and channel the
    spatial mean and log standard deviation of the layer's output."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        self.net = model
        self.layers = style_layers(arch)
        self._seen: list[torch.Tensor] | None = None  # a list only inside forward()
        modules = dict(model.named_modules())
        self._hooks = [modules[name].register_forward_hook(self._record) for name in self.layers]

    def remove(self) -> None:
        """Take the hooks off the network (they cost a call per layer on every forward)."""
        for hook in self._hooks:
            hook.remove()

    def _record(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._seen is not None:
            x = output.float()
            mean = x.mean((2, 3))
            std = (x - mean[:, :, None, None]).pow(2).mean((2, 3)).add(EPS).sqrt()
            self._seen.append(torch.cat([mean, std.log()], 1))

    def collect(
        self, run: Callable[[torch.Tensor], Any], x: torch.Tensor
    ) -> tuple[Any, torch.Tensor]:
        """``run(x)`` (any call that passes ``x`` through the network) and the style it saw."""
        self._seen = []
        try:
            out = run(x)
            style = torch.cat(self._seen, 1)
        finally:
            self._seen = None
        return out, style

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.collect(self.net, x)


class ShiftScore(nn.Module):
    """``model`` returning ``(logits, shift)`` for a fitted reference (see the module docstring)."""

    def __init__(self, model: nn.Module, arch: str, reference: dict[str, Any]) -> None:
        super().__init__()
        self.style = StyleFeatures(model, arch)
        self.register_buffer("mean", torch.as_tensor(reference["mean"]).float())
        self.register_buffer("whiten", torch.as_tensor(reference["whiten"]).float())
        self.threshold = float(reference["threshold"])

    def score(self, style: torch.Tensor) -> torch.Tensor:
        """The shift score (N,) of style vectors (N, D)."""
        z = (style - self.mean) @ self.whiten.T
        return z.pow(2).sum(1).sqrt() / self.threshold

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, style = self.style(x)
        return logits, self.score(style)


@dataclass
class Reference:
    """Style statistics of the training photos, ready to score against."""

    mean: np.ndarray
    whiten: np.ndarray  # W with W.T @ W the inverse of the shrunk covariance

    def distance(self, style: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``style`` (N, D) from the reference."""
        return np.sqrt((((style - self.mean) @ self.whiten.T) ** 2).sum(1))


def fit_reference(style: np.ndarray) -> Reference:
    """Mean and Ledoit-Wolf shrunk covariance of ``style`` (N, D), as a whitening transform."""
    from sklearn.covariance import LedoitWolf

    style = np.asarray(style, dtype=np.float64)
    cov = LedoitWolf().fit(style).covariance_
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, values.max() * 1e-9)
    whiten = (vectors / np.sqrt(values)).T
    return Reference(style.mean(0).astype(np.float32), whiten.astype(np.float32))


def reference_record(
    arch: str,
    reference: Reference,
    validation_distances: np.ndarray,
    *,
    share: float = FAMILIAR_SHARE,
    fitted_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint's ``familiarity`` entry: the threshold is the distance ``share`` of the
    validation photos stay under."""
    threshold = float(np.quantile(validation_distances, share))
    return {
        "layers": list(style_layers(arch)),
        "mean": torch.from_numpy(reference.mean),
        "whiten": torch.from_numpy(reference.whiten),
        "threshold": threshold,
        "familiar_share": share,
        "fitted_on": dict(fitted_on or {}),
    }


def check_record(record: Any, arch: str) -> dict[str, Any]:
    """``record`` if it is a usable ``familiarity`` entry for ``arch``, else ``ValueError``."""
    if not isinstance(record, dict):
        raise ValueError("familiarity must be a dict")
    mean, whiten = record.get("mean"), record.get("whiten")
    if not isinstance(mean, torch.Tensor) or not isinstance(whiten, torch.Tensor):
        raise ValueError("familiarity mean and whiten must be tensors")
    if mean.ndim != 1 or whiten.shape != (len(mean), len(mean)):
        raise ValueError("familiarity mean and whiten have inconsistent shapes")
    if list(record.get("layers", [])) != list(style_layers(arch)):
        raise ValueError(f"familiarity was measured on other layers than {arch}'s")
    threshold = float(record.get("threshold", 0))
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError("familiarity threshold must be a positive number")
    if not (torch.isfinite(mean).all() and torch.isfinite(whiten).all()):
        raise ValueError("familiarity holds NaN or infinity")
    return {**record, "threshold": threshold}


def style_of(
    model: nn.Module, arch: str, batches: Iterable[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, style) of preprocessed batches, with ``model`` in eval mode."""
    wrapped = StyleFeatures(model, arch).eval()
    logits, styles = [], []
    try:
        with torch.inference_mode():
            for x in batches:
                out, style = wrapped(x.contiguous(memory_format=torch.channels_last))
                logits.append(out.float().cpu().numpy())
                styles.append(style.cpu().numpy())
    finally:
        wrapped.remove()
    return np.concatenate(logits), np.concatenate(styles)


def fit_setting_record(
    arch: str, style: np.ndarray, *, share: float = FAMILIAR_SHARE, folds: int = 5
) -> dict[str, Any]:
    """A ``familiarity`` entry from one setting's photos alone (their ``style_of`` through an
    adapted model): the reference from all of them, the threshold from out-of-fold distances
    (each fold scored by a reference fitted without it), so photos like these stay under it as
    new ones would."""
    order = np.random.default_rng(0).permutation(len(style))
    out_of_fold = np.zeros(len(style))
    for held in np.array_split(order, max(2, min(folds, len(style) // 8))):
        rest = np.setdiff1d(order, held)
        out_of_fold[held] = fit_reference(style[rest]).distance(style[held])
    return reference_record(
        arch,
        fit_reference(style),
        out_of_fold,
        share=share,
        fitted_on={"setting_photos": len(style)},
    )


def fit_record(
    model: nn.Module,
    arch: str,
    train: Iterable[torch.Tensor],
    validation: Iterable[torch.Tensor],
    *,
    share: float = FAMILIAR_SHARE,
    fitted_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint's ``familiarity`` entry for ``model``: the reference from the training
    photos' batches, the threshold from the validation photos' batches."""
    reference = fit_reference(style_of(model, arch, train)[1])
    distances = reference.distance(style_of(model, arch, validation)[1])
    return reference_record(arch, reference, distances, share=share, fitted_on=fitted_on)
