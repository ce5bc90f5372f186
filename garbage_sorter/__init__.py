"""Garbage Sorter: which bin does this item of waste go in?

``from garbage_sorter import Classifier`` is the public entry point. The heavy modules (torch)
load on first use, so importing the package, and starting the CLI, stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "Prediction", "__version__"]

if TYPE_CHECKING:
    from .classifier import Classifier, Prediction


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from . import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'garbage_sorter' has no attribute {name!r}")
