"""GPU inference: bf16 + channels_last + CUDA graphs or torch.compile against eager fp32, and
JPEG files to predictions with the decoding on the GPU. Prints "no GPU" where there is none.

    python bench/gpu_inference.py [--archs resnet18 efficientnet_lite0] [--batches 1 64 256]

Three tables per architecture, every case interleaved round by round with its baseline:

1. model-only throughput at each batch size: eager fp32 (the baseline), eager bf16
   channels_last, the same replayed from a CUDA graph, and ``torch.compile(mode=
   "reduce-overhead")`` (Inductor kernels in a CUDA graph);
2. single-image latency of the same variants (a synchronise after every call);
3. end to end from JPEG files on disk: PIL decoding in DataLoader workers feeding eager fp32
   (the baseline) or the fastest variant, against ``torchvision.io.decode_jpeg(device="cuda")``
   with resizing, cropping and normalising on the GPU, the next batch's files read meanwhile.

``--device cpu`` runs the same code on the CPU (for its smoke test; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    ARCH_NAMES,
    CLASSES,
    PHOTOS,
    command_line,
    interleave,
    machine_line,
    median,
    p95,
    photo_files,
    table,
)
from common import (
    rate as rate_text,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--archs", nargs="+", default=["resnet18", "efficientnet_lite0"], choices=sorted(ARCH_NAMES)
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    p.add_argument("--iters", type=int, default=50, help="forward passes per case per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, help="input size (default: the model's crop, 224)")
    p.add_argument("--files", type=int, default=4096, help="JPEG files for the end-to-end table")
    p.add_argument("--e2e-batch", type=int, default=256)
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of JPEG photos (recursive)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (PIL)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include torch.compile (minutes of compiling per architecture)",
    )
    p.add_argument("--device", default="cuda", help="cuda, or cpu to test this script")
    return p


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variants(arch: str, device, size: int, batches: list[int], use_compile: bool) -> dict:
    """name -> callable(batch) for the variants timed; the last is the fastest expected."""
    import torch

    from garbage_sorter.model import build_model

    torch.manual_seed(0)
    fp32 = build_model(arch, len(CLASSES)).to(device).eval()
    bf16 = (
        build_model(arch, len(CLASSES))
        .to(device, torch.bfloat16, memory_format=torch.channels_last)
        .eval()
    )
    bf16.load_state_dict(fp32.state_dict())
    found = {"eager fp32": fp32, "eager bf16 channels_last": bf16}
    if device.type == "cuda":
        found["bf16 channels_last, CUDA graph"] = CudaGraphed(bf16, device, size, batches)
    if use_compile:
        found["bf16 channels_last, torch.compile"] = torch.compile(bf16, mode="reduce-overhead")
    return found


class CudaGraphed:
    """``model`` captured once per batch size in a CUDA graph and replayed: no launch overhead."""

    def __init__(self, model, device, size: int, batches: list[int]):
        import torch

        self.model, self.graphs = model, {}
        stream = torch.cuda.Stream(device)
        for batch in batches:
            static_in = torch.zeros(batch, 3, size, size, device=device, dtype=torch.bfloat16)
            static_in = static_in.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm up cuDNN's algorithm choice outside the graph
                        model(static_in)
                torch.cuda.current_stream(device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = model(static_in)
            self.graphs[batch] = (graph, static_in, static_out)

    def __call__(self, x):
        if x.shape[0] not in self.graphs:  # a last, smaller batch
            return self.model(x)
        graph, static_in, static_out = self.graphs[x.shape[0]]
        static_in.copy_(x)
        graph.replay()
        return static_out


def inputs(name: str, batch: int, size: int, device):
    import torch

    x = torch.randn(batch, 3, size, size, device=device)
    if name == "eager fp32":
        return x
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def model_tables(arch: str, args, device, size: int, models: dict) -> list[str]:
    import torch

    throughput, latency = {}, {}
    for batch in args.batches:
        for name, model in models.items():
            x = inputs(name, batch, size, device)
            throughput[(batch, name)] = _loop(model, x, args.iters, device)
            if batch == 1:
                latency[name] = _each(model, x, args.iters, device)
    with torch.inference_mode():
        for fn in [*throughput.values(), *latency.values()]:
            fn(0)  # compile and warm up every shape before any timing
    for fn in latency.values():
        fn.times.clear()
    t = interleave(throughput, args.rounds, warmup=1)
    rows = []
    for batch in args.batches:
        base = batch * args.iters / median(t[(batch, "eager fp32")])
        for name in models:
            rate = batch * args.iters / median(t[(batch, name)])
            rows.append([batch, name, rate_text(rate), f"{rate / base:.2f}"])
    out = [
        f"**{ARCH_NAMES[arch]}**, model only, {size}x{size} input, {args.iters} passes per case "
        f"per round (median of {args.rounds} rounds, interleaved)",
        "",
        table(["batch", "variant", "images/s", "vs eager fp32"], rows),
        "",
    ]
    if latency:
        interleave(latency, args.rounds, warmup=0)
        base = median(latency["eager fp32"].times)
        rows = [
            [
                name,
                f"{median(fn.times) * 1e3:.2f}",
                f"{p95(fn.times) * 1e3:.2f}",
                f"{median(fn.times) / base:.2f}",
            ]
            for name, fn in latency.items()
        ]
        out += [
            f"**{ARCH_NAMES[arch]}**, single image, model only ({args.rounds} x {args.iters} "
            "synchronised calls per variant, interleaved)",
            "",
            table(["variant", "median ms", "p95 ms", "vs eager fp32"], rows),
            "",
        ]
    return out


def _loop(model, x, iters: int, device):
    """A case: ``iters`` passes back to back, synchronised at the ends; returns the seconds."""
    import torch

    def run(r: int) -> float:
        with torch.inference_mode():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            sync(device)
            return time.perf_counter() - t0

    return run


class _each:  # noqa: N801 - used like a function
    """A case: ``iters`` single passes, each synchronised; keeps every call's seconds."""

    def __init__(self, model, x, iters: int, device):
        self.model, self.x, self.iters, self.device, self.times = model, x, iters, device, []

    def __call__(self, r: int) -> float:
        import torch

        with torch.inference_mode():
            for _ in range(self.iters):
                sync(self.device)
                t0 = time.perf_counter()
                self.model(self.x)
                sync(self.device)
                self.times.append(time.perf_counter() - t0)
        return sum(self.times[-self.iters :])


def gpu_preprocess(images, prep, device):
    """Decoded uint8 CHW images on the device -> normalised (N, 3, crop, crop) float batch:
    resize the short side to ``prep.resize`` (bilinear, antialiased), centre-crop, normalise.
    Images of one size are resized together."""
    import torch
    from torch.nn import functional as F

    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    out = torch.empty(len(images), 3, prep.crop, prep.crop, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    for (h, w), index in by_size.items():
        scale = prep.resize / min(h, w)
        nh, nw = max(prep.crop, round(h * scale)), max(prep.crop, round(w * scale))
        x = torch.stack([images[i] for i in index]).float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - prep.crop) // 2, (nw - prep.crop) // 2
        out[index] = x[:, :, top : top + prep.crop, left : left + prep.crop]
    return (out - mean) / std


def e2e_table(arch: str, args, device, size: int, best_name: str, models: dict) -> list[str]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from garbage_sorter.images import load_image
    from garbage_sorter.presets import EvalTransform, Preprocessing, default_preprocessing

    base = default_preprocessing(arch)
    prep = Preprocessing(round(size * base.resize / base.crop), size, base.mean, base.std)
    files = photo_files(args.photos, args.files)
    batch = args.e2e_batch
    best = models[best_name]
    dtype = torch.bfloat16

    class Files(torch.utils.data.Dataset):
        transform = EvalTransform(prep)

        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return self.transform(load_image(files[i], draft=prep.resize))

    loader = torch.utils.data.DataLoader(
        Files(),
        batch_size=batch,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )

    def cpu_decode(model, half: bool):
        def run(r: int) -> float:
            labels = []
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x in loader:
                    x = x.to(device, non_blocking=True)
                    if half:
                        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
                    labels.append(model(x).float().argmax(1))
                torch.cat(labels).cpu()
            return time.perf_counter() - t0

        return run

    pool = ThreadPoolExecutor(4, thread_name_prefix="read")

    def read(chunk):
        return [read_file(str(p)) for p in chunk]

    def gpu_decode(r: int) -> float:
        chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
        labels = []
        sync(device)
        t0 = time.perf_counter()
        ahead = pool.submit(read, chunks[0])
        with torch.inference_mode():
            for i in range(len(chunks)):
                data = ahead.result()
                if i + 1 < len(chunks):
                    ahead = pool.submit(read, chunks[i + 1])
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
                x = gpu_preprocess(images, prep, device)
                x = x.to(dtype).contiguous(memory_format=torch.channels_last)
                labels.append(best(x).float().argmax(1))
            torch.cat(labels).cpu()
        return time.perf_counter() - t0

    cases = {
        f"PIL, {args.workers} CPU workers -> eager fp32": cpu_decode(models["eager fp32"], False),
        f"PIL, {args.workers} CPU workers -> {best_name}": cpu_decode(best, True),
        f"decode_jpeg on {device.type} -> {best_name}": gpu_decode,
    }
    t = interleave(cases, args.rounds, warmup=1)
    names = list(cases)
    base = len(files) / median(t[names[0]])
    rows = [
        [
            name,
            rate_text(len(files) / median(t[name])),
            f"{len(files) / median(t[name]) / base:.2f}",
        ]
        for name in names
    ]
    pool.shutdown()
    return [
        f"**{ARCH_NAMES[arch]}**, end to end: {len(files)} JPEG files ({args.photos.name}) to "
        f"predictions, batches of {batch} (median of {args.rounds} rounds, interleaved)",
        "",
        table(["pipeline", "images/s", "vs first row"], rows),
        "",
    ]


def main(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no GPU")
        return
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (test run)"
    out = [f"Command: {command_line()}", "", f"Machine: {name}; {machine_line()}", ""]
    for arch in args.archs:
        from garbage_sorter.presets import default_preprocessing

        size = args.size or default_preprocessing(arch).crop
        models = variants(arch, device, size, sorted({*args.batches, args.e2e_batch}), args.compile)
        out += model_tables(arch, args, device, size, models)
        best_name = list(models)[-1]  # compiled, else CUDA graph, else eager bf16
        out += e2e_table(arch, args, device, size, best_name, models)
        print("\n".join(out), flush=True)
        out = []


if __name__ == "__main__":
    main(get_args_parser().parse_args())
