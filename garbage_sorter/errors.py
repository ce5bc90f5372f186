"""Errors the core raises, defined without heavy imports so the ONNX Runtime path needs no torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""
