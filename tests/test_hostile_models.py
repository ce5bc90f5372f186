"""Hostile and unfit model files: refused with the file named, and no pickled code ever runs.

A checkpoint is opened with ``torch.load(weights_only=True)``. The malicious files here carry a
real payload (unpickling them runs ``touch MARKER`` through ``os.system``; the first test proves
it does); every way of opening a model must refuse them and leave no marker behind.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES

from garbage_sorter.classifier import Classifier
from garbage_sorter.model import CheckpointError, load_checkpoint


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_malicious(kind: str, folder: Path, checkpoint: dict) -> tuple[Path, Path]:
    """A malicious file of ``kind`` and the marker its payload would create."""
    path, marker = folder / f"evil_{kind}.pt", folder / f"ran_{kind}"
    if kind == "inside_checkpoint":  # a good checkpoint with the payload tucked into its config
        torch.save({**checkpoint, "config": {"lr": Payload(marker)}}, path)
    elif kind == "legacy_format":  # torch's pre-1.6 (non-zip) format
        torch.save(
            {**checkpoint, "config": Payload(marker)}, path, _use_new_zipfile_serialization=False
        )
    elif kind == "whole_file":
        torch.save(Payload(marker), path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"format": checkpoint["format"], "x": Payload(marker)}))
    return path, marker


MALICIOUS = ["inside_checkpoint", "legacy_format", "whole_file", "plain_pickle"]
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tiny_model) -> dict:
    return torch.load(tiny_model, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("kind", MALICIOUS)
def test_the_payload_is_live(kind, tmp_path, checkpoint):
    """Opened the unsafe way, each file does run its payload: the other tests mean something."""
    path, marker = write_malicious(kind, tmp_path, checkpoint)
    if kind == "plain_pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_checkpoint_is_refused_without_running(kind, tmp_path, checkpoint):
    path, marker = write_malicious(kind, tmp_path, checkpoint)
    for opener in (load_checkpoint, lambda p: Classifier.load(p, device="cpu")):
        with pytest.raises(CheckpointError) as caught:
            opener(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        # Never the advice to turn the protection off, which PyTorch's own message gives.
        assert "weights_only" not in message, message
        if kind == "plain_pickle":  # torch stops at the pickle protocol, before any global
            assert "not a readable model file" in message, message
        else:
            assert "refused" in message and "GLOBAL posix.system" in message, message
    assert not marker.exists(), "the pickled payload ran"


def test_cli_refuses_a_malicious_model(tmp_path, checkpoint, photos):
    path, marker = write_malicious("inside_checkpoint", tmp_path, checkpoint)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "garbage_sorter",
            "classify",
            "--json",
            "--model",
            str(path),
            str(photos[0]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("garbage-sorter:")]
    assert len(lines) == 1 and lines[0].startswith(f"garbage-sorter: {path}: refused"), proc.stderr
    assert "Traceback" not in proc.stderr and "posix.system" in lines[0]
    assert not marker.exists(), "the pickled payload ran"


def _zip_that_is_not_a_checkpoint() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"not a pickle")
        archive.writestr("readme.txt", "holiday photos")
    return buffer.getvalue()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _copy(data: dict) -> dict:
    return {
        **data,
        "state_dict": dict(data["state_dict"]),
        "preprocessing": dict(data["preprocessing"]),
    }


def top(**fields):
    return lambda data: {**_copy(data), **fields}


def prep(**fields):
    return lambda data: {**_copy(data), "preprocessing": {**data["preprocessing"], **fields}}


def weights(**tensors):
    """Replace state-dict entries; ``None`` removes one."""

    def edit(data: dict) -> dict:
        state = {**data["state_dict"], **tensors}
        return {**_copy(data), "state_dict": {k: v for k, v in state.items() if v is not None}}

    return edit


NAN = float("nan")

# Files that are not checkpoints at all: name -> (bytes from the tiny model's bytes, message words)
NOT_CHECKPOINTS = {
    "empty": (lambda raw: b"", "not a readable model file"),
    "truncated": (lambda raw: raw[: len(raw) // 2], "corrupt or truncated"),
    "random_bytes": (lambda raw: np.random.default_rng(0).bytes(4096), "not a readable"),
    "zip_not_a_checkpoint": (lambda raw: _zip_that_is_not_a_checkpoint(), "not a readable"),
    "foreign_state_dict": (
        lambda raw: _torch_bytes(torch.nn.Linear(4, 2).state_dict()),
        "not a Garbage Sorter checkpoint",
    ),
    "bare_tensor": (lambda raw: _torch_bytes(torch.zeros(3)), "not a Garbage Sorter"),
}
# Checkpoints that do not fit: name -> (an edit of the tiny checkpoint's dict, message words)
UNFIT = {
    "fewer_classes_than_head": (top(classes=CLASSES[:5]), "head does not match its 5 classes"),
    "one_class": (top(classes=["glass"]), "at least two distinct names"),
    "unknown_architecture": (top(arch="vgg11"), "unknown architecture 'vgg11'"),
    "other_architecture": (top(arch="resnet18"), "head does not match"),
    "crop_larger_than_resize": (prep(crop=512), "implausible sizes"),
    "zero_std": (prep(std=[0.5, 0.0, 0.5]), "std positive"),
    "nan_std": (prep(std=[NAN] * 3), "mean and std must be finite"),
    "two_channel_mean": (prep(mean=[0.5, 0.5]), "three values"),
    "unknown_interpolation": (prep(interpolation="lanczos"), "interpolation"),
    "no_preprocessing": (
        lambda d: {k: v for k, v in d.items() if k != "preprocessing"},
        "missing or has bad fields",
    ),
    "weight_missing": (
        weights(**{"_conv_stem.weight": None}),
        "weights do not fit efficientnet_lite0",
    ),
    "weight_wrong_shape": (weights(**{"_conv_stem.weight": torch.zeros(3)}), "weights do not fit"),
    "weights_not_tensors": (weights(**{"_fc.bias": [0.0] * 6}), "not all tensors"),
    "nan_weights": (weights(**{"_fc.bias": torch.full((6,), NAN)}), "NaN or infinity"),
    "calibration_not_a_table": (top(calibration=1.0), "bad fields"),
    "infinite_temperature": (top(calibration={"temperature": float("inf")}), "finite"),
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS) + sorted(UNFIT))
def test_unfit_model_is_refused_naming_the_file(name, tmp_path, tiny_model, checkpoint):
    path = tmp_path / f"{name}.pt"
    if name in NOT_CHECKPOINTS:
        make, words = NOT_CHECKPOINTS[name]
        path.write_bytes(make(tiny_model.read_bytes()))
    else:
        edit, words = UNFIT[name]
        torch.save(edit(checkpoint), path)
    with pytest.raises(CheckpointError) as caught:
        Classifier.load(path, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message, message
    assert "\n" not in message and "Traceback" not in message


def test_missing_and_folder_paths(tmp_path):
    for path in (tmp_path / "missing.pt", tmp_path):
        with pytest.raises(CheckpointError, match=f"^{path}: no such model file$"):
            Classifier.load(path, device="cpu")
