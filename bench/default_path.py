"""The default path against baselines from the same run: latency, start-up, folders, agreement.

    python bench/default_path.py [--rounds 60] [--runs 7] [--split docs/model/split/test.txt]

1. Single photo, file to probabilities, cases interleaved photo by photo in one process: the
   naive eager ResNet-18 pipeline (``PIL.Image.open``, torchvision transforms, fp32 under
   ``no_grad``, 2 PyTorch threads), ``Classifier.load().predict(path)`` (the default: ONNX
   Runtime on the bundled model) and the bundled ``.pt`` in PyTorch (``engine="pytorch"``), on
   TrashNet's 341x256 photos and on the same photos as 2000x1500 and 4032x3024 (12 MP) JPEGs.
2. ``garbage-sorter classify one.jpg``: wall and CPU seconds of the whole command, against
   ``python -c pass`` and ``python -c "import torch"``, runs interleaved.
3. ``garbage-sorter classify --json FOLDER`` on 64 photos: photos per second, whole command.
4. Agreement: the default path's labels against the ``.pt`` in PyTorch, whole image, on every
   photo of the committed test split (``docs/model/split/test.txt``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    REPO,
    command_line,
    interleave,
    machine_line,
    make_checkpoint,
    median,
    naive_pipeline,
    p95,
    photo_files,
    run_in_work_folder,
    set_torch_threads,
    table,
    upscaled,
)

from garbage_sorter.classifier import Classifier
from garbage_sorter.onnx_runtime import usable_cores

PHOTOS = REPO.parent / "shared" / "data" / "trashnet"
SIZES = {"2000x1500": (2000, 1500), "4032x3024": (4032, 3024)}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60, help="timed calls per latency case")
    p.add_argument(
        "--distinct", type=int, default=20, help="photos the latency calls cycle through"
    )
    p.add_argument("--runs", type=int, default=7, help="runs of each start-up command")
    p.add_argument("--photos", type=Path, default=PHOTOS)
    p.add_argument("--split", type=Path, default=REPO / "docs" / "model" / "split" / "test.txt")
    p.add_argument("--work", type=Path, help="folder for models and photos (default: temporary)")
    return p


def latency(args: argparse.Namespace, work: Path) -> list[str]:
    small = photo_files(args.photos, args.distinct)
    sets = {"341x256": small}
    for name, size in SIZES.items():
        sets[name] = upscaled(small, work / name, size)
    naive = naive_pipeline(make_checkpoint("resnet18", work))
    # (pipeline, PyTorch threads while it runs): naive at 1 and 2 threads, the faster the baseline
    runners = {
        ("naive ResNet-18 (PyTorch)", 1): naive,
        ("naive ResNet-18 (PyTorch)", 2): naive,
        ("Classifier.load().predict (default)", 2): Classifier.load().predict,
        ("bundled .pt in PyTorch", 2): Classifier.load(engine="pytorch").predict,
    }
    cases = {
        (size, *key): (lambda r, fn=fn, paths=paths: fn(paths[r % len(paths)]))
        for size, paths in sets.items()
        for key, fn in runners.items()
    }
    times = interleave(cases, args.rounds, before=lambda name: set_torch_threads(name[-1]))
    rows = []
    for size in sets:
        base = min(median(times[(size, *key)]) for key in runners if key[0].startswith("naive"))
        for key in runners:
            t = times[(size, *key)]
            threads = key[1] if "default" not in key[0] else f"{usable_cores()} (ORT)"
            ms = (f"{median(t) * 1e3:.1f}", f"{p95(t) * 1e3:.1f}")
            rows.append([size, key[0], threads, *ms, f"{median(t) / base:.2f}"])
    return [
        f"Single photo, file to probabilities ({args.rounds} calls per case over {args.distinct} "
        "photos, interleaved); vs naive: against the faster of naive's two thread settings",
        "",
        table(["photo", "pipeline", "threads", "median ms", "p95 ms", "vs naive"], rows),
        "",
    ]


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a command; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands(args: argparse.Namespace, work: Path) -> list[str]:
    cli = shutil.which("garbage-sorter", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("the garbage-sorter console script is not installed (pip install -e .)")
    photo = photo_files(args.photos, 1)[0]
    folder = work / "folder"
    folder.mkdir(exist_ok=True)
    for path in photo_files(args.photos, 64):
        target = folder / f"{path.parent.name}-{path.name}"
        if not target.exists():
            shutil.copy(path, target)
    cases = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
        "garbage-sorter classify one.jpg": [cli, "classify", str(photo)],
        "garbage-sorter classify --crop one.jpg": [cli, "classify", "--crop", str(photo)],
        "garbage-sorter classify --json FOLDER (64 photos)": [
            cli,
            "classify",
            "--json",
            str(folder),
        ],
    }
    measured = {name: [] for name in cases}
    _timed(cases["garbage-sorter classify one.jpg"])  # warm the file cache
    for r in range(args.runs):
        names = list(cases)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            measured[name].append(_timed(cases[name]))
    rows = []
    for name, runs in measured.items():
        wall = [w for w, _ in runs]
        cpu = [c for _, c in runs]
        rate = f"{64 / median(wall):.0f}" if "FOLDER" in name else ""
        rows.append([name, f"{median(wall):.2f}", f"{min(wall):.2f}", f"{median(cpu):.2f}", rate])
    return [
        f"Whole commands, {args.runs} runs each, interleaved (one warm-up run first); "
        "CPU = user + system seconds of the process, which a busy machine inflates less",
        "",
        table(["command", "median wall s", "min wall s", "median CPU s", "photos/s"], rows),
        "",
    ]


def agreement(args: argparse.Namespace) -> list[str]:
    from garbage_sorter.evaluation import read_labelled

    items = read_labelled(args.split, "test")
    paths = [p for p, _, _ in items]
    served, eager = Classifier.load(), Classifier.load(engine="pytorch")
    got, want = served.predict_batch(paths), eager.predict_batch(paths)
    same = sum(g.label == w.label for g, w in zip(got, want, strict=True))
    gap = max(
        abs(g.probabilities[c] - w.probabilities[c])
        for g, w in zip(got, want, strict=True)
        for c in served.classes
    )
    right = [
        sum(p.label == label for p, (_, label, _) in zip(ps, items, strict=True))
        for ps in (got, want)
    ]
    return [
        f"Agreement on the {len(paths)} photos of {os.path.relpath(args.split, REPO)}, whole image: "
        f"{served.engine} (default) and PyTorch give the same label on {same}/{len(paths)}; largest "
        f"probability difference {gap:.1e}; accuracy {right[0] / len(paths):.3f} and "
        f"{right[1] / len(paths):.3f}.",
        "",
    ]


def network_flops(path: Path) -> float:
    """Floating-point operations of one image through the ONNX graph's convolutions and head
    (2 per multiply-add), from the graph's own shapes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_c, in_per_group, kh, kw = weights[node.input[1]]
            _, _, oh, ow = shapes[node.output[0]]
            macs += out_c * in_per_group * kh * kw * oh * ow
        elif node.op_type == "Gemm":
            macs += int(np.prod(weights[node.input[1]]))
    return 2.0 * macs


def arithmetic(args: argparse.Namespace) -> list[str]:
    """How far the network's time is from its arithmetic at the cores' measured peak."""
    clf = Classifier.load()
    flops = network_flops(Path(clf.checkpoint.onnx_path))
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    x = np.zeros((16, 3, clf.transform.prep.crop, clf.transform.prep.crop), np.float32)
    session = clf.checkpoint.session
    cases = {
        "sgemm": lambda r: a @ a,
        "batch 1": lambda r: session.run(["logits"], {"input": x[:1]}),
        "batch 16": lambda r: session.run(["logits"], {"input": x}),
    }
    times = interleave(cases, max(5, args.rounds // 4))
    peak = 2 * 2048**3 / min(times["sgemm"])
    rows = [
        [
            "numpy float32 matrix product 2048x2048 (peak)",
            f"{min(times['sgemm']) * 1e3:.1f}",
            f"{peak / 1e9:.0f}",
            "1.00",
        ]
    ]
    for name in ("batch 1", "batch 16"):
        each = min(times[name]) / (16 if name == "batch 16" else 1)
        rows.append(
            [
                f"network alone, {name} (ms a photo)",
                f"{each * 1e3:.1f}",
                f"{flops / each / 1e9:.0f}",
                f"{flops / each / peak:.2f}",
            ]
        )
    return [
        f"Arithmetic: the bundled network is {flops / 1e9:.2f} GFLOP a photo (convolutions and head, "
        f"2 per multiply-add); fastest of {max(5, args.rounds // 4)} interleaved runs",
        "",
        table(["case", "ms", "GFLOP/s", "of peak"], rows),
        "",
    ]


def run(args: argparse.Namespace, work: Path) -> str:
    out = [f"Command: {command_line()}", ""]
    out += arithmetic(args)
    out += latency(args, work)
    out += commands(args, work)
    out += agreement(args)
    out += [f"Machine: {machine_line()}", ""]
    return "\n".join(out)


def main(args: argparse.Namespace) -> None:
    run_in_work_folder(run, args, "gs-default-")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
