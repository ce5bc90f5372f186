"""U2-Net-P at 320 px (its own size) against 256 px: time per photo and the crop rule's decisions.

    python bench/isolation_size.py

Runs both on every 12th TrashNet photo and every 8th real-world photo (269 photos), one after the
other per photo, and prints the median time of each, how often the crop rule makes the same
decision (crop, or the whole image), and how well the boxes agree where both crop.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
from common import PHOTOS, command_line, machine_line


def box_iou(p, q) -> float:
    left, top, right, bottom = max(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), min(p[3], q[3])
    inter = max(0, right - left) * max(0, bottom - top)

    def area(b):
        return (b[2] - b[0]) * (b[3] - b[1])

    return inter / (area(p) + area(q) - inter)


def main() -> int:
    from garbage_sorter.images import load_image
    from garbage_sorter.segmentation import U2NetPIsolator

    data = PHOTOS.parent
    files = sorted((data / "trashnet").rglob("*.jpg"))[::12]
    files += sorted((data / "realworld").rglob("*.jpg"))[::8]
    big, small = U2NetPIsolator(size=320), U2NetPIsolator(size=256)
    big.isolate(load_image(files[0]))
    small.isolate(load_image(files[0]))
    same, ious, t_big, t_small = 0, [], [], []
    for path in files:
        image = load_image(path)
        a, b = big.isolate(image), small.isolate(image)
        t_big.append(a.seconds)
        t_small.append(b.seconds)
        if (a.box is None) == (b.box is None):
            same += 1
            if a.box is not None:
                ious.append(box_iou(a.box, b.box))
    ious = np.array(ious)
    print(f"Command: {command_line()}\n\nMachine: {machine_line()}\n")
    print(
        f"{len(files)} photos; median time 320 px {1e3 * statistics.median(t_big):.0f} ms, "
        f"256 px {1e3 * statistics.median(t_small):.0f} ms"
    )
    print(
        f"same decision (crop or whole image): {same}/{len(files)}; both cropped {len(ious)}, "
        f"box IoU median {np.median(ious):.3f}, >= 0.8 on {(ious >= 0.8).sum()}/{len(ious)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
