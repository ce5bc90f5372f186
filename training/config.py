"""The one training configuration: the CLI, ``--config`` files and the app's retrain dialog fill it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as ``config.json`` beside its outputs."""

    data: list[str] = field(default_factory=list)  # folder-per-class trees, several allowed
    kaggle: str | None = None  # a Kaggle dataset handle to download with kagglehub
    out: str | None = None  # run folder; default: a new folder under the user's data folder
    arch: str = "resnet18"
    weights: str = "none"  # none | imagenet | PATH to a checkpoint
    mode: str = "full"  # head: linear classifier on cached features; full: fine-tune everything
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3  # the original project's warm start...
    lr_min: float = 1e-5  # ...decayed by a cosine to below its 1e-4
    backbone_lr_scale: float = 1.0  # <1 keeps pretrained features closer to where they were
    freeze_blocks: int = (
        0  # keep the stem and this many early blocks frozen (see train.frozen_modules)
    )
    warmup_epochs: float = 0.5
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    aug_strength: float = 1.0
    background_aug: float = (
        0.0  # probability of compositing a TrashNet object onto a new background
    )
    balance: bool = True  # balanced sampling over classes and sources
    patience: int = 5  # early stopping: epochs without validation improvement
    linear_probe_epochs: int = 0  # LP-FT: train the head alone first, then everything
    # WiSE-FT: 1 = fine-tuned weights, 0 = the weights fine-tuning began from (the linear probe's,
    # or with no probe the --weights checkpoint's: then 0.5 is a two-model soup)
    wise_alpha: float = 1.0
    # Model soup: checkpoints of the same architecture and classes (other fine-tunes from the same
    # start) whose weights are averaged, uniformly, with the final ones
    soup: list[str] = field(default_factory=list)
    teacher: str | None = None  # checkpoint to distil from (sees the student's augmented batch)
    distill_alpha: float = 0.7
    distill_temperature: float = 2.0
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    splits: str | None = None  # reuse a saved split folder instead of making one
    workers: int = 1
    device: str = "auto"
    max_steps: int | None = None  # stop early (smoke tests, time budgets)
    resume: bool = False
    half_checkpoint: bool = True  # fp16 weights on disk: half the size, same accuracy
    search: int = 0  # random-search trials before training
    calibrate: bool = True
    target_precision: float = 0.95  # accuracy wanted on the answers the model does not abstain on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (``--config`` file); unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        config = cls(**data)
        config.split_fractions = tuple(config.split_fractions)
        return config

    def save(self, path: Path) -> None:
        from garbage_sorter.storage import atomic_write

        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def add_config_options(parser, names: list[str]) -> None:
    """A ``--flag-name`` for each named number field of :class:`TrainConfig`, typed as the field.

    Unset flags stay ``None``, so a ``--config`` file or the field's own default applies; the
    help shows that default.
    """
    types = {f.name: f.type for f in fields(TrainConfig)}
    defaults = TrainConfig()
    for name in names:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int if str(types[name]).startswith("int") else float,
            default=None,
            help=f"(default {getattr(defaults, name)})",
        )
