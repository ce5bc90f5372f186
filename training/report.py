"""What a practitioner reads after a run: calibration, metrics, reports and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from garbage_sorter.storage import atomic_save, atomic_write


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins."""
    if not len(targets):
        return float("nan")
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == targets
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature scaling: the one scalar that minimises validation NLL (Guo et al. 2017)."""
    if len(targets) < 2:
        return 1.0
    x, y = torch.from_numpy(logits).float(), torch.from_numpy(targets).long()
    if not torch.isfinite(x).all():
        return 1.0  # no temperature can be fitted to non-finite logits; leave them as they are
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = log_t.exp().item()
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def choose_threshold(probs: np.ndarray, targets: np.ndarray, target_precision: float) -> float:
    """The lowest confidence threshold at which the answers given reach ``target_precision``.

    Below it the model says "not sure". Lowest, so the model abstains as rarely as it can.
    """
    return precision_threshold(probs.max(1), probs.argmax(1) == targets, target_precision)


def precision_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_precision: float
) -> float:
    """:func:`choose_threshold` for answers scored any way: each answer's confidence and whether
    it is right."""
    if not len(correct):
        return 0.0
    order = np.argsort(-confidence)
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(running >= target_precision)[0]
    if not len(ok):
        return float(confidence.max())
    # The answers kept are the most confident ones up to the last index still above target.
    return float(confidence[order][ok[-1]])


def calibrate(
    val_logits: np.ndarray, val_targets: np.ndarray, target_precision: float
) -> dict[str, float]:
    """Temperature and abstention threshold from the validation split."""
    temperature = fit_temperature(val_logits, val_targets)
    threshold = choose_threshold(softmax(val_logits, temperature), val_targets, target_precision)
    return {"temperature": temperature, "threshold": threshold}


def split_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    samples: Sequence,
    classes: Sequence[str],
    calibration: dict[str, float],
) -> dict[str, Any]:
    """Accuracy, per-class recall, calibration and abstention, overall and per source."""
    from sklearn.metrics import recall_score

    out: dict[str, Any] = {"n": int(len(targets))}
    if not len(targets):
        return out
    raw = softmax(logits)
    cal = softmax(logits, calibration["temperature"])
    pred = cal.argmax(1)
    out["acc"] = float((pred == targets).mean())
    groups = {"all": np.ones(len(targets), bool)}
    for source in sorted({s.source for s in samples}):
        groups[source] = np.array([s.source == source for s in samples])
    for name, mask in groups.items():
        if name != "all":
            out[f"acc_{name}"] = float((pred[mask] == targets[mask]).mean())
        answered = cal[mask].max(1) >= calibration["threshold"]
        recall = recall_score(
            targets[mask], pred[mask], labels=range(len(classes)), average=None, zero_division=0
        )
        out[name] = {
            "n": int(mask.sum()),
            "acc": float((pred[mask] == targets[mask]).mean()),
            "recall": {c: float(r) for c, r in zip(classes, recall, strict=True)},
            "ece_before": expected_calibration_error(raw[mask], targets[mask]),
            "ece_after": expected_calibration_error(cal[mask], targets[mask]),
            "abstain_rate": float(1 - answered.mean()),
            "acc_answered": float((pred[mask][answered] == targets[mask][answered]).mean())
            if answered.any()
            else float("nan"),
        }
    return out


def write_reports(
    out: Path,
    classes: Sequence[str],
    test_logits: np.ndarray,
    test_targets: np.ndarray,
    test_samples: Sequence,
    history: list[dict[str, Any]],
    calibration: dict[str, float],
    val_logits: np.ndarray,
    val_targets: np.ndarray,
    val_samples: Sequence,
) -> dict[str, Any]:
    """Classification report, confusion matrix and curves as files; returns the metrics dict."""
    from sklearn.metrics import classification_report, confusion_matrix

    metrics: dict[str, Any] = {
        "classes": list(classes),
        "calibration": calibration,
        "test": split_metrics(test_logits, test_targets, test_samples, classes, calibration),
        "val": split_metrics(val_logits, val_targets, val_samples, classes, calibration),
    }
    if len(test_targets):
        pred = test_logits.argmax(1)
        text = classification_report(
            test_targets,
            pred,
            labels=range(len(classes)),
            target_names=list(classes),
            digits=4,
            zero_division=0,
        )
        atomic_write(out / "classification_report.txt", text)
        matrix = confusion_matrix(test_targets, pred, labels=range(len(classes)))
        metrics["confusion_matrix"] = matrix.tolist()
        plot_confusion(out / "confusion_matrix.png", matrix, classes)
    plot_curves(out / "curves.png", history)
    atomic_write(out / "history.json", json.dumps(history, indent=1) + "\n")
    return metrics


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window from a worker thread
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, matrix: np.ndarray, classes: Sequence[str]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    rows = [h for h in history if "train_loss" in h]
    plt = _figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    if rows:
        epochs = [h["epoch"] + 1 for h in rows]
        left.plot(epochs, [h["train_loss"] for h in rows], label="train loss")
        left.set_xlabel("epoch")
        left.legend()
        right.plot(epochs, [h["train_acc"] for h in rows], label="train acc")
        for key in sorted(k for k in rows[-1] if k.startswith("val_acc")):
            right.plot(epochs, [h.get(key, np.nan) for h in rows], label=key.replace("_", " "))
        right.set_xlabel("epoch")
        right.legend()
    else:
        left.text(0.5, 0.5, "head-only training: no epochs to plot", ha="center")
    fig.tight_layout()
    atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)
