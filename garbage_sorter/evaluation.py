"""Accuracy, per-class precision/recall/F1 and the confusion matrix of a model on labelled photos.

The photos come from a folder-per-class tree or from a split file written by training
(``label<TAB>source<TAB>group<TAB>path`` lines), in which case figures are also given per source,
so studio (TrashNet) and real-world accuracy are reported side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .classifier import Classifier
from .images import ImageLoadError, iter_image_paths, load_image


class EvaluationError(ValueError):
    """The labelled photos cannot be read or do not fit the model."""


def read_labelled(path: Path, subset: str = "test") -> list[tuple[Path, str, str]]:
    """(photo, label, source) triples from a class-folder tree, a split file or a split folder."""
    if path.is_dir() and (path / f"{subset}.txt").is_file():
        path = path / f"{subset}.txt"
    if path.is_file():
        items = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise EvaluationError(f"{path}, line {number}: expected label, source, group, path")
            label, source, _, photo = fields
            photo_path = Path(photo)
            if not photo_path.is_absolute():
                photo_path = (path.parent / photo_path).resolve()
            items.append((photo_path, label, source))
        return items
    if not path.is_dir():
        raise EvaluationError(f"{path}: no such folder or split file")
    items = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        items += [(f, class_dir.name.lower(), path.name) for f in iter_image_paths([class_dir])]
    if not items:
        raise EvaluationError(f"{path}: no class folders with images")
    return items


def evaluate_path(
    clf: Classifier,
    path: Path,
    *,
    subset: str = "test",
    crop: bool | None = None,
    batch_size: int = 32,
    tta: bool = False,
) -> dict[str, Any]:
    """Run ``clf`` over labelled photos; returns JSON-able figures."""
    from sklearn.metrics import classification_report, confusion_matrix

    items = read_labelled(path, subset)
    unknown = sorted({label for _, label, _ in items} - set(clf.classes))
    if unknown:
        raise EvaluationError(
            f"labels the model does not know: {', '.join(unknown)} "
            f"(model classes: {', '.join(clf.classes)})"
        )
    index = {c: i for i, c in enumerate(clf.classes)}
    y_true, y_pred, conf, sources, unreadable = [], [], [], [], []
    for start in range(0, len(items), batch_size):
        images, kept = [], []
        for photo, label, source in items[start : start + batch_size]:
            try:
                images.append(load_image(photo, draft=clf.checkpoint.preprocessing.resize))
                kept.append((label, source))
            except ImageLoadError as exc:
                unreadable.append({"path": str(photo), "error": str(exc)})
        for pred, (label, source) in zip(
            clf.predict_batch(images, crop=crop, tta=tta), kept, strict=True
        ):
            y_true.append(index[label])
            y_pred.append(index[pred.label])
            conf.append(pred.confidence)
            sources.append(source)
    y_true, y_pred, conf = np.array(y_true), np.array(y_pred), np.array(conf)
    if not len(y_true):
        raise EvaluationError(f"{path}: no readable photos")
    labels = list(range(len(clf.classes)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=clf.classes, output_dict=True, zero_division=0
    )
    answered = conf >= clf.threshold
    result: dict[str, Any] = {
        "model": clf.checkpoint.path,
        "data": str(path),
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "per_class": {
            c: {k: report[c][k] for k in ("precision", "recall", "f1-score", "support")}
            for c in clf.classes
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": clf.classes,
        "abstain_rate": float(1 - answered.mean()),
        "accuracy_answered": float((y_true[answered] == y_pred[answered]).mean())
        if answered.any()
        else None,
        "unreadable": unreadable,
        "by_source": {},
    }
    sources_arr = np.array(sources)
    for source in sorted(set(sources)):
        m = sources_arr == source
        ans = m & answered
        result["by_source"][source] = {
            "n": int(m.sum()),
            "accuracy": float((y_true[m] == y_pred[m]).mean()),
            "recall": {
                c: float((y_pred[m & (y_true == i)] == i).mean())
                if (m & (y_true == i)).any()
                else None
                for i, c in enumerate(clf.classes)
            },
            "abstain_rate": float(1 - ans.sum() / m.sum()),
            "accuracy_answered": float((y_true[ans] == y_pred[ans]).mean()) if ans.any() else None,
        }
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures as a readable text table."""
    classes = result["classes"]
    lines = [
        f"Model: {result['model']}",
        f"Data:  {result['data']} ({result['n']} photos)",
        f"Accuracy: {result['accuracy']:.4f}",
        "",
        f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for c in classes:
        r = result["per_class"][c]
        lines.append(
            f"{c:<12}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1-score']:>10.4f}{int(r['support']):>9}"
        )
    lines += [
        "",
        "Confusion matrix (rows: true, columns: predicted)",
        " " * 12 + "".join(f"{c[:8]:>9}" for c in classes),
    ]
    for c, row in zip(classes, result["confusion_matrix"], strict=True):
        lines.append(f"{c:<12}" + "".join(f"{v:>9}" for v in row))
    if len(result["by_source"]) > 1:
        lines += ["", "By source:"]
        for source, r in result["by_source"].items():
            lines.append(f"  {source:<14} n={r['n']:<5} accuracy {r['accuracy']:.4f}")
    if result["accuracy_answered"] is not None:
        lines += [
            "",
            f"Abstains ('not sure') on {result['abstain_rate']:.1%}; "
            f"accuracy on the answers given {result['accuracy_answered']:.4f}",
        ]
    if result["unreadable"]:
        lines += ["", f"Unreadable photos skipped: {len(result['unreadable'])}"]
    return "\n".join(lines)
