"""The feedback dataset: corrections saved atomically, counted, and a full disk loses nothing."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from PIL import Image

from garbage_sorter.feedback import FeedbackError, count_corrections, feedback_dir, save_correction
from garbage_sorter.storage import data_dir


@pytest.fixture()
def photo(photos) -> Image.Image:
    with Image.open(photos[0]) as im:
        return im.convert("RGB")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_feedback_dir_is_in_the_user_data_folder():
    assert feedback_dir() == data_dir() / "feedback"


def test_save_and_count(tmp_path, photo):
    first = save_correction(photo, "glass", root=tmp_path)
    second = save_correction(photo.convert("L"), "glass", root=tmp_path)
    third = save_correction(photo, "metal", root=tmp_path)
    assert first.parent == tmp_path / "glass" and first.suffix == ".jpg"
    assert first != second
    with Image.open(third) as saved:
        assert saved.format == "JPEG" and saved.mode == "RGB" and saved.size == photo.size
    # A temporary file left by a crash is not a correction.
    (tmp_path / "metal" / ".x.jpg.tmp").write_bytes(b"torn")
    assert count_corrections(tmp_path) == {"glass": 2, "metal": 1}
    assert count_corrections(tmp_path / "missing") == {}


def test_default_root_is_feedback_dir(photo):
    path = save_correction(photo, "paper")
    assert path.parent == feedback_dir() / "paper"
    assert count_corrections()["paper"] >= 1


@pytest.mark.parametrize("label", ["", ".", "..", "../etc", "a/b", ".hidden"])
def test_unsafe_labels_are_refused(tmp_path, photo, label):
    with pytest.raises(ValueError):
        save_correction(photo, label, root=tmp_path)
    assert not any(tmp_path.rglob("*"))


@pytest.fixture()
def tiny_disk(tmp_path):
    """A real 192 KiB tmpfs (needs root), else skip: the patched test below still runs."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_for_real_loses_nothing(tiny_disk, photo):
    saved: dict[Path, str] = {}
    with pytest.raises(FeedbackError, match="disk is full"):
        for _ in range(100):  # each photo is tens of KB: the disk fills within a few
            path = save_correction(photo, "cardboard", root=tiny_disk)
            saved[path] = _digest(path)
    assert saved, "not even one photo fitted on the test disk"
    left = sorted((tiny_disk / "cardboard").iterdir())
    assert left == sorted(saved), "a temporary or torn file was left behind"
    for path, digest in saved.items():
        assert _digest(path) == digest
        with Image.open(path) as im:
            im.load()
    assert count_corrections(tiny_disk) == {"cardboard": len(saved)}


def test_full_disk_while_writing_gives_a_clear_error(tmp_path, photo, monkeypatch):
    """Where no tmpfs can be mounted: the write itself fails with ENOSPC half-way through."""
    earlier = save_correction(photo, "trash", root=tmp_path)
    digest = _digest(earlier)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FeedbackError) as caught:
        save_correction(photo, "trash", root=tmp_path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "disk is full" in str(caught.value) and "Errno" not in str(caught.value)
    assert list((tmp_path / "trash").iterdir()) == [earlier]
    assert _digest(earlier) == digest


def test_unwritable_folder_gives_a_clear_error(tmp_path, photo, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(FeedbackError, match="Could not save the correction.*Permission denied"):
        save_correction(photo, f"c{uuid.uuid4().hex[:4]}", root=tmp_path)
