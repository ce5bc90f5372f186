"""Crash-safe file writing and the user's folders.

Every file the project writes for keeps (models, settings, the feedback dataset) goes through
:func:`atomic_write`: a temporary file in the same folder, flushed and fsynced, then renamed over
the target. A crash or SIGKILL at any moment leaves either the old file or the new one, never a
torn mix, and a full disk fails before the old file is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

APP_NAME = "garbage-sorter"


def config_dir() -> Path:
    """The user's config folder (``GARBAGE_SORTER_CONFIG_DIR`` overrides it, for tests and kiosks)."""
    override = os.environ.get("GARBAGE_SORTER_CONFIG_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    """The user's data folder: feedback dataset and training runs (``GARBAGE_SORTER_DATA_DIR`` overrides)."""
    override = os.environ.get("GARBAGE_SORTER_DATA_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    If the body raises (a full disk, an interrupt), the temporary file is removed and ``path``
    is left exactly as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); keep the mode a plain write would have given.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk too.
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see module docstring)."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with atomic_open(path, mode) as handle:
        handle.write(data)


def atomic_save(path: str | os.PathLike[str], writer: Callable[[IO], None]) -> None:
    """Call ``writer(handle)`` on a temporary binary file that atomically becomes ``path``."""
    with atomic_open(path, "wb") as handle:
        writer(handle)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a model file need not fit twice in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
