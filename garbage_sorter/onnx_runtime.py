"""ONNX export, int8 quantisation, and running a model in ONNX Runtime on the CPU.

``garbage-sorter export --onnx OUT [--int8]`` writes the network as ONNX with the checkpoint's
classes, preprocessing and calibration stored in the file's metadata, so the ``.onnx`` file is a
model on its own: ``Classifier.load("model.onnx")`` gives the same :class:`Classifier` (same
preprocessing, same ``Prediction``), with the network run by ONNX Runtime instead of PyTorch.
On 2 CPU cores that is the faster path (``bench/latency.py``, BENCHMARKS.md), and the bundled
model ships its export beside the ``.pt``: ``Classifier.load()`` serves it with ONNX Runtime.

Besides the logits the graph outputs ``cams``, each class's activation map over the last feature
map (the head's weights applied at every position before pooling). For a linear head over global
average pooling that is Grad-CAM without gradients, so the "why?" heatmap needs no PyTorch.
A checkpoint with a familiarity reference adds ``shift``, each photo's shift score
(``familiarity.py``: above 1, the photo looks unlike the training photos).

Running needs only ``onnxruntime``, numpy and Pillow: this module imports torch (and ``onnx``)
only to export and quantise, so classifying with ONNX Runtime never loads PyTorch.
"""

from __future__ import annotations

import functools
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .images import ImageLoadError, iter_image_paths, load_image
from .presets import EvalTransform, Preprocessing
from .storage import atomic_write, file_sha256

FORMAT = "garbage-sorter-onnx/1"
METADATA_KEY = "garbage_sorter"
OPSET = 17
OUTPUTS = ("logits", "cams")  # and "shift" when the checkpoint has a familiarity reference
CALIBRATION_PHOTOS = 256


def export_onnx(
    checkpoint: Any,
    path: str | os.PathLike[str],
    *,
    atol: float = 1e-3,
) -> Path:
    """Write ``checkpoint``'s network to ``path`` as ONNX (fp32, any batch size, its crop size).

    ``checkpoint``: a :class:`~garbage_sorter.model.Checkpoint` or the path of a ``.pt`` file.
    The graph has two outputs, ``logits`` and ``cams`` (see the module docstring); the metadata
    records the SHA-256 of the ``.pt`` file it came from, so a shipped pair can be checked.
    The file is checked before it is kept: ONNX Runtime must give the same logits and maps as
    PyTorch within ``atol`` (relative to the largest value).

    Raises:
        CheckpointError: the checkpoint cannot be read.
        RuntimeError: ONNX Runtime disagrees with PyTorch on the exported file.
    """
    import torch

    from .model import Checkpoint, load_checkpoint

    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    else:  # a path, or a checkpoint served by ONNX Runtime: export from its .pt file
        ckpt = load_checkpoint(getattr(checkpoint, "path", checkpoint))
    size = ckpt.preprocessing.crop
    model = _with_cams(_fixed_padding(ckpt.build(), size), ckpt.arch, ckpt.familiarity)
    outputs = (*OUTPUTS, "shift") if ckpt.familiarity is not None else OUTPUTS
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # EfficientNet-Lite's "same" padding is computed from the input size while tracing; the
        # spatial size is fixed at the crop size below, so the traced constants are the right ones.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The fixed padding exports as a few constant nodes the simplification folds.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            (sample,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)},
        )
    proto = _simplified(buffer.getvalue())
    source = Path(ckpt.path) if ckpt.path else None
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
            "source": source.name if source else None,
            "source_sha256": file_sha256(source) if source and source.is_file() else None,
            "outputs": list(outputs),
            "quantization": None,
        },
    )
    data = proto.SerializeToString()
    with torch.inference_mode():
        expected = [t.numpy() for t in model(sample)]
    got = run(_session(data, threads=None), outputs, {"input": sample.numpy()})
    for name, want, have in zip(outputs, expected, got, strict=True):
        error = float(np.abs(have - want).max())
        if error > atol * max(1.0, float(np.abs(want).max())):
            raise RuntimeError(
                f"ONNX Runtime's {name} differ from PyTorch's by {error:.2g}; not written"
            )
    atomic_write(path, data)
    return Path(path)


def _simplified(data: bytes):
    """The exported graph with constants folded (ONNX Runtime's basic level, which keeps to
    standard ONNX operators) and each zero ``Pad`` before a convolution moved into the
    convolution's own (asymmetric) padding: fewer nodes to set up at load, no copies to run."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        proto = onnx.load(options.optimized_model_filepath)
    graph = proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = [n for n in graph.node if pad.output[0] in n.input]
        pads = constants.get(pad.input[1]) if len(pad.input) > 1 else None
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        zero = len(pad.input) < 3 or not pad.input[2] or not constants[pad.input[2]].any()
        if pads is None or mode != b"constant" or not zero or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or pads.shape != (8,) or pads[[0, 1, 4, 5]].any():
            continue
        attr = next((a for a in conv.attribute if a.name == "pads"), None)
        if attr is None:
            attr = conv.attribute.add()
            attr.name, attr.type = "pads", onnx.AttributeProto.INTS
            attr.ints.extend([0, 0, 0, 0])
        merged = [int(v) + int(p) for v, p in zip(attr.ints, pads[[2, 3, 6, 7]], strict=True)]
        del attr.ints[:]
        attr.ints.extend(merged)
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for unused in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(unused)
    return proto


def _fixed_padding(model: Any, size: int) -> Any:
    """``model`` with EfficientNet-Lite's "same" padding turned into constants for ``size`` px.

    Traced as it is, every padded convolution takes a chain of shape arithmetic and a ``Pad`` of
    its own (17 in Lite0, some 400 small nodes a run); with constants ONNX Runtime folds the
    padding into the convolutions. The export is fixed at the crop size anyway.
    """
    import torch
    from torch.nn import functional as F

    from .archs import SameConv2d

    seen: dict[Any, tuple[int, int]] = {}

    def record(conv, args) -> None:
        seen[conv] = tuple(args[0].shape[-2:])

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, SameConv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    for conv, (ih, iw) in seen.items():
        (kh, kw), (sh, sw) = conv.weight.shape[-2:], conv.stride
        pad_h = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pad_w = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

        def forward(x, conv=conv, pads=pads):
            padding = (pads[2], pads[0])
            if pads[0] != pads[1] or pads[2] != pads[3]:  # TensorFlow's extra bottom/right pixel
                x, padding = F.pad(x, list(pads)), (0, 0)
            return F.conv2d(
                x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups
            )

        conv.forward = forward
    return model


def _with_cams(model: Any, arch: str, familiarity: dict[str, Any] | None = None) -> Any:
    """``model`` with a second output: the head applied at every position of the last feature
    map, (N, classes, h, w). Its spatial mean plus the bias is the logits. With a
    ``familiarity`` reference, a third: the shift score (N,)."""
    import torch
    from torch.nn import functional as F

    from .archs import feature_map
    from .familiarity import ShiftScore
    from .model import head_name

    class LogitsAndCams(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.head = getattr(model, head_name(arch))
            self.shift = ShiftScore(model, arch, familiarity) if familiarity else None

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if self.shift is None:
                fmap = feature_map(self.net, arch, x)
            else:
                fmap, style = self.shift.style.collect(lambda t: feature_map(self.net, arch, t), x)
            logits = self.head(fmap.mean((2, 3)))
            cams = F.conv2d(fmap, self.head.weight[:, :, None, None])
            if self.shift is None:
                return logits, cams
            return logits, cams, self.shift.score(style)

    return LogitsAndCams().eval()


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
    return _metadata(_open(path, threads=1), path)


def _open(path: str | os.PathLike[str], threads: int | None):
    name = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{name}: no such model file")
    try:
        return _session(name, threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise CheckpointError(
            f"{name}: not a readable ONNX model ({str(exc).splitlines()[0][:160]})"
        ) from None


def _metadata(session, path: str | os.PathLike[str]) -> dict[str, Any]:
    name = str(path)
    meta = session.get_modelmeta().custom_metadata_map
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


@dataclass
class OnnxCheckpoint:
    """An exported ONNX model seen as a checkpoint: the same classes, preprocessing, calibration
    and ``card()`` as :class:`~garbage_sorter.model.Checkpoint`, and an open ONNX Runtime session
    instead of weights.

    ``path`` is the model a user knows (the ``.onnx`` file, or for the bundled model the ``.pt``
    it was exported from, which retraining and adapting start from); ``onnx_path`` is the file
    the session runs.
    """

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    session: Any = field(repr=False)
    onnx_path: str
    calibration: dict[str, float] = field(
        default_factory=lambda: {"temperature": 1.0, "threshold": 0.0}
    )
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

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
            "onnx": self.onnx_path,
        }

    @property
    def has_cams(self) -> bool:
        """Whether the graph outputs class activation maps (exports before them did not)."""
        return "cams" in {o.name for o in self.session.get_outputs()}


def load_onnx_checkpoint(
    path: str | os.PathLike[str],
    threads: int | None = None,
    *,
    stands_for: str | os.PathLike[str] | None = None,
) -> OnnxCheckpoint:
    """Open an exported ONNX model for :class:`~garbage_sorter.classifier.Classifier`.

    ``threads``: ONNX Runtime's intra-op threads (default: one per core this process may use).
    ``stands_for``: the ``.pt`` file this export serves (its ``path``); default the ONNX file.

    Raises:
        CheckpointError: the file is missing, not ONNX, or its metadata is unusable.
    """
    session = _open(path, threads)
    meta = _metadata(session, path)
    try:
        ckpt = OnnxCheckpoint(
            arch=str(meta["arch"]),
            classes=[str(c) for c in meta["classes"]],
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            session=session,
            onnx_path=str(path),
            calibration={k: float(v) for k, v in meta.get("calibration", {}).items()},
            config=meta.get("config") or {},
            metrics={"quantization": meta.get("quantization")},
            created=str(meta.get("created") or ""),
            versions=dict(meta.get("versions") or {}),
            path=str(stands_for or path),
            metadata=meta,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: ONNX metadata is missing or has bad fields ({exc})"
        ) from None
    if len(ckpt.classes) < 2 or not ckpt.calibration.get("temperature", 1.0) > 0:
        raise CheckpointError(f"{path}: ONNX metadata has unusable classes or calibration")
    return ckpt


def run(session, outputs: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` with explicit run options.

    Left to its default (``None``), onnxruntime 1.32's ``run`` now and then drops a reference to
    Python's ``None`` that it never took; Python 3.11 counts references to ``None`` too, so a
    process that runs the model for long enough (the app's camera loop, tens of runs a second)
    dies with "deallocating None". With a ``RunOptions`` object no reference goes missing
    (``tests/test_onnx.py``).
    """
    return session.run(list(outputs), feed, _run_options())


@functools.cache
def _run_options():
    import onnxruntime as ort

    return ort.RunOptions()


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _session(model: str | bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread per usable core: ONNX Runtime's own default counts the host's cores, which in a
    # container limited to 2 CPUs oversubscribes them.
    options.intra_op_num_threads = threads or usable_cores()
    # One request at a time per session (the classifier holds a lock): no inter-op pool.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle threads sleep instead of spinning: a spinning thread takes a core that the decoding
    # thread, the app or another process needs. Under load that halved the time a photo (BENCHMARKS.md,
    # "Fast by default"); on quiet cores waking them costs little next to a run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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
