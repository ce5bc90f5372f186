"""Give a checkpoint its familiarity reference (``garbage_sorter/familiarity.py``) from the
photos it was trained on, without touching anything else in the file.

The reference comes from the training photos of a saved split and the threshold from its
validation photos; test photos are not read. Training does this itself for the models it
writes; this script serves checkpoints written before that, such as the bundled one:

    python scripts/fit_familiarity.py resources/models/garbage_sorter.pt docs/model/split

Re-export the ONNX file afterwards (``garbage-sorter export --onnx``): the graph computes the
score.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
from garbage_sorter.training.data import load_split

from garbage_sorter.familiarity import fit_record
from garbage_sorter.images import load_image
from garbage_sorter.model import load_checkpoint
from garbage_sorter.presets import EvalTransform
from garbage_sorter.storage import atomic_save

BATCH = 32


def batches(paths: list[str], transform: EvalTransform, resize: int):
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        print(f"  {start + len(chunk)}/{len(paths)}", file=sys.stderr, flush=True)
        yield torch.stack([transform(load_image(p, draft=resize)) for p in chunk])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the .pt checkpoint to add the reference to")
    parser.add_argument("split", type=Path, help="its saved split folder (train.txt, val.txt)")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.model)
    split = load_split(args.split)
    transform = EvalTransform(ckpt.preprocessing)
    model = ckpt.build().to(memory_format=torch.channels_last)
    sources = sorted({s.source for s in split["train"]})
    record = fit_record(
        model,
        ckpt.arch,
        batches([s.path for s in split["train"]], transform, ckpt.preprocessing.resize),
        batches([s.path for s in split["val"]], transform, ckpt.preprocessing.resize),
        fitted_on={
            "train_photos": len(split["train"]),
            "val_photos": len(split["val"]),
            "sources": sources,
        },
    )
    data = torch.load(args.model, map_location="cpu", weights_only=True)
    data["familiarity"] = record
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_save(args.model, lambda handle: handle.write(buffer.getbuffer()))
    print(
        f"{args.model}: familiarity threshold {record['threshold']:.2f} from {len(split['val'])} validation photos"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
