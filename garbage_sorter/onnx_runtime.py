"""ONNX export, int8 quantisation, and running a model in ONNX Runtime on the CPU.

``garbage-sorter export --onnx OUT [--int8]`` writes the network as ONNX with the checkpoint's
classes, preprocessing and calibration stored in the file's metadata, so the ``.onnx`` file is a
model on its own: ``Classifier.load("model.onnx")`` gives the same :class:`Classifier` (same
preprocessing, same ``Prediction``), with the network run by ONNX Runtime instead of PyTorch.
On 2 CPU cores that is the faster path, and the int8 file faster still (``bench/latency.py``,
BENCHMARKS.md). Grad-CAM needs PyTorch's autograd, so explanations need the ``.pt`` checkpoint.

Exporting and quantising need the ``onnx`` package; running needs only ``onnxruntime``. Both
are imported when first used, so importing the core stays cheap.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .images import ImageLoadError, iter_image_paths, load_image
from .model import Checkpoint, CheckpointError, load_checkpoint
from .presets import EvalTransform, Preprocessing
from .storage import atomic_write

FORMAT = "garbage-sorter-onnx/1"
METADATA_KEY = "garbage_sorter"
OPSET = 17
CALIBRATION_PHOTOS = 256


def export_onnx(
    checkpoint: Checkpoint | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    atol: float = 1e-3,
) -> Path:
    """Write ``checkpoint``'s network to ``path`` as ONNX (fp32, any batch size, its crop size).

    The file is checked before it is kept: ONNX Runtime must give the same logits as PyTorch
    within ``atol`` (relative to the largest logit).

    Raises:
        CheckpointError: the checkpoint cannot be read.
        RuntimeError: ONNX Runtime disagrees with PyTorch on the exported file.
    """
    import onnx

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.build()
    size = ckpt.preprocessing.crop
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # EfficientNet-Lite's "same" padding is computed from the input size while tracing; the
        # spatial size is fixed at the crop size below, so the traced constants are the right ones.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (sample,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _set_metadata(
        proto,
        {
            "format": FORMAT,
            "arch": ckpt.arch,
            "classes": list(ckpt.classes),
            "preprocessing": ckpt.preprocessing.to_dict(),
            "calibration": dict(ckpt.calibration),
            "config": ckpt.config,
            "created": ckpt.created,
            "versions": dict(ckpt.versions),
            "source": Path(ckpt.path).name if ckpt.path else None,
            "quantization": None,
        },
    )
    data = proto.SerializeToString()
    with torch.inference_mode():
        expected = model(sample).numpy()
    got = _session(data, threads=None).run(None, {"input": sample.numpy()})[0]
    error = float(np.abs(got - expected).max())
    if error > atol * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(
            f"ONNX Runtime's logits differ from PyTorch's by {error:.2g}; not written"
        )
    atomic_write(path, data)
    return Path(path)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    photos: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
    *,
    count: int = CALIBRATION_PHOTOS,
) -> Path:
    """Quantise the ONNX model ``src`` to int8 and write it to ``dst``.

    Static quantisation (QDQ, per-channel int8 weights, uint8 activations): the activation ranges
    are measured on ``count`` real photos. Dynamic quantisation, which needs no photos, keeps
    convolutions in float on ONNX Runtime's CPU provider and gains nothing for these networks.

    Args:
        photos: the calibration photos: a list of files, a folder, or a split file/folder
            written by training (its train part is used). Default: the training photos recorded
            in the model, when they are on this machine.
        count: how many photos to calibrate on, spread evenly over the list.

    Raises:
        ValueError: no calibration photos were given or found.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    meta = read_metadata(src)
    files = _calibration_files(photos, meta, count)
    transform = EvalTransform(Preprocessing.from_dict(meta["preprocessing"]))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(files, transform, 16)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    prepared = tmp.with_suffix(".pre.onnx")
    try:
        # Shape inference and graph fusions first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(str(src), str(prepared))
        quantize_static(
            str(prepared),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        proto = onnx.load(str(tmp))
    finally:
        for leftover in (tmp, prepared):
            leftover.unlink(missing_ok=True)
    meta["quantization"] = f"int8 static QDQ, calibrated on {len(files)} photos"
    _set_metadata(proto, meta)
    atomic_write(dst, proto.SerializeToString())
    return dst


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The Garbage Sorter metadata stored in an exported ONNX file.

    Raises:
        CheckpointError: the file is missing, not ONNX, or not exported by Garbage Sorter.
    """
    name = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{name}: no such model file")
    try:
        meta = _session(name, threads=1).get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise CheckpointError(
            f"{name}: not a readable ONNX model ({str(exc).splitlines()[0][:160]})"
        ) from None
    try:
        data = json.loads(meta[METADATA_KEY])
    except (KeyError, ValueError):
        raise CheckpointError(
            f"{name}: an ONNX model without Garbage Sorter metadata "
            "(export it with garbage-sorter export --onnx)"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{name}: unknown Garbage Sorter ONNX format {data.get('format')!r}")
    return data


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call the classifier makes.

    It has no parameters, so ``.to()`` and ``.eval()`` leave it as it is, and
    :class:`~garbage_sorter.classifier.Classifier` runs it like the PyTorch network.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        super().__init__()
        self.path = str(path)
        self.session = _session(self.path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"input": array})[0])


@dataclass
class OnnxCheckpoint(Checkpoint):
    """An exported ONNX file seen as a :class:`Checkpoint`: same classes, preprocessing and
    calibration, and a network that runs in ONNX Runtime (``threads`` intra-op threads)."""

    threads: int | None = None

    def build(self) -> nn.Module:
        return OnnxNetwork(self.path, self.threads)


def load_onnx_checkpoint(
    path: str | os.PathLike[str], threads: int | None = None
) -> OnnxCheckpoint:
    """Open an exported ONNX model for :class:`~garbage_sorter.classifier.Classifier`.

    ``threads``: ONNX Runtime's intra-op threads (default: one per physical core).

    Raises:
        CheckpointError: the file is missing, not ONNX, or its metadata is unusable.
    """
    meta = read_metadata(path)
    try:
        ckpt = OnnxCheckpoint(
            arch=str(meta["arch"]),
            classes=[str(c) for c in meta["classes"]],
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            state_dict={},
            calibration={k: float(v) for k, v in meta.get("calibration", {}).items()},
            config=meta.get("config") or {},
            metrics={"quantization": meta.get("quantization")},
            created=str(meta.get("created") or ""),
            versions=dict(meta.get("versions") or {}),
            path=str(path),
            threads=threads,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: ONNX metadata is missing or has bad fields ({exc})"
        ) from None
    if len(ckpt.classes) < 2 or not ckpt.calibration.get("temperature", 1.0) > 0:
        raise CheckpointError(f"{path}: ONNX metadata has unusable classes or calibration")
    return ckpt


def _session(model: str | bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # One request at a time per session (the classifier holds a lock): no inter-op pool.
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _set_metadata(proto, data: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)


def _calibration_files(photos, meta: dict[str, Any], count: int) -> list[Path]:
    if photos is None:
        files = _training_photos(meta.get("config") or {})
        if not files:
            raise ValueError(
                "int8 quantisation needs calibration photos, and the model's training "
                "photos are not on this machine: give a folder of photos or a split folder "
                "(garbage-sorter export --int8 --calibration PATH, e.g. docs/model/split "
                "in a checkout of the project)"
            )
    elif isinstance(photos, (str, os.PathLike)):
        files = _photos_at(Path(photos))
        if not files:
            raise ValueError(f"{photos}: no photos to calibrate on")
    else:
        files = [Path(p) for p in photos]
    if not files:
        raise ValueError("no calibration photos given")
    step = max(1, len(files) // count)
    return files[::step][:count]


def _photos_at(path: Path) -> list[Path]:
    """Photos in a folder (recursively), or the train part of a split file/folder."""
    from .evaluation import EvaluationError, read_labelled

    split = path / "train.txt" if path.is_dir() else path
    if split.is_file():
        try:
            return [p for p, _, _ in read_labelled(split, "train") if p.is_file()]
        except EvaluationError:
            return []
    return list(iter_image_paths([path])) if path.is_dir() else []


def _training_photos(config: dict[str, Any]) -> list[Path]:
    for candidate in (config.get("splits"), config.get("out") and Path(config["out"]) / "splits"):
        if candidate and (files := _photos_at(Path(candidate))):
            return files
    return [
        p
        for folder in config.get("data") or []
        if Path(folder).is_dir()
        for p in iter_image_paths([folder])
    ]


def _batches(files: Sequence[Path], transform: EvalTransform, size: int) -> Iterator[np.ndarray]:
    arrays = []
    for path in files:
        try:
            arrays.append(transform.array(load_image(path, draft=transform.prep.resize)))
        except ImageLoadError:
            continue  # a damaged photo says nothing about activation ranges
        if len(arrays) == size:
            yield np.stack(arrays)
            arrays = []
    if arrays:
        yield np.stack(arrays)
