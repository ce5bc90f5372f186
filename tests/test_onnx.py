"""ONNX export and ONNX Runtime: the exported model answers like PyTorch, int8 nearly so.

A real model: EfficientNet-Lite0 with its ImageNet backbone and a fresh six-class head, at
112 px so export and calibration take seconds; real photos from tests/fixtures.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import CLASSES, FIXTURE_PHOTOS
from PIL import Image

from garbage_sorter.classifier import Classifier
from garbage_sorter.model import CheckpointError, build_model, save_checkpoint
from garbage_sorter.onnx_runtime import export_onnx, quantize_int8, read_metadata
from garbage_sorter.presets import LITE_MEAN, LITE_STD, Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "lite0.pt"
    save_checkpoint(
        path,
        build_model("efficientnet_lite0", len(CLASSES), "imagenet"),
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=Preprocessing(128, 112, LITE_MEAN, LITE_STD),
        calibration={"temperature": 1.5, "threshold": 0.3},
    )
    return path


@pytest.fixture(scope="module")
def exported(small_model):
    fp32 = small_model.with_suffix(".onnx")
    int8 = small_model.with_suffix(".int8.onnx")
    export_onnx(small_model, fp32)
    quantize_int8(fp32, int8, FIXTURE_PHOTOS)
    return fp32, int8


def test_onnx_answers_like_pytorch(small_model, exported, photos):
    torch_clf = Classifier.load(small_model, device="cpu")
    onnx_clf = Classifier.load(exported[0])
    assert onnx_clf.classes == torch_clf.classes
    assert onnx_clf.checkpoint.preprocessing == torch_clf.checkpoint.preprocessing
    assert (onnx_clf.temperature, onnx_clf.threshold) == (1.5, 0.3)
    want = torch_clf.predict_batch(photos)
    got = onnx_clf.predict_batch(photos)
    assert [p.label for p in got] == [p.label for p in want]
    for g, w in zip(got, want, strict=True):
        assert np.allclose(
            list(g.probabilities.values()), list(w.probabilities.values()), atol=1e-4
        )
        assert g.uncertain == w.uncertain


def test_onnx_heatmap_is_the_pytorch_gradcam(small_model, exported, photos):
    """The graph's class activation map, computed in numpy, is Grad-CAM for a linear head over
    pooled features: same map, same label, for the predicted class and for another one."""
    from garbage_sorter.explain import gradcam

    torch_clf = Classifier.load(small_model, device="cpu")
    onnx_clf = Classifier.load(exported[0])
    for photo in photos[::4]:
        for target in (None, "trash"):
            want = gradcam(torch_clf, photo, target)
            got = gradcam(onnx_clf, photo, target)
            assert got.label == want.label
            assert got.heatmap.shape == want.heatmap.shape == (112, 112)
            assert np.abs(got.heatmap - want.heatmap).max() < 1e-3
            assert got.image.tobytes() == want.image.tobytes()


def test_running_keeps_references_to_none(exported, photos):
    """onnxruntime 1.32's run() without run options now and then drops a reference to None; a
    camera loop then crashed the app ("deallocating None"). The classifier's runs, from a worker
    thread as in the app, must leave None's count where it was."""
    import threading

    clf = Classifier.load(exported[0])
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in photos[:4]]

    def in_a_thread(runs: int) -> int:
        # Garbage left by earlier tests, collected mid-count, would give back its references to
        # None and look like the bug: collect it first and keep the collector out of the count.
        gc.collect()
        gc.disable()
        try:
            before = sys.getrefcount(None)
            worker = threading.Thread(
                target=lambda: [clf.predict(frames[i % 4]) for i in range(runs)]
            )
            worker.start()
            worker.join()
            return sys.getrefcount(None) - before
        finally:
            gc.enable()

    in_a_thread(20)  # first-run allocations and thread bookkeeping happen outside the count
    assert in_a_thread(300) >= 0  # the bug takes references away; caches may add a few


def test_upsampling_matches_torch():
    import torch

    from garbage_sorter.explain import upsample_bilinear

    cam = np.random.default_rng(0).random((7, 7))
    want = torch.nn.functional.interpolate(
        torch.from_numpy(cam)[None, None], size=(224, 224), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.abs(upsample_bilinear(cam, 224) - want).max() < 1e-12


def test_heatmap_of_an_export_without_maps_is_a_clear_refusal(exported, photos, tmp_path):
    from garbage_sorter.explain import ExplainError, gradcam

    old = onnx.load(str(exported[0]))  # as exports made before the maps were added look
    kept = [o for o in old.graph.output if o.name == "logits"]
    del old.graph.output[:]
    old.graph.output.extend(kept)
    path = tmp_path / "old.onnx"
    onnx.save(old, str(path))
    clf = Classifier.load(path)
    assert clf.predict(photos[0]).label in CLASSES
    with pytest.raises(ExplainError, match=r"export it again"):
        gradcam(clf, photos[0])


def test_int8_agrees_on_most_photos(exported, photos):
    fp32, int8 = (Classifier.load(p) for p in exported)
    assert "int8" in read_metadata(exported[1])["quantization"]
    assert int8.checkpoint.classes == fp32.checkpoint.classes
    want = fp32.predict_batch(photos)
    got = int8.predict_batch(photos)
    agree = np.mean([g.label == w.label for g, w in zip(got, want, strict=True)])
    gap = np.mean(
        [
            abs(g.probabilities[c] - w.probabilities[c])
            for g, w in zip(got, want, strict=True)
            for c in CLASSES
        ]
    )
    assert agree >= 0.75, f"int8 agrees with fp32 on only {agree:.0%} of the photos"
    assert gap < 0.05


def test_int8_file_is_smaller(exported):
    fp32, int8 = exported
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_quantize_without_photos_says_what_to_give(exported, tmp_path):
    with pytest.raises(ValueError, match="calibration photos"):
        quantize_int8(exported[0], tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_foreign_and_broken_onnx_files_are_refused(tmp_path, exported):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        Classifier.load(junk)
    bare = onnx.load(str(exported[0]))
    del bare.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(bare, str(plain))
    with pytest.raises(CheckpointError, match="without Garbage Sorter metadata"):
        Classifier.load(plain)
    with pytest.raises(CheckpointError, match="no such model file"):
        Classifier.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Classifier.load(exported[0], device="cuda")


@pytest.mark.slow
def test_cli_exports_and_classifies_with_the_int8_file(small_model, tmp_path, photos):
    out = tmp_path / "model.onnx"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "garbage_sorter", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    done = cli(
        "export",
        "--model",
        str(small_model),
        "--onnx",
        str(out),
        "--int8",
        "--calibration",
        str(FIXTURE_PHOTOS),
    )
    assert done.returncode == 0, done.stderr
    assert out.exists() and out.with_suffix(".int8.onnx").exists()
    done = cli("classify", "--model", str(out.with_suffix(".int8.onnx")), "--json", str(photos[0]))
    assert done.returncode == 0, done.stderr
    assert '"label"' in done.stdout
    done = cli("export", "--model", str(small_model), "--onnx", str(tmp_path / "b.onnx"), "--int8")
    assert done.returncode == 2
    assert "calibration photos" in done.stderr and "Traceback" not in done.stderr


# -- the bundled model -------------------------------------------------------------------------


def test_the_shipped_onnx_is_the_shipped_pt(photos):
    """resources/models/garbage_sorter.onnx was exported from the .pt beside it: the metadata
    holds the .pt's SHA-256, classes, preprocessing and calibration, and both engines give the
    same labels and probabilities on the fixture photos (bench/latency.py --agreement checks the
    428 test-split photos)."""
    from garbage_sorter.classifier import bundled_model_path
    from garbage_sorter.onnx_runtime import file_sha256

    pt = bundled_model_path()
    meta = read_metadata(pt.with_suffix(".onnx"))
    assert meta["source_sha256"] == file_sha256(pt), "re-export: garbage-sorter export --onnx"
    served, eager = Classifier.load(), Classifier.load(engine="pytorch")
    assert (served.engine, eager.engine) == ("onnxruntime", "pytorch")
    assert served.checkpoint.path == eager.checkpoint.path == str(pt)
    assert served.classes == eager.classes
    assert served.checkpoint.preprocessing == eager.checkpoint.preprocessing
    assert (served.temperature, served.threshold) == (eager.temperature, eager.threshold)
    got, want = served.predict_batch(photos), eager.predict_batch(photos)
    assert [p.label for p in got] == [p.label for p in want]
    for g, w in zip(got, want, strict=True):
        assert np.allclose(
            list(g.probabilities.values()), list(w.probabilities.values()), atol=1e-4
        )
        assert g.uncertain == w.uncertain


def test_engine_choice(tiny_model):
    """ONNX Runtime serves the bundled model on a CPU; other .pt files and engine="pytorch" run in
    PyTorch; asking ONNX Runtime for a .pt with no export beside it is a clear error."""
    assert Classifier.load(device="cpu").engine == "onnxruntime"
    assert Classifier.load(tiny_model, device="cpu").engine == "pytorch"
    with pytest.raises(CheckpointError, match="no such model file"):
        Classifier.load(tiny_model, engine="onnxruntime")
    with pytest.raises(ValueError, match="unknown engine"):
        Classifier.load(engine="tensorflow")
