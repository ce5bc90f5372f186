"""The one API both front ends call: load a model once, turn images into :class:`Prediction`.

``Classifier.load()`` opens the bundled model (or a checkpoint file), chooses the device and the
engine once, and ``predict``/``predict_batch`` accept paths, bytes, PIL images or numpy arrays
(RGB unless ``channels="BGR"`` is given, as for OpenCV frames).

On a CPU the bundled model runs in ONNX Runtime, from the ``.onnx`` export shipped beside its
``.pt`` (same labels; faster, and it starts without importing PyTorch: BENCHMARKS.md, "Fast by
default"). PyTorch serves it on a GPU, when ``onnxruntime`` is missing, and for any other
``.pt`` checkpoint; it is imported only then.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bins import Bin, Region, get_region
from .images import ImageLoadError, load_image
from .onnx_runtime import OnnxCheckpoint, load_onnx_checkpoint, run
from .presets import EvalTransform

if TYPE_CHECKING:
    import torch

    from .model import Checkpoint

BUNDLED_MODEL = "garbage_sorter.pt"
UNSURE_MESSAGE = "Not sure: try closer, another angle, or better light."
UNFAMILIAR_MESSAGE = (
    "Not sure: this looks unlike the photos the model learnt from (light, camera?)."
)
ENGINES = ("auto", "onnxruntime", "pytorch")


def bundled_model_path() -> Path:
    """Where the model shipped with the package lies (source checkout, editable or wheel)."""
    return Path(str(resources.files("garbage_sorter.resources") / "models" / BUNDLED_MODEL))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when a GPU is usable, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


@dataclass(frozen=True)
class CpuDevice:
    """Where ONNX Runtime runs the network, shaped like ``torch.device`` (``.type``)."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver: a look at a file, so that a CPU-only machine
    chooses ONNX Runtime without importing PyTorch to ask ``torch.cuda``."""
    if sys.platform == "win32":
        system = Path(os.environ.get("SystemRoot", r"C:\Windows"))
        return (system / "System32" / "nvcuda.dll").exists()
    return any(
        Path(p).exists() for p in ("/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libcuda.so.1")
    )


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image, ready for any front end to render."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    bin: Bin
    crop_box: tuple[int, int, int, int] | None
    seconds: float
    uncertain: bool = False
    region: str = "default"
    # The photo looks unlike the model's training photos (familiarity.py): then ``uncertain``
    # too, however confident the softmax. ``shift`` is the score (> 1: unfamiliar), None when
    # the model carries no familiarity reference.
    unfamiliar: bool = False
    shift: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most likely classes with their probabilities."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints (without ``path``)."""
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "bin": {"name": self.bin.name, "colour": self.bin.colour, "note": self.bin.note},
            "crop_box": list(self.crop_box) if self.crop_box else None,
            "uncertain": self.uncertain,
            "unfamiliar": self.unfamiliar,
            "shift": None if self.shift is None else round(self.shift, 3),
            "seconds": round(self.seconds, 4),
        }


class StreamFamiliarity:
    """Whether a camera looks unfamiliar to the model, from its recent frames' shift scores.

    One frame can be odd (a hand, motion blur); a camera is unfamiliar when most of the last
    ``window`` scored frames are, and only once ``minimum`` frames have been scored.
    """

    def __init__(self, window: int = 30, minimum: int = 10) -> None:
        self.scores: deque[float] = deque(maxlen=window)
        self.minimum = minimum

    def add(self, shift: float | None) -> None:
        """Count one frame's score (None, from a model without a reference, counts nothing)."""
        if shift is not None and np.isfinite(shift):
            self.scores.append(float(shift))

    def reset(self) -> None:
        self.scores.clear()

    @property
    def unfamiliar(self) -> bool:
        return len(self.scores) >= self.minimum and float(np.median(self.scores)) > 1.0


class Classifier:
    """A loaded model plus its preprocessing, calibration, region and isolation settings.

    ``engine`` says what runs the network: ``"onnxruntime"`` (an :class:`OnnxCheckpoint`, on the
    CPU) or ``"pytorch"`` (a :class:`~garbage_sorter.model.Checkpoint`; ``model`` is the module).
    """

    def __init__(
        self,
        checkpoint: Checkpoint | OnnxCheckpoint,
        device: str = "auto",
        region: str | None = None,
        isolation: str = "none",
    ):
        self.checkpoint = checkpoint
        self.classes = list(checkpoint.classes)
        self.transform = EvalTransform(checkpoint.preprocessing)
        self.temperature = float(checkpoint.calibration.get("temperature", 1.0))
        self.threshold = float(checkpoint.calibration.get("threshold", 0.0))
        self.region: Region = get_region(region)
        self.isolation = isolation
        # One model may serve a GUI worker and a web queue at once: keep their calls apart.
        self._lock = threading.Lock()
        if isinstance(checkpoint, OnnxCheckpoint):
            if device not in ("auto", "cpu"):
                raise ValueError("an ONNX model runs on the CPU; use the .pt checkpoint on a GPU")
            self.engine = "onnxruntime"
            self.device = CpuDevice()
            self.dtype = np.float32
            self.model = None
            self._preprocess = self.transform.array
            self._scorer = None
            self._onnx_shift = "shift" in {o.name for o in checkpoint.session.get_outputs()}
            return
        import torch

        self.engine = "pytorch"
        self.device = resolve_device(device)
        model = checkpoint.build()
        # Half precision and channels_last pay on a GPU; on a CPU fp32 is the fast and exact path.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype, memory_format=torch.channels_last).eval()
        self._preprocess = self.transform
        self._scorer = None
        if checkpoint.familiarity is not None:
            from .familiarity import ShiftScore

            scorer = ShiftScore(self.model, checkpoint.arch, checkpoint.familiarity)
            self._scorer = scorer.to(self.device).eval()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        region: str | None = None,
        isolation: str = "none",
        engine: str = "auto",
    ) -> Classifier:
        """Open ``path`` (default: the bundled model).

        A ``.onnx`` file written by ``garbage-sorter export --onnx`` runs in ONNX Runtime on the
        CPU. ``engine="auto"`` serves the bundled model with ONNX Runtime too, from the export
        shipped beside it, unless a CUDA GPU is to be used or ``onnxruntime`` is missing;
        ``"pytorch"`` always loads the ``.pt``; ``"onnxruntime"`` needs the ``.onnx`` beside it.

        Raises:
            CheckpointError: the file is missing, corrupt, foreign or inconsistent.
            ValueError: a CUDA device was asked for an ONNX model; an unknown engine.
        """
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
        path = Path(path or bundled_model_path())
        if path.suffix.lower() == ".onnx":
            if engine == "pytorch":
                raise ValueError(f"{path.name} is an ONNX model; PyTorch runs .pt checkpoints")
            return cls(load_onnx_checkpoint(path), device, region, isolation)
        export = path.with_suffix(".onnx")
        if engine == "onnxruntime" or (engine == "auto" and _serve_with_onnx(path, device)):
            return cls(load_onnx_checkpoint(export, stands_for=path), device, region, isolation)
        from .model import load_checkpoint

        return cls(load_checkpoint(path), device, region, isolation)

    @property
    def name(self) -> str:
        return Path(self.checkpoint.path or "model").name

    def set_region(self, region_id: str) -> None:
        """Switch the bin profile used for new predictions."""
        self.region = get_region(region_id)

    def predict(
        self, image: Any, *, crop: bool | None = None, channels: str = "RGB", tta: bool = False
    ) -> Prediction:
        """Classify one image (path, bytes, PIL image or numpy array).

        ``crop``: isolate the object first (default: on when the classifier's ``isolation``
        backend is not ``"none"``).

        Raises:
            ImageLoadError: the input is not a usable image.
        """
        return self.predict_batch([image], crop=crop, channels=channels, tta=tta)[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        *,
        crop: bool | None = None,
        channels: str = "RGB",
        batch_size: int = 32,
        tta: bool = False,
    ) -> list[Prediction]:
        """Classify many images in batches; all must load (use ``load_image`` first to filter).

        ``tta``: also classify the mirror image and average the probabilities.
        """
        predictions: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            t0 = time.perf_counter()
            pils, boxes = zip(*(self._prepare(im, crop, channels) for im in chunk), strict=True)
            tensors = [self._preprocess(p) for p in pils]
            probs, shifts = self.scores(tensors, tta=tta)
            each = (time.perf_counter() - t0) / len(chunk)
            predictions += [
                self._prediction(p, box, each, s)
                for p, box, s in zip(probs, boxes, shifts, strict=True)
            ]
        return predictions

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        crop: bool | None = None,
        batch_size: int = 16,
        tta: bool = False,
    ) -> Iterator[Prediction | ImageLoadError]:
        """Classify files in order: a ``Prediction``, or the ``ImageLoadError`` of a file that
        does not load, for each path.

        A worker thread decodes and preprocesses the next batch while the network runs this one
        (PIL and numpy release the GIL), which makes a folder faster (``bench/folder_throughput.py``).
        """
        from concurrent.futures import ThreadPoolExecutor

        def prepare(chunk):
            items = []
            for path in chunk:
                try:
                    pil, box = self._prepare(path, crop, "RGB")
                    items.append((self._preprocess(pil), box))
                except ImageLoadError as exc:
                    items.append(exc)
            return items

        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            ahead = pool.submit(prepare, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                t0 = time.perf_counter()
                items = ahead.result()
                if i + 1 < len(chunks):
                    ahead = pool.submit(prepare, chunks[i + 1])
                loaded = [item for item in items if not isinstance(item, ImageLoadError)]
                if loaded:
                    tensors, boxes = zip(*loaded, strict=True)
                    probs, shifts = self.scores(tensors, tta=tta)
                    each = (time.perf_counter() - t0) / len(loaded)
                    done = (
                        self._prediction(p, b, each, s)
                        for p, b, s in zip(probs, boxes, shifts, strict=True)
                    )
                for item in items:
                    yield item if isinstance(item, ImageLoadError) else next(done)

    @property
    def has_familiarity(self) -> bool:
        """Whether predictions carry a shift score (the model has a familiarity reference)."""
        if self.engine == "onnxruntime":
            return self._onnx_shift
        return self._scorer is not None

    def probabilities(self, tensors: Sequence[Any]) -> np.ndarray:
        """Calibrated class probabilities for preprocessed inputs (``transform`` tensors or
        ``transform.array`` arrays), shape (N, classes)."""
        return self._softmax(self.logits(tensors))

    def scores(self, tensors: Sequence[Any], *, tta: bool = False) -> tuple[np.ndarray, list]:
        """Calibrated probabilities (N, classes) and each input's shift score (None without a
        familiarity reference); ``tta`` averages the probabilities with the mirror images'."""
        logits, shifts = self._forward(tensors, shift=True)
        probs = self._softmax(logits)
        if tta:
            probs = (probs + self.probabilities([_mirror(t) for t in tensors])) / 2
        return probs, [None] * len(probs) if shifts is None else [float(v) for v in shifts]

    def logits(self, tensors: Sequence[Any]) -> np.ndarray:
        """The network's raw scores for preprocessed inputs, float32 (N, classes)."""
        return self._forward(tensors, shift=False)[0]

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        scaled = logits / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        return exp / exp.sum(axis=1, keepdims=True)

    def _forward(self, tensors: Sequence[Any], shift: bool) -> tuple[np.ndarray, Any]:
        """(logits, shift scores or None)."""
        if self.engine == "onnxruntime":
            batch = np.stack([np.asarray(t, dtype=np.float32) for t in tensors])
            names = ["logits", "shift"] if shift and self.has_familiarity else ["logits"]
            with self._lock:
                out = run(self.checkpoint.session, names, {"input": batch})
            return out[0], out[1] if len(out) > 1 else None
        import torch

        batch = torch.stack([torch.as_tensor(t) for t in tensors]).to(
            self.device, self.dtype, memory_format=torch.channels_last
        )
        with self._lock, torch.inference_mode():
            if shift and self._scorer is not None:
                logits, shifts = self._scorer(batch)
                return logits.float().cpu().numpy(), shifts.float().cpu().numpy()
            return self.model(batch).float().cpu().numpy(), None

    def _prepare(self, image: Any, crop: bool | None, channels: str):
        pil = load_image(image, channels=channels, draft=self.checkpoint.preprocessing.resize)
        use_crop = self.isolation != "none" if crop is None else crop
        if not use_crop:
            return pil, None
        from .segmentation import apply_box, get_isolator

        backend = self.isolation if self.isolation != "none" else "auto"
        box = get_isolator(backend).isolate(pil).box
        return (apply_box(pil, box) if box else pil), box

    def _prediction(
        self, probs: np.ndarray, box, seconds: float, shift: float | None = None
    ) -> Prediction:
        best = int(np.argmax(probs))
        unfamiliar = shift is not None and shift > 1.0
        label = self.classes[best]
        confidence = float(probs[best])
        return Prediction(
            label=label,
            confidence=confidence,
            probabilities={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            bin=self.region.bin_for(label),
            crop_box=tuple(int(v) for v in box) if box else None,
            seconds=seconds,
            uncertain=confidence < self.threshold or unfamiliar,
            region=self.region.id,
            unfamiliar=unfamiliar,
            shift=shift,
        )


def _mirror(x: Any) -> Any:
    """A preprocessed image flipped left to right (tensor or array)."""
    return x.flip(-1) if hasattr(x, "flip") else np.ascontiguousarray(x[..., ::-1])


def _serve_with_onnx(path: Path, device: str) -> bool:
    """Whether ``engine="auto"`` serves ``path`` with ONNX Runtime: the bundled model, its export
    beside it, a CPU to run on, and ``onnxruntime`` installed."""
    if device not in ("auto", "cpu") or not path.with_suffix(".onnx").is_file():
        return False
    try:
        if not path.resolve().samefile(bundled_model_path().resolve()):
            return False
    except OSError:
        return False
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    if device == "auto" and nvidia_driver_present():
        import torch  # a driver is there: ask whether CUDA is usable, as resolve_device will

        return not torch.cuda.is_available()
    return True
