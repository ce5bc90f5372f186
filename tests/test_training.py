"""The training module end to end on real photos: head mode, full mode, resume after SIGKILL,
Kaggle offline, hyperparameter search and a 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from garbage_sorter.training.config import TrainConfig
from garbage_sorter.training.train import Cancelled, main

from garbage_sorter.model import load_checkpoint

OUTPUTS = [
    "best.pt",
    "last.pt",
    "config.json",
    "metrics.json",
    "classification_report.txt",
    "confusion_matrix.png",
    "curves.png",
    "audit.json",
    "audit.txt",
    "history.json",
    "splits/train.txt",
    "splits/val.txt",
    "splits/test.txt",
]


def cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garbage_sorter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def test_head_mode_reuses_a_backbone_and_writes_a_usable_model(tiny_dataset, tiny_model, tmp_path):
    events = []
    out = tmp_path / "run"
    result = main(
        TrainConfig(
            data=[str(tiny_dataset)],
            mode="head",
            arch="efficientnet_lite0",
            weights=str(tiny_model),
            out=str(out),
        ),
        events.append,
    )
    assert {e.stage for e in events} >= {"audit", "features", "calibrate", "done"}
    ckpt = load_checkpoint(result.best)
    assert ckpt.classes == sorted(p.name for p in tiny_dataset.iterdir())
    assert "test" in ckpt.metrics and ckpt.config["mode"] == "head"
    assert ckpt.calibration["temperature"] > 0
    proc = cli("evaluate", "--json", "--model", str(result.best), str(out / "splits"))
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["n"] == len((out / "splits" / "test.txt").read_text().splitlines())
    # The run scores its test photos with the head on cached features; the whole network run
    # over the same photos by `evaluate` must agree.
    assert evaluated["accuracy"] == pytest.approx(ckpt.metrics["test"]["acc"], abs=1e-9)
    # A second run hits the feature cache: no feature progress at all.
    again = []
    main(
        TrainConfig(
            data=[str(tiny_dataset)],
            mode="head",
            arch="efficientnet_lite0",
            weights=str(tiny_model),
            out=str(tmp_path / "run2"),
        ),
        again.append,
    )
    assert not [e for e in again if e.stage == "features"]
    # The run measured its training photos' style for the shift score; a head retrained from
    # its checkpoint (same frozen backbone) keeps that reference instead of measuring again.
    assert ckpt.familiarity["fitted_on"]["train_photos"] == len(
        (out / "splits" / "train.txt").read_text().splitlines()
    )
    third = main(
        TrainConfig(
            data=[str(tiny_dataset)],
            mode="head",
            arch="efficientnet_lite0",
            weights=str(result.best),
            out=str(tmp_path / "run3"),
        )
    )
    kept = load_checkpoint(third.best).familiarity
    assert kept["mean"].equal(ckpt.familiarity["mean"])


def test_full_mode_writes_every_output(tiny_dataset, tmp_path):
    out = tmp_path / "full"
    result = main(
        TrainConfig(
            data=[str(tiny_dataset)],
            arch="efficientnet_lite0",
            weights="none",
            epochs=2,
            batch_size=4,
            freeze_blocks=8,
            workers=0,
            out=str(out),
        )
    )
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "efficientnet_lite0" and config["epochs"] == 2
    assert result.metrics["epochs_run"] == 2
    assert "recall" in result.metrics["test"]["all"]


def test_cancel_keeps_what_was_on_disk(tiny_dataset, tmp_path):
    out = tmp_path / "cancel"
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        main(
            TrainConfig(
                data=[str(tiny_dataset)],
                arch="efficientnet_lite0",
                weights="none",
                epochs=3,
                batch_size=4,
                workers=0,
                out=str(out),
            ),
            should_stop=stop,
        )
    assert not (out / "best.pt").exists()


def test_sigkill_mid_epoch_then_resume(tiny_dataset, tmp_path):
    out = tmp_path / "killed"
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "--arch",
        "efficientnet_lite0",
        "--weights",
        "none",
        "--epochs",
        "4",
        "--batch-size",
        "2",
        "--freeze-blocks",
        "8",
        "--workers",
        "0",
        "--patience",
        "10",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "garbage_sorter", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
    time.sleep(1.0)  # well into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    best_before = (out / "best.pt").read_bytes()
    epoch_before = load_checkpoint(out / "last.pt").metrics["history"][-1]["epoch"]
    assert load_checkpoint(out / "best.pt").arch == "efficientnet_lite0"
    resumed = cli("train", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming after epoch" in resumed.stderr
    history = json.loads((out / "history.json").read_text())
    epochs = [h["epoch"] for h in history if "train_loss" in h]
    assert epochs == list(range(epochs[-1] + 1)) and epochs[-1] == 3, epochs
    # Epochs run counts those before the kill too.
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 4
    assert epoch_before < 3
    assert best_before  # the earlier best was intact and loadable before resuming


def one_epoch_from(start, data, out, **options) -> TrainConfig:
    """One cheap full-mode epoch from ``start`` (8 blocks frozen, batches of 4)."""
    return TrainConfig(
        data=[str(data)],
        arch="efficientnet_lite0",
        weights=str(start),
        epochs=1,
        batch_size=4,
        freeze_blocks=8,
        workers=0,
        out=str(out),
        **options,
    )


def test_soup_averages_the_final_weights_with_other_checkpoints(tiny_dataset, tiny_model, tmp_path):
    import torch

    out = tmp_path / "soup"
    result = main(one_epoch_from(tiny_model, tiny_dataset, out, soup=[str(tiny_model)]))
    trained = torch.load(out / "last.pt", weights_only=True)["state_dict"]  # the one epoch
    start = load_checkpoint(tiny_model).state_dict
    souped = load_checkpoint(result.best)
    head = "_fc.weight"
    assert not torch.equal(trained[head], start[head])  # the epoch moved the head
    for key in (head, "_blocks.15._bn1.running_mean"):  # a weight and a buffer, both trained
        mean = (trained[key].float() + start[key].float()) / 2
        torch.testing.assert_close(souped.state_dict[key].float(), mean, atol=2e-3, rtol=2e-3)
    assert souped.config["soup"] == [str(tiny_model)]
    assert souped.calibration["temperature"] > 0  # calibrated after averaging


def test_linear_probe_then_distilled_fine_tune_then_wise_ft(tiny_dataset, tiny_model, tmp_path):
    """LP-FT with a teacher and WiSE-FT through ``main``: the probe fits the head first, the
    epoch distils from the teacher, and the final weights are the mean of the probe's and the
    fine-tuned ones."""
    import torch

    out, events = tmp_path / "lpft", []
    config = one_epoch_from(
        tiny_model,
        tiny_dataset,
        out,
        linear_probe_epochs=1,
        teacher=str(tiny_model),
        wise_alpha=0.5,
    )
    result = main(config, events.append)
    logs = "\n".join(e.message for e in events if e.stage == "log")
    assert "Linear head on cached features" in logs
    assert f"Distilling from {tiny_model}" in logs
    assert "WiSE-FT: averaged fine-tuned and linear-probe weights with alpha 0.5" in logs
    history = json.loads((out / "history.json").read_text())
    assert history[0]["phase"] == "linear-probe" and "train_loss" in history[1]
    last = torch.load(out / "last.pt", weights_only=True)
    trained, probe = last["state_dict"], last["train_state"]["probe_state"]
    start = load_checkpoint(tiny_model).state_dict
    head = "_fc.weight"
    assert not torch.equal(probe[head], start[head].float())  # the probe fitted a new head
    assert not torch.equal(trained[head], probe[head])  # and the epoch moved it again
    final = load_checkpoint(result.best)
    for key in (head, "_blocks.15._bn1.running_mean"):  # a weight and a buffer, both trained
        mean = (trained[key].float() + probe[key].float()) / 2
        torch.testing.assert_close(final.state_dict[key].float(), mean, atol=2e-3, rtol=2e-3)
    assert final.calibration["temperature"] > 0


def test_soup_of_another_architecture_is_refused_before_training(
    tiny_dataset, tiny_model, tmp_path
):
    out = tmp_path / "r"
    args = ["--data", str(tiny_dataset), "--arch", "resnet18", "--weights", "none"]
    proc = cli("train", *args, "--soup", str(tiny_model), "--out", str(out), timeout=300)
    assert proc.returncode != 0
    assert "--soup" in proc.stderr and "efficientnet_lite0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "last.pt").exists()


def test_kaggle_offline_is_a_clear_message(tmp_path):
    env = {**os.environ, "KAGGLEHUB_CACHE": str(tmp_path / "kh")}
    proc = cli("train", "--kaggle", "--out", str(tmp_path / "k"), env=env, timeout=180)
    assert proc.returncode != 0
    assert "--data" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_head_mode_on_a_random_backbone_is_a_clear_refusal(tiny_dataset, tmp_path):
    """ResNet-18 without ImageNet weights (offline) has no features worth a linear head; the
    run used to end with NaN features and a checkpoint that could not be loaded."""
    proc = cli(
        "train",
        "--data",
        str(tiny_dataset),
        "--mode",
        "head",
        "--arch",
        "resnet18",
        "--weights",
        "none",
        "--out",
        str(tmp_path / "r"),
        timeout=300,
    )
    assert proc.returncode != 0
    assert "--mode full" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "best.pt").exists()


def test_temperature_of_non_finite_logits_is_one():
    import numpy as np
    from garbage_sorter.training.report import fit_temperature

    logits = np.array([[np.nan, 1.0], [np.inf, 0.0], [0.0, 1.0]], np.float32)
    assert fit_temperature(logits, np.array([0, 1, 1])) == 1.0


def test_search_writes_trials_and_best_config(tiny_dataset, tiny_model, tmp_path):
    out = tmp_path / "search"
    proc = cli(
        "train",
        "--data",
        str(tiny_dataset),
        "--mode",
        "head",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        str(tiny_model),
        "--search",
        "3",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = (out / "search" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("trial,lr")
    best = TrainConfig.load(out / "search" / "best_config.json")
    assert best.search == 0 and best.splits
    assert (out / "best.pt").is_file()
    again = cli(
        "train",
        "--config",
        str(out / "search" / "best_config.json"),
        "--out",
        str(tmp_path / "reuse"),
    )
    assert again.returncode == 0, again.stderr


def test_torchrun_two_gloo_processes(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29731",
        "-m",
        "garbage_sorter.training",
        "--data",
        str(tiny_dataset),
        "--arch",
        "efficientnet_lite0",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--freeze-blocks",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.metrics["epochs_run"] == 2
    # Each process saw half of every epoch's draw: steps per epoch halve.
    history = json.loads((out / "history.json").read_text())
    assert len([h for h in history if "train_loss" in h]) == 2
