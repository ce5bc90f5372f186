"""The benchmark scripts run (tiny settings, real photos) and the fast paths they time give the
same answers as the plain path, so neither can rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURE_PHOTOS

from garbage_sorter.classifier import Classifier
from garbage_sorter.images import ImageLoadError

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str) -> str:
    # One thread: a smoke run on a busy machine is then not held up by a straggling thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in ``text``."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in row]
        for row in rows
        if not set(row[0]) <= set("-: ")
        and row[0].strip() not in ("photo", "model", "batch", "variant", "pipeline")
    ]


def test_predict_paths_answers_like_predict_batch(tiny_model, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:300])
    paths = [*photos[:5], broken, *photos[5:9]]
    clf = Classifier.load(tiny_model, device="cpu")
    got = list(clf.predict_paths(paths, batch_size=4))
    want = clf.predict_batch(photos[:9])
    assert len(got) == len(paths)
    assert isinstance(got[5], ImageLoadError)
    for g, w in zip(got[:5] + got[6:], want, strict=True):
        assert g.label == w.label
        assert g.probabilities == pytest.approx(w.probabilities, abs=1e-5)
    assert list(clf.predict_paths([])) == []


@pytest.mark.slow
def test_latency_script():
    out = run_bench(
        "latency.py",
        "--archs",
        "resnet18",
        "--threads",
        "1",
        "--rounds",
        "2",
        "--distinct",
        "2",
        "--calibration",
        "2",
        "--large",
        "400x300",
        "--photos",
        str(FIXTURE_PHOTOS),
    )
    rows = table_rows(out)
    assert [r[2] for r in rows] == ["naive", "project", "onnx fp32", "onnx int8"] * 2
    assert all(float(r[3]) > 0 for r in rows)
    assert "Machine:" in out and "Command:" in out


@pytest.mark.slow
def test_folder_throughput_script():
    out = run_bench(
        "folder_throughput.py",
        "--archs",
        "resnet18",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--count",
        "4",
        "--calibration",
        "2",
        "--large",
        "none",
        "--photos",
        str(FIXTURE_PHOTOS),
    )
    rows = table_rows(out)
    assert len(rows) == 7 and all(float(r[4]) > 0 for r in rows)


@pytest.mark.slow
def test_train_throughput_script():
    out = run_bench(
        "train_throughput.py",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--batch",
        "2",
        "--photos",
        str(FIXTURE_PHOTOS),
    )
    rows = table_rows(out)
    assert [r[1] for r in rows] == ["full", "head", "full", "full", "head"]
    assert all(float(r[3]) > 0 for r in rows)


def test_gpu_script_says_no_gpu_without_one():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script runs for real")
    assert run_bench("gpu_inference.py").strip() == "no GPU"


@pytest.mark.slow
def test_gpu_script_logic_on_the_cpu():
    out = run_bench(
        "gpu_inference.py",
        "--device",
        "cpu",
        "--no-compile",
        "--archs",
        "resnet18",
        "--batches",
        "1",
        "2",
        "--size",
        "64",
        "--iters",
        "1",
        "--rounds",
        "1",
        "--files",
        "4",
        "--e2e-batch",
        "2",
        "--workers",
        "1",
        "--photos",
        str(FIXTURE_PHOTOS),
    )
    rows = table_rows(out)
    # model only: 2 batch sizes x 2 variants; latency: 2 variants; end to end: 3 pipelines
    assert len(rows) == 4 + 2 + 3
    assert "decode_jpeg on cpu" in out
