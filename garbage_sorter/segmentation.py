"""Object isolation: find the item in a photo and the box to crop it to before classifying.

A photo of waste often shows the item small on a table, floor or hand; cropping to it makes the
classifier look at the item instead of the surroundings. Three backends share one interface:

* ``"u2netp"`` -- U2-Net-P salient-object model (4.6 MB, bundled) through ONNX Runtime;
* ``"grabcut"`` -- OpenCV GrabCut from a centred rectangle, when ONNX Runtime or the model is absent;
* ``"none"`` -- no isolation, the whole image.

Every backend returns an :class:`Isolation`. The crop rule (:func:`crop_box_from_mask`) is shared
and deliberately cautious: a wrong crop (to a label on a frame-filling box) costs far more than no
crop, so a mask that does not look like one confident object falls back to the whole image.

The rule's thresholds were set by looking at U2-Net-P's 320 px masks on 1,266 real photos: every
TrashNet cardboard and paper photo, 50 of each other TrashNet class, the 73 floor photos and 150
TACO crops. With them, 69 of 73 floor photos are cropped to the item; 239 of 341 TrashNet cardboard
photos (mostly frame-filling close-ups, whose salient parts are tape, labels and print) fall back;
of 200 TrashNet cans, bottles and wrappers on the board 142 are cropped, 31 fill the frame and 27
fall back. The known miss: a single label or strip of tape on a close-up, crisp and larger than 3%
of the frame, is still taken for an object (about a quarter of the 68 cardboard crops, 5% of the
cardboard photos); only the classifier can tell tape on a box from an item on a table.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

BACKENDS = ("u2netp", "grabcut", "none")

# U2-Net-P was trained at 320 px and ships with that input size fixed; the crop rule's thresholds
# were set on its 320 px masks, and the rule judges masks at no more than 320 px a side. Its graph
# computes every upsampling size from its input, so the input can be freed at load time and run
# smaller. DEFAULT_SIZE is 256 px: 172 ms a photo instead of 273 ms on 2 cores, with the same
# accuracy for every model in bench/background_shift.py (BENCHMARKS.md, background-shift section).
_U2_SIZE = 320
DEFAULT_SIZE = 256

# The app, the web page, `/predict` and `classify` classify the whole photo unless asked to
# isolate the object first (`--crop`, the View toggle, the page's checkbox). Isolation won on the
# synthetic background-shift set the team built and tuned on (79.4% against 76.9%), but on 1,675
# real-world photos nobody had seen it bought nothing: 0.479 isolated against 0.482 whole, at
# about ten times the time (135-216 ms a photo against 17 ms on 2 cores), and on held-back
# TrashNet photos it cost 1.3 points (0.885 against 0.898). BENCHMARKS.md, "Fast by default".
ISOLATE_BY_DEFAULT = False
_U2_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_U2_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# GrabCut costs pixels x iterations; 200 px and 2 iterations keep it near U2-Net-P's time, and a
# crop box needs no finer outline.
_GRABCUT_MAX_SIDE = 200
_GRABCUT_ITERATIONS = 2
# The centred starting rectangle leaves this fraction of each side as sure background.
_GRABCUT_INSET = 0.05


@dataclass(frozen=True)
class Isolation:
    """Where the object is in one image, and how to crop to it."""

    mask: np.ndarray | None  # HxW float32 in [0, 1] at the input's size; None for backend "none"
    # (left, top, right, bottom) in image pixels; None = the whole image (after a fallback, or
    # when the object fills the frame)
    box: tuple[int, int, int, int] | None
    seconds: float  # wall time the backend took
    backend: str  # name of the backend that produced it
    fallback: bool  # True when the mask was implausible and the whole image is used


class Isolator(Protocol):
    """A backend: one photo in, one :class:`Isolation` out. Instances are safe to reuse."""

    name: str

    def isolate(self, image: Image.Image) -> Isolation: ...


def crop_box_from_mask(
    mask: np.ndarray,
    *,
    margin: float = 0.12,
    threshold: float = 0.5,
    min_area: float = 0.03,
    small_area: float = 0.25,
    max_area: float = 0.9,
    keep_ratio: float = 0.25,
    border: float = 0.02,
    min_confidence: float = 0.9,
    max_outside: float = 0.2,
    min_aspect: float = 0.75,
) -> tuple[int, int, int, int] | None:
    """The crop box for an object mask, or None when the mask is not plausibly one object.

    The defaults were set on TrashNet (objects on a white board, and frame-filling close-ups of
    boxes and flyers whose salient parts are their printing) and on real-world photos (TACO,
    floor photos); see the module docstring. The mask is judged at no more than 320 px a side
    (U2-Net-P's own resolution), which keeps this cheap for a 12-megapixel photo.

    Args:
        mask: HxW array in [0, 1], higher = object.
        margin: context added on each side, as a fraction of the object box's width/height.
        threshold: mask value above which a pixel is object.
        min_area: object area (fraction of the image) below which the mask is taken to be empty
            or a bit of printing (barcodes and tape on close-ups: 1-3%; a small can alone: 4%).
        small_area: object area below which the object must not touch the image border; such
            regions are mostly the printed half of a frame-filling flyer or box side.
        max_area: object area above which the mask covers "everything" and is not trusted.
        keep_ratio: besides the largest component, keep those at least this fraction of its
            area (a bottle's transparent middle can split its mask in two).
        border: distance from the image edge, as a fraction of the side, that counts as touching.
        min_confidence: least mean mask value over the object. Real objects score 0.94-0.99;
            a hesitant mask (0.75-0.9) is the model guessing at a texture.
        max_outside: highest mask value allowed outside the final box. Other salient things
            left out of the crop (more tape and labels on a close-up, clutter) make the scene
            ambiguous; on TrashNet objects against the board the map is ~0 there.
        min_aspect: the box is widened/heightened to at least this short/long side ratio, since
            the classifier centre-crops a square and would cut the ends off a thin box.

    Returns:
        ``(left, top, right, bottom)`` in mask pixels (right/bottom exclusive), possibly the whole
        image when the object fills the frame; ``None`` when the whole image should be used
        because the mask is implausible.
    """
    import cv2

    mask = np.asarray(mask, dtype=np.float32)
    full_h, full_w = mask.shape
    scale = min(1.0, _U2_SIZE / max(full_h, full_w))
    if scale < 1.0:
        size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
    h, w = mask.shape
    fg = (mask > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    ids = np.flatnonzero(areas >= keep_ratio * areas.max())
    keep = stats[1:][ids]
    area = keep[:, cv2.CC_STAT_AREA].sum() / float(h * w)
    if area < min_area or area > max_area:
        return None
    left = int(keep[:, cv2.CC_STAT_LEFT].min())
    top = int(keep[:, cv2.CC_STAT_TOP].min())
    right = int((keep[:, cv2.CC_STAT_LEFT] + keep[:, cv2.CC_STAT_WIDTH]).max())
    bottom = int((keep[:, cv2.CC_STAT_TOP] + keep[:, cv2.CC_STAT_HEIGHT]).max())
    bx, by = border * w, border * h
    touches = left <= bx or top <= by or right >= w - bx or bottom >= h - by
    if area < small_area and touches:
        return None
    obj = np.isin(labels, ids + 1)
    if float(mask[obj].mean()) < min_confidence:
        return None

    bw, bh = right - left, bottom - top
    left, right = left - margin * bw, right + margin * bw
    top, bottom = top - margin * bh, bottom + margin * bh
    # Grow the short side about the centre; shift back inside the image rather than clip, so the
    # ratio survives near the edges where possible.
    bw, bh = right - left, bottom - top
    if bw < min_aspect * bh:
        left, right = _grow(left, right, min_aspect * bh, w)
    elif bh < min_aspect * bw:
        top, bottom = _grow(top, bottom, min_aspect * bw, h)
    outside = mask.copy()
    outside[max(0, int(top)) : int(np.ceil(bottom)), max(0, int(left)) : int(np.ceil(right))] = 0
    if outside.max() > max_outside:
        return None
    sx, sy = full_w / w, full_h / h
    return (
        max(0, round(left * sx)),
        max(0, round(top * sy)),
        min(full_w, round(right * sx)),
        min(full_h, round(bottom * sy)),
    )


def _grow(lo: float, hi: float, size: float, limit: int) -> tuple[float, float]:
    """Widen [lo, hi) to ``size`` about its centre, shifted to stay within [0, limit)."""
    size = min(size, float(limit))
    centre = (lo + hi) / 2
    lo = min(max(0.0, centre - size / 2), limit - size)
    return lo, lo + size


def apply_box(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """Crop ``image`` to ``box`` (as given by an :class:`Isolation`); None returns it unchanged."""
    if box is None:
        return image
    return image.crop(box)


def _finish(mask: np.ndarray, backend: str, start: float, **rule: float) -> Isolation:
    """Apply the crop rule to a full-size mask and package the result."""
    box = crop_box_from_mask(mask, **rule)
    h, w = mask.shape
    fallback = box is None
    if box == (0, 0, w, h):
        box = None  # the object fills the frame: nothing to crop, but the mask was fine
    return Isolation(mask, box, time.perf_counter() - start, backend, fallback)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def default_model_path() -> Path:
    """Where the bundled U2-Net-P model lives in the installed package."""
    return Path(str(resources.files("garbage_sorter.resources") / "models" / "u2netp.onnx"))


class U2NetPIsolator:
    """U2-Net-P salient-object detection through ONNX Runtime (about 0.2 s per image on 2 cores).

    ``size``: the side the photo is resized to for the network; 320 is the model's own size.
    """

    name = "u2netp"

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path) if model_path is not None else default_model_path()
        options = ort.SessionOptions()
        # Two threads: more gives little on this small net and starves the GUI and camera threads.
        options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        model, self.size = _free_input_size(path, size)
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        # Output 0 is the fused map d0; the six side outputs are training-time supervision.
        self._output = self._session.get_outputs()[0].name

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """The saliency map (HxW float32 in [0, 1]) at the image's size."""
        import cv2

        from .onnx_runtime import run

        image = _rgb(image)
        # reducing_gap: a 12-megapixel photo is first shrunk cheaply, then filtered as rembg does.
        small = np.asarray(
            image.resize((self.size, self.size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        )
        x = small.astype(np.float32) / max(int(small.max()), 1)  # rembg divides by the max
        x = ((x - _U2_MEAN) / _U2_STD).transpose(2, 0, 1)[None]
        feed = {self._input: np.ascontiguousarray(x)}
        out = run(self._session, [self._output], feed)[0][0, 0]  # run options: see run()
        # rembg stretches the map to min..max; we keep the network's own sigmoid values so that a
        # photo with nothing salient (a close-up of cardboard) stays dark instead of amplified noise.
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        return cv2.resize(out, image.size, interpolation=cv2.INTER_LINEAR)

    def isolate(self, image: Image.Image) -> Isolation:
        start = time.perf_counter()
        return _finish(self.predict_mask(image), self.name, start)


def _free_input_size(path: Path, size: int) -> tuple[str | bytes, int]:
    """The model with its input's height and width left free, and the size to run it at; the
    file as it is, at its own size, where the ``onnx`` package or a free size cannot be had."""
    if size == _U2_SIZE:
        return str(path), size
    try:
        import onnx

        model = onnx.load(str(path))
        for value in (*model.graph.input, *model.graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4:
                for dim, name in ((dims[2], "height"), (dims[3], "width")):
                    dim.dim_param = name  # replaces the fixed dim_value (a oneof)
        return model.SerializeToString(), size
    except (ImportError, OSError, ValueError, AttributeError):
        return str(path), _U2_SIZE


class GrabCutIsolator:
    """OpenCV GrabCut, started from a centred rectangle on a downscaled copy (no model needed)."""

    name = "grabcut"

    def __init__(
        self, max_side: int = _GRABCUT_MAX_SIDE, iterations: int = _GRABCUT_ITERATIONS
    ) -> None:
        self.max_side = max_side
        self.iterations = iterations

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """The object mask (HxW float32 in {0..1}, softened at the edge) at the image's size."""
        import cv2

        image = _rgb(image)
        w, h = image.size
        scale = min(1.0, self.max_side / max(w, h))
        sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
        small = np.asarray(image.resize((sw, sh), Image.Resampling.BILINEAR, reducing_gap=3.0))
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        dx, dy = max(1, round(_GRABCUT_INSET * sw)), max(1, round(_GRABCUT_INSET * sh))
        rect = (dx, dy, sw - 2 * dx, sh - 2 * dy)
        labels = np.zeros((sh, sw), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        # A fixed RNG seed inside OpenCV's k-means keeps GrabCut's result repeatable.
        cv2.setRNGSeed(0)
        cv2.grabCut(bgr, labels, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
        fg = cv2.GaussianBlur(fg, (5, 5), 0)
        return cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)

    def isolate(self, image: Image.Image) -> Isolation:
        start = time.perf_counter()
        # The starting rectangle keeps GrabCut off the outer inset, so "touching the border"
        # means reaching the rectangle.
        mask = self.predict_mask(image)
        return _finish(mask, self.name, start, border=_GRABCUT_INSET + 0.02)


class NoIsolator:
    """No isolation: always the whole image."""

    name = "none"

    def isolate(self, image: Image.Image) -> Isolation:
        return Isolation(None, None, 0.0, self.name, False)


def resolve_backend(name: str = "auto") -> str:
    """The concrete backend ``name`` stands for; ``"auto"`` prefers U2-Net-P when it can run."""
    if name == "auto":
        has_ort = importlib.util.find_spec("onnxruntime") is not None
        return "u2netp" if has_ort and default_model_path().is_file() else "grabcut"
    if name not in BACKENDS:
        raise ValueError(
            f"unknown isolation backend {name!r}; choose from auto, {', '.join(BACKENDS)}"
        )
    return name


def get_isolator(name: str = "auto") -> Isolator:
    """The shared isolator for ``name`` ("u2netp", "grabcut", "none" or "auto").

    One instance per backend per process, so the ONNX session is loaded once; safe to call from
    several threads (the first caller builds it, the others wait).
    """
    name = resolve_backend(name)
    with _LOCK:
        if name not in _ISOLATORS:
            _ISOLATORS[name] = _BUILDERS[name]()
        return _ISOLATORS[name]


_BUILDERS: dict[str, type] = {
    "u2netp": U2NetPIsolator,
    "grabcut": GrabCutIsolator,
    "none": NoIsolator,
}
_ISOLATORS: dict[str, Isolator] = {}
_LOCK = threading.Lock()
