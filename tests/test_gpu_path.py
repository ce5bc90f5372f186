"""The GPU training path (issue 9) on the CPU at toy sizes: pack -> teacher -> distilled student
-> a checkpoint the product loads; the device augmentation is seeded and stays in range; an
epoch never waits for the device."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import CLASSES, SHARED_DATA, TESTS, fixture_photos
from garbage_sorter.training import gpu as G
from garbage_sorter.training.config import TrainConfig
from garbage_sorter.training.data import load_split
from garbage_sorter.training.train import WarmupCosine, normalizer
from torch.utils._python_dispatch import TorchDispatchMode

from garbage_sorter.classifier import Classifier
from garbage_sorter.model import build_model, load_checkpoint

ROOT = TESTS.parent
PER_CLASS = 6
SIZE = 32  # px: ResNet-18 and Lite2 both run at it, in milliseconds a step


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A real pack of 36 photos (6 a class) at a 48 px short side, and the fp16 teacher init."""
    root = tmp_path_factory.mktemp("gpu")
    data = root / "data"
    for cls in CLASSES:
        (data / cls).mkdir(parents=True)
        source = sorted((SHARED_DATA / "trashnet" / cls).glob("*.jpg"))[:PER_CLASS]
        for photo in source or [p for p in fixture_photos() if p.parent.name == cls] * PER_CLASS:
            shutil.copy(photo, data / cls / f"{len(list((data / cls).iterdir()))}_{photo.name}")
    pack_data = _load_script("pack_data")
    meta = pack_data.pack(
        root / "pack.npz",
        [str(data)],
        short_side=48,
        backgrounds=4,
        background_side=64,
        log=lambda msg: None,
    )
    pack_data.save_teacher_init(root / "init.pt")
    return root, meta


@pytest.fixture(scope="module")
def device_data(packed):
    return G.PackedData.load(packed[0] / "pack.npz", torch.device("cpu"))


def test_pack_holds_the_split_photos_masks_and_backgrounds(packed, device_data):
    root, meta = packed
    splits = load_split(root / "splits")
    assert meta["counts"] == {name: len(samples) for name, samples in splits.items()}
    assert sum(meta["counts"].values()) == len(CLASSES) * PER_CLASS
    assert meta["bytes"] < 64 * 2**20
    d = device_data
    assert d.classes == CLASSES
    assert d.pixels.dtype == torch.uint8 and d.pixels.shape[1:] == (4, 72, 72)  # 48 x 1.5
    assert d.backgrounds.shape == (4, 3, 64, 64)
    for name, samples in splits.items():
        assert [s.path for s in d.samples[name]] == [s.path for s in samples]
        assert d.labels[d.index[name]].tolist() == [CLASSES.index(s.label) for s in samples]
    assert (d.sizes.min(1).values == 48).all()
    # TrashNet photos are objects on a white board: most get a mask for compositing.
    assert 0 < int(d.has_mask.sum()) == meta["masks"]


def test_augment_is_seeded_keeps_shapes_and_range(device_data):
    d = device_data
    idx = d.index["train"][:8]

    def batch(seed: int, background: float) -> torch.Tensor:
        return G.DeviceAugment(d, SIZE, 1.0, background)(idx, torch.Generator().manual_seed(seed))

    a = batch(0, 1.0)
    assert a.shape == (8, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, batch(0, 1.0))
    assert not torch.equal(a, batch(1, 1.0))
    # The same draws without backgrounds: only photos with a mask change.
    changed = (a - batch(0, 0.0)).abs().amax((1, 2, 3)) > 0
    assert changed.tolist() == d.has_mask[idx].tolist()
    prep = G.stage_preprocessing("resnet18", SIZE)
    views = d.centre_views(idx, prep)
    assert views.shape == (8, 3, SIZE, SIZE) and torch.equal(views, d.centre_views(idx, prep))
    images, soft = G.mix(a, d.labels[idx], len(CLASSES), 1.0, 0.1, torch.Generator().manual_seed(0))
    assert images.shape == a.shape and torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft.argmax(1) == d.labels[idx]).all()  # a sample's own label still dominates


class _HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for a GPU: reading a value (``.item()``,
    ``bool()``, ``float()``), data-dependent shapes, copies off the device."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.seen = device, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        leaves = kwargs.get("device") not in (None, self.device) and name == "_to_copy"
        if name in ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item") or leaves:
            self.seen[name] += 1
        return func(*args, **kwargs)


def test_an_epoch_never_waits_for_the_device(device_data):
    d, cpu = device_data, torch.device("cpu")
    # Any network serves as the teacher here: what is checked is the loop around it. Lite0 at
    # another size than the student's also covers the resize between their views.
    teacher = G.Teacher(
        build_model("efficientnet_lite0", len(CLASSES)).eval(),
        normalizer(G.stage_preprocessing("efficientnet_lite0", SIZE + 8), cpu),
        SIZE + 8,
    )
    config = G.GpuConfig(
        pack="", out="", stage="student", train=TrainConfig(batch_size=4), size=SIZE, mixup=0.5
    )
    model = G.initial_model("resnet18", len(CLASSES), "none", "imagenet")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = WarmupCosine(optimizer, 10, 2, 0.01)
    augment = G.DeviceAugment(d, SIZE + 8, 1.0, 0.5)
    with _HostReads(cpu) as reads:
        sums, steps = G.train_one_epoch(
            model,
            d,
            augment,
            d.index["train"][:8],
            optimizer,
            scheduler,
            ctx=contextlib.nullcontext(),
            norm=normalizer(G.stage_preprocessing("resnet18", SIZE), cpu),
            size=SIZE,
            teacher=teacher,
            config=config,
            generator=torch.Generator().manual_seed(0),
            deadline=math.inf,
            max_steps=10,
        )
    assert steps == 2 and sums.shape == (3,)
    assert not reads.seen, f"host reads inside an epoch: {dict(reads.seen)}"
    assert sums[2].item() == 8


def _train(packed, stage: str, *flags: str):
    root, _ = packed
    args = [
        "--pack",
        str(root / "pack.npz"),
        "--out",
        str(root / stage),
        "--stage",
        stage,
        "--size",
        str(SIZE),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        *flags,
    ]
    if stage == "teacher":
        args += ["--init", str(root / "init.pt")]
    assert G.main(args) == 0
    return load_checkpoint(root / stage / "best.pt")


def test_teacher_then_distilled_student_then_scratch_end_to_end(packed, photos):
    root, _ = packed
    teacher = _train(packed, "teacher")
    assert teacher.arch == "efficientnet_lite2" and teacher.preprocessing.crop == SIZE
    student = _train(
        packed, "student", "--teacher", str(root / "teacher" / "best.pt"), "--epochs", "2"
    )
    assert student.arch == "resnet18" and student.classes == CLASSES
    assert student.preprocessing.crop == SIZE and student.preprocessing.mean == (
        0.485,
        0.456,
        0.406,
    )
    assert student.config["teacher"] == str(root / "teacher" / "best.pt")
    assert all(
        v.dtype == torch.float16 for v in student.state_dict.values() if v.is_floating_point()
    )
    metrics = json.loads((root / "student" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["images_per_second"] > 0
    assert set(metrics["time_to_95_val"]) >= {"acc"} and "acc" in metrics["test"]
    assert metrics["history"][-1]["train_seconds"] <= metrics["history"][-1]["wall_seconds"]

    # --minutes: the scratch stage fits its schedule to the budget and stops itself.
    _train(packed, "scratch", "--epochs", "1000", "--minutes", "0.05")
    scratch = json.loads((root / "scratch" / "metrics.json").read_text())
    assert 1 <= scratch["epochs"] < 1000

    clf = Classifier.load(root / "student" / "best.pt", device="cpu")
    prediction = clf.predict(photos[0])
    assert prediction.label in CLASSES

    assert G.main(["--stage", "summary", "--out", str(root)]) == 0
    summary = json.loads((root / "results.json").read_text())
    assert {"teacher", "student", "scratch", "student_within_scratch_budget"} <= set(summary)
    assert summary["student"]["curve"][0]["val_acc"] == metrics["history"][0]["val_acc"]


def test_device_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_distill.sh")]).returncode == 0
    np.testing.assert_equal(G.STAGES["scratch"], G.STAGES["student"])
