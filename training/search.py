"""Random hyperparameter search (the original project's other future work).

Plain random search, not Optuna: with four hyperparameters and a handful of trials it finds
settings as good as a model-based search (Bergstra & Bengio 2012), adds no dependency, and each
trial is an ordinary training run whose outputs can be inspected. All trials share one split and
are scored on the validation split only; the test split is never looked at.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import replace
from pathlib import Path

from garbage_sorter.storage import atomic_write

from .config import TrainConfig
from .train import Progress, ProgressFn, default_out_dir, main


def sample_trial(rng: random.Random, base: TrainConfig) -> dict[str, float]:
    """One point of the search space (log-uniform for rates)."""
    return {
        "lr": 10 ** rng.uniform(math.log10(base.lr) - 1, math.log10(base.lr) + 0.5),
        "weight_decay": 10 ** rng.uniform(-4, -0.7),
        "label_smoothing": rng.uniform(0.0, 0.2),
        "aug_strength": rng.uniform(0.3, 1.5),
    }


def validation_score(metrics: dict) -> float:
    """Mean validation accuracy over data sources (a small source counts as much as a big one)."""
    val = metrics["val"]
    sources = [k for k, v in val.items() if isinstance(v, dict) and k != "all"]
    return sum(val[s]["acc"] for s in sources) / len(sources) if sources else val["acc"]


def run_search(config: TrainConfig, on_progress: ProgressFn | None = None) -> TrainConfig:
    """Run ``config.search`` trials; write ``search/trials.csv`` and ``search/best_config.json``
    into the run folder and return the best config (to be trained for real by the caller)."""
    report = on_progress or (lambda p: None)
    out = Path(config.out) if config.out else default_out_dir()
    folder = out / "search"
    rng = random.Random(config.seed)
    rows: list[dict] = []
    split_dir: str | None = config.splits
    for trial in range(config.search):
        params = sample_trial(rng, config)
        trial_config = replace(
            config,
            **params,
            search=0,
            out=str(folder / f"trial{trial:02d}"),
            splits=split_dir,
            resume=False,
            calibrate=False,
            epochs=config.epochs if config.mode == "head" else max(1, config.epochs // 3),
        )
        report(
            Progress(
                "log",
                message=f"trial {trial + 1}/{config.search}: "
                + ", ".join(f"{k}={v:.3g}" for k, v in params.items()),
            )
        )
        result = main(trial_config, report)
        split_dir = split_dir or str(Path(trial_config.out) / "splits")
        rows.append({"trial": trial, **params, "val_score": validation_score(result.metrics)})
        report(Progress("log", message=f"  validation score {rows[-1]['val_score']:.4f}"))
    best = max(rows, key=lambda r: r["val_score"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / "trials.csv", buffer.getvalue())
    chosen = replace(
        config,
        search=0,
        splits=split_dir,
        out=str(out),
        **{k: best[k] for k in ("lr", "weight_decay", "label_smoothing", "aug_strength")},
    )
    atomic_write(folder / "best_config.json", json.dumps(chosen.to_dict(), indent=2) + "\n")
    report(
        Progress(
            "log",
            message=f"best trial {best['trial']} (validation {best['val_score']:.4f}); "
            f"config in {folder / 'best_config.json'}",
        )
    )
    return chosen
