"""The familiarity (shift) score: real photos, the bundled model and a small real model.

"Unfamiliar" photos here are real TrashNet photos as a dark bin under a strong blue LED sees
them (the setting the issue measured): darkened, blue-cast, with a dark surround.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CLASSES, FIXTURE_PHOTOS
from PIL import Image

from garbage_sorter.classifier import Classifier, StreamFamiliarity
from garbage_sorter.familiarity import fit_record, style_layers
from garbage_sorter.model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from garbage_sorter.onnx_runtime import export_onnx, read_metadata
from garbage_sorter.presets import LITE_MEAN, LITE_STD, EvalTransform, Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def studio_photos() -> list[Image.Image]:
    """The TrashNet photos among the fixtures (white board, studio light)."""
    return [
        Image.open(p).convert("RGB")
        for p in sorted(FIXTURE_PHOTOS.glob("*/*.jpg"))
        if p.stem.rstrip("0123456789") in CLASSES
    ]


def in_a_dark_blue_bin(image: Image.Image) -> Image.Image:
    """The photo on a shelf inside a dark bin lit by a blue LED."""
    rgb = np.asarray(image.resize((384, 288)), dtype=np.float32)
    canvas = np.full((360, 480, 3), 12.0, np.float32)
    canvas[36:324, 48:432] = rgb
    lit = canvas * np.array([0.25, 0.45, 1.0], np.float32) * 0.7
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def test_the_bundled_model_tells_a_dark_blue_bin_from_studio_photos(bundled_model):
    studio = studio_photos()
    binned = [in_a_dark_blue_bin(p) for p in studio]
    clf = Classifier.load(bundled_model)
    assert clf.engine == "onnxruntime" and clf.has_familiarity
    at_home = clf.predict_batch(studio)
    away = clf.predict_batch(binned)
    assert sum(p.unfamiliar for p in at_home) <= 1, [p.shift for p in at_home]
    assert all(p.unfamiliar and p.uncertain for p in away), [p.shift for p in away]
    assert min(p.shift for p in away) > max(p.shift for p in at_home)
    # PyTorch computes the same score as the exported graph.
    torch_clf = Classifier.load(bundled_model, engine="pytorch")
    for engine_pred, torch_pred in zip(away, torch_clf.predict_batch(binned), strict=True):
        assert torch_pred.shift == pytest.approx(engine_pred.shift, rel=2e-3)
        assert torch_pred.unfamiliar == engine_pred.unfamiliar


def test_json_says_whether_a_photo_is_unfamiliar(tmp_path):
    photo = sorted(FIXTURE_PHOTOS.glob("glass/glass*.jpg"))[0]
    binned = tmp_path / "binned.jpg"
    in_a_dark_blue_bin(Image.open(photo).convert("RGB")).save(binned)
    out = subprocess.run(
        [sys.executable, "-m", "garbage_sorter", "classify", "--json", str(photo), str(binned)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["unfamiliar"] for r in rows] == [False, True]
    assert rows[1]["uncertain"] is True and rows[1]["shift"] > 1 >= rows[0]["shift"]


@pytest.fixture(scope="module")
def familiar_model(tmp_path_factory):
    """ImageNet Lite0 with a fresh head at 112 px, its reference fitted on the studio photos."""
    torch.manual_seed(0)
    prep = Preprocessing(128, 112, LITE_MEAN, LITE_STD)
    model = build_model("efficientnet_lite0", len(CLASSES), "imagenet").eval()
    transform = EvalTransform(prep)
    studio = torch.stack([transform(p) for p in studio_photos()])
    record = fit_record(model, "efficientnet_lite0", [studio[:10]], [studio[10:]])
    path = tmp_path_factory.mktemp("familiar") / "familiar.pt"
    save_checkpoint(
        path,
        model,
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=prep,
        familiarity=record,
        half=True,
    )
    return path, record


def test_the_threshold_is_the_validation_quantile(familiar_model):
    path, record = familiar_model
    ckpt = load_checkpoint(path)
    assert ckpt.familiarity["layers"] == list(style_layers("efficientnet_lite0"))
    assert ckpt.familiarity["mean"].dtype == torch.float32  # not halved with the weights
    clf = Classifier.load(path)
    shifts = [p.shift for p in clf.predict_batch(studio_photos()[10:])]
    # 95% of the validation photos stay under the threshold, so nearly all score <= 1.
    assert np.mean(np.array(shifts) <= 1 + 1e-4) >= 0.8
    assert "mean" not in ckpt.card()["familiarity"]


def test_the_export_scores_like_pytorch(familiar_model, tmp_path):
    path, _ = familiar_model
    onnx_path = export_onnx(path, tmp_path / "familiar.onnx")
    assert read_metadata(onnx_path)["outputs"] == ["logits", "cams", "shift"]
    images = [in_a_dark_blue_bin(p) for p in studio_photos()[:4]] + studio_photos()[:2]
    by_onnx = Classifier.load(onnx_path).predict_batch(images)
    by_torch = Classifier.load(path).predict_batch(images)
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert a.shift == pytest.approx(b.shift, rel=1e-3)


def test_a_model_without_a_reference_has_no_score(tiny_model):
    prediction = Classifier.load(tiny_model).predict(studio_photos()[0])
    assert prediction.shift is None and prediction.unfamiliar is False
    assert prediction.to_dict()["unfamiliar"] is False


def test_a_broken_reference_is_refused(familiar_model, tmp_path):
    path, record = familiar_model
    data = torch.load(path, weights_only=True)
    for broken in (
        {**record, "whiten": record["whiten"][:3]},
        {**record, "threshold": float("nan")},
        {**record, "layers": ["layer1"]},
        "not a dict",
    ):
        data["familiarity"] = broken
        torch.save(data, tmp_path / "broken.pt")
        with pytest.raises(CheckpointError, match="familiarity"):
            load_checkpoint(tmp_path / "broken.pt")


def test_a_camera_is_unfamiliar_when_most_recent_frames_are():
    stream = StreamFamiliarity(window=10, minimum=5)
    for shift in (3.0, 3.0, 3.0, 3.0):
        stream.add(shift)
    assert not stream.unfamiliar  # too few frames to say
    stream.add(0.5)
    stream.add(None)  # a model without a score adds nothing
    assert stream.unfamiliar  # 4 of 5 frames unfamiliar
    for _ in range(6):
        stream.add(0.4)
    assert not stream.unfamiliar  # the last 10: 3 unfamiliar
    stream.reset()
    assert not stream.unfamiliar and not stream.scores
