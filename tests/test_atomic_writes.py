"""Nothing lost: a writer killed with SIGKILL mid-write, or a full disk, leaves the previous file.

A forked child writes generation 1, 2, 3, ... of a file in a loop (a checkpoint through
``save_checkpoint``, an 8 MB blob through ``atomic_write`` and ``atomic_open``, the region
through ``bins.save_region``). Once generation 1 is on disk the test kills the child with
SIGKILL: at a random moment, as soon as the writer's temporary file appears, or part-way through
the bytes of a write. The file must then be whole and loadable, and be the last finished
generation (or the next one, when the rename landed just before the kill). The same kills tear
a plain ``open(..., "wb")`` writer's file, which shows they land mid-write. What a kill leaves
behind is a hidden ``.name.*`` temporary that nothing reading the real file looks at.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from garbage_sorter import bins
from garbage_sorter.model import load_checkpoint, save_checkpoint
from garbage_sorter.storage import atomic_open, atomic_write

FORK = multiprocessing.get_context("fork")
REGIONS = ["de", "uk", "us", "it"]
BLOB = random.Random(0).randbytes(8 * 2**20)
CHUNK = 64 * 1024


def _write_forever(write: Callable[[int], None], finished) -> None:
    """In the child: write generations 1, 2, 3, ... until killed."""
    torch.set_num_threads(1)  # no intra-op thread pool in a forked child
    generation = 0
    while True:
        generation += 1
        write(generation)
        finished.value = generation


def kill_a_writer(write: Callable[[int], None], when: Callable[[float], bool]) -> int:
    """Run ``write`` in a loop in a forked child; once generation 1 is written, SIGKILL the
    child as soon as ``when(seconds_per_write)`` is true. Returns the last finished generation.
    """
    finished = FORK.Value("q", 0, lock=False)
    child = FORK.Process(target=_write_forever, args=(write, finished), daemon=True)
    started = time.monotonic()
    child.start()
    try:
        while finished.value < 1:
            assert child.is_alive() and time.monotonic() - started < 120, "the writer is stuck"
            time.sleep(0.0005)
        pace = time.monotonic() - started
        while not when(pace):
            assert child.is_alive() and time.monotonic() - started < 120, "never the moment"
            time.sleep(0.0002)
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    return finished.value


def at_random(rng: random.Random) -> Callable[[float], bool]:
    """A random moment within about two writes."""
    end = None

    def when(pace: float) -> bool:
        nonlocal end
        end = end or time.monotonic() + rng.uniform(0, 2) * pace
        return time.monotonic() >= end

    return when


def once_a_temporary_appears(folder: Path, target: Path) -> Callable[[float], bool]:
    """As soon as a write's temporary file exists: the write is in flight."""
    before = None

    def when(pace: float) -> bool:
        nonlocal before
        if before is None:
            before = temporaries(folder, target)
        return bool(temporaries(folder, target) - before)

    return when


def temporaries(folder: Path, target: Path) -> set[Path]:
    return {p for p in folder.iterdir() if p.name.startswith(f".{target.name}.")}


def run_trials(name: str, trials: int, write, verify, folder: Path, target: Path) -> Counter:
    """Kill ``write`` ``trials`` times, alternating the moment; ``verify`` reads the generation."""
    rng = random.Random(name)
    stats: Counter = Counter()
    for trial in range(trials):
        before = temporaries(folder, target)
        if trial % 2:
            finished = kill_a_writer(write, at_random(rng))
        else:
            finished = kill_a_writer(write, once_a_temporary_appears(folder, target))
        generation = verify(finished)
        assert generation in (finished, finished + 1), (generation, finished)
        # Whatever a kill left beside the file is a hidden temporary, never a look-alike.
        assert {p for p in folder.iterdir() if p != target} == temporaries(folder, target)
        assert sorted(folder.glob(f"*{target.suffix}")) == [target]
        stats["kills"] += 1
        stats["left a half-written temporary"] += len(temporaries(folder, target) - before)
        stats["new file already in place"] += generation == finished + 1
    print(f"{name}: {dict(stats)}")
    assert stats["left a half-written temporary"] >= 1, "no kill landed inside a write"
    return stats


@pytest.fixture(scope="module")
def tiny(tiny_model):
    checkpoint = load_checkpoint(tiny_model)
    return checkpoint, checkpoint.build()


def test_sigkill_while_saving_a_checkpoint(tmp_path, tiny):
    checkpoint, model = tiny
    target = tmp_path / "model.pt"

    def write(generation: int) -> None:
        with torch.no_grad():
            model._fc.bias.fill_(generation)
        _save(target, tiny, generation)

    def verify(finished: int) -> int:
        loaded = load_checkpoint(target)
        generation = loaded.metrics["generation"]
        # Weights and metadata come from the same write, not a mix of two.
        assert torch.all(loaded.state_dict["_fc.bias"] == generation)
        return generation

    run_trials("save_checkpoint", 6, write, verify, tmp_path, target)
    load_checkpoint(target).build()  # and it still makes a network


def _blob(generation: int) -> bytes:
    tag = generation.to_bytes(8, "little")
    return tag + BLOB + tag


def _read_blob(path: Path) -> int:
    """The generation of a whole blob file; AssertionError if it is torn."""
    data = path.read_bytes()
    assert len(data) == len(BLOB) + 16 and data[:8] == data[-8:], "torn file"
    assert hashlib.sha256(data[8:-8]).digest() == BLOB_SHA256, "torn file"
    return int.from_bytes(data[:8], "little")


BLOB_SHA256 = hashlib.sha256(BLOB).digest()


def test_sigkill_during_a_big_atomic_write(tmp_path):
    target = tmp_path / "blob.bin"
    run_trials(
        "atomic_write 8 MB",
        12,
        lambda g: atomic_write(target, _blob(g)),
        lambda finished: _read_blob(target),
        tmp_path,
        target,
    )


def test_sigkill_while_saving_the_region(tmp_path, monkeypatch):
    monkeypatch.setenv("GARBAGE_SORTER_CONFIG_DIR", str(tmp_path))
    target = tmp_path / "settings.json"

    def verify(finished: int) -> int:
        region = json.loads(target.read_text())["region"]  # whole JSON, not a torn prefix
        assert bins.saved_region() == region
        # Generation g saves REGIONS[g % 4]: neighbours differ, so the region names the write.
        for generation in (finished, finished + 1):
            if REGIONS[generation % len(REGIONS)] == region:
                return generation
        raise AssertionError(f"{region!r} is not from the last two writes ({finished})")

    run_trials(
        "save_region",
        12,
        lambda g: bins.save_region(REGIONS[g % len(REGIONS)]),
        verify,
        tmp_path,
        target,
    )


def slow_chunked_writer(target: Path, opener, progress) -> Callable[[int], None]:
    """Writes a blob 64 kB at a time like a slow disk, counting bytes in ``progress``."""

    def write(generation: int) -> None:
        data = _blob(generation)
        with opener(target) as handle:
            for at in range(0, len(data), CHUNK):
                handle.write(data[at : at + CHUNK])
                progress.value = generation * len(data) + at + CHUNK
                time.sleep(0.001)

    return write


def part_way(progress, fraction: float) -> Callable[[float], bool]:
    """When the next write has got ``fraction`` of its bytes out."""
    total, goal = len(BLOB) + 16, None

    def when(pace: float) -> bool:
        nonlocal goal
        goal = goal or (progress.value // total + 1 + fraction) * total
        return progress.value >= goal

    return when


@pytest.mark.parametrize("opener", ["atomic_open", "plain open"])
def test_sigkill_part_way_through_the_bytes(opener, tmp_path):
    """Killed after 5-95 % of a write's bytes: atomic_open keeps the old file, open() tears it."""
    target = tmp_path / "blob.bin"
    progress = FORK.Value("q", 0, lock=False)
    open_it = atomic_open if opener == "atomic_open" else lambda path: open(path, "wb")
    write = slow_chunked_writer(target, open_it, progress)
    rng = random.Random(opener)
    outcomes = []
    for _ in range(5):
        fraction = rng.uniform(0.05, 0.95)
        finished = kill_a_writer(write, part_way(progress, fraction))
        try:
            outcomes.append(f"{fraction:.0%}: generation {_read_blob(target)} of {finished}")
        except AssertionError:
            outcomes.append(f"{fraction:.0%}: torn, {target.stat().st_size} bytes")
    print(f"{opener}: {outcomes}")
    if opener == "atomic_open":
        assert all("torn" not in outcome for outcome in outcomes)
        assert len(temporaries(tmp_path, target)) == 5  # each kill cut a temporary short
    else:  # the control: the kills do land mid-write
        assert sum("torn" in outcome for outcome in outcomes) >= 4, outcomes


# A full disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A real tmpfs of ``size`` bytes at ``folder`` (needs root), or skip."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _save(path: Path, tiny, generation: int) -> None:
    checkpoint, model = tiny
    save_checkpoint(
        path,
        model,
        arch=checkpoint.arch,
        classes=checkpoint.classes,
        preprocessing=checkpoint.preprocessing,
        half=True,
        metrics={"generation": generation},
    )


def test_full_disk_while_saving_a_checkpoint(tmp_path, tiny):
    """On a real disk with room for one checkpoint, not two: ENOSPC, and the old one loads."""
    probe = tmp_path / "probe.pt"
    _save(probe, tiny, 0)
    room = probe.stat().st_size * 3 // 2
    with tmpfs(tmp_path / "disk", room) as disk:
        target = disk / "model.pt"
        _save(target, tiny, 1)
        before = target.read_bytes()
        with pytest.raises(OSError) as caught:
            _save(target, tiny, 2)
        assert caught.value.errno == errno.ENOSPC and "No space left" in str(caught.value)
        assert target.read_bytes() == before
        assert load_checkpoint(target).metrics["generation"] == 1
        assert sorted(disk.iterdir()) == [target], "the temporary file was left behind"


def test_full_disk_while_saving_the_region(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "disk", 64 * 1024) as disk:
        monkeypatch.setenv("GARBAGE_SORTER_CONFIG_DIR", str(disk))
        bins.save_region("de")
        before = (disk / "settings.json").read_bytes()
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            filler.write(bytes(256 * 1024))
        with pytest.raises(OSError) as caught:
            bins.save_region("uk")
        assert caught.value.errno == errno.ENOSPC
        assert (disk / "settings.json").read_bytes() == before and bins.saved_region() == "de"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "settings.json"]


class FullAfter:
    """Patch for ``os.fdopen``: the handle's writes fail with ENOSPC after ``room`` bytes."""

    real = staticmethod(os.fdopen)

    def __init__(self, room: int):
        self.room = room

    def __call__(self, fd, *args, **kwargs):
        handle = self.real(fd, *args, **kwargs)
        write = handle.write

        def limited(data):
            if len(data) > self.room:
                write(data[: self.room])
                self.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return write(data)

        handle.write = limited
        return handle


@pytest.mark.parametrize("kind", ["checkpoint", "bytes", "text", "settings"])
def test_failing_write_keeps_the_old_file(kind, tmp_path, tiny, monkeypatch):
    """Where no tmpfs can be mounted: the write itself fails half-way with ENOSPC."""
    monkeypatch.setenv("GARBAGE_SORTER_CONFIG_DIR", str(tmp_path))
    name = {"checkpoint": "model.pt", "bytes": "blob.bin", "text": "notes.txt"}
    target = tmp_path / name.get(kind, "settings.json")
    write = {
        "checkpoint": lambda generation: _save(target, tiny, generation),
        "bytes": lambda generation: atomic_write(target, _blob(generation)),
        "text": lambda generation: atomic_write(target, f"generation {generation}\n" * 10_000),
        # Only a few bytes: the disk is full from the first one.
        "settings": lambda generation: bins.save_region(REGIONS[generation % len(REGIONS)]),
    }[kind]
    write(1)
    before = target.read_bytes()
    monkeypatch.setattr(os, "fdopen", FullAfter(room=0 if kind == "settings" else 4096))
    with pytest.raises(OSError) as caught:
        write(2)
    monkeypatch.setattr(os, "fdopen", FullAfter.real)
    assert caught.value.errno == errno.ENOSPC and "No space left" in str(caught.value)
    assert target.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [target], "the temporary file was left behind"
    if kind == "checkpoint":
        assert load_checkpoint(target).metrics["generation"] == 1
    if kind == "settings":
        assert bins.saved_region() == REGIONS[1]
