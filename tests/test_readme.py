"""The README's shell commands, run as written, on the README as it is when the tests run.

Every fenced ``bash``/``sh``/``console`` block is split into commands (``\\`` continuations joined,
``&&`` chains split), and each command is accounted for:

- install steps (``python3 -m venv``, ``. .venv/bin/activate``, ``pip install``) and ``python -m
  pytest`` are what CI has just run to get here, so they are not run again;
- a command whose comment says it ``needs the internet`` or ``needs a GPU`` is run and must stop
  with a message that says so, without a traceback (not run where this machine has either);
- the app (``garbage-sorter`` with no subcommand, or ``app``) runs under
  ``QT_QPA_PLATFORM=offscreen`` until it has settled into its event loop, and must still be up;
- ``garbage-sorter web`` runs until its page answers on loopback;
- everything else runs to the end and must exit 0.

No command may print a traceback. They run in bash, from a scratch folder that links to the
checkout's files (so what they write, such as ``model.onnx``, stays out of the checkout), with
``HOME`` in a temporary folder and this venv's scripts first on ``PATH``. Two substitutions keep
the run short, the options staying as written: the placeholders ``DIR`` and ``RUN`` become a small
folder of real photos and a new run folder, and the training folders ``../shared/data/trashnet``
and ``../shared/data/realworld`` become a few photos a class copied from them, in the same layout.

``text`` blocks are usage synopses: each subcommand's ``--help`` must list every option they show.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLASSES, SHARED_DATA

from garbage_sorter.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIXTURE_PHOTOS = ROOT / "tests" / "fixtures" / "photos"
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
INSTALL = re.compile(r"^(python3? -m venv|\. |source |(python3? -m )?pip3? install)")
SUITE = re.compile(r"^python3? -m pytest\b")  # this very suite
NEEDS = re.compile(r"needs (the internet|a GPU)", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]{1,}$")
TIMEOUT = 600  # s for one command; a quiet machine needs far less
SETTLE = 120  # s for the app to settle into its event loop


@dataclass
class Command:
    """One command of a README block: its text without the comment, and the comment."""

    text: str
    comment: str
    line: int

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def kind(self) -> str:
        """install, suite, internet, gpu, app, web or run (see the module docstring)."""
        if INSTALL.match(self.text):
            return "install"
        if SUITE.match(self.text):
            return "suite"
        needs = NEEDS.search(self.comment)
        if needs:
            return "internet" if "internet" in needs.group(1) else "gpu"
        words = self.words
        if words[0] == "garbage-sorter":
            first = words[1] if len(words) > 1 else "app"
            if first == "web":
                return "web"
            if first not in SUBCOMMANDS or first == "app":
                return "app" if first not in ("-h", "--help", "--version") else "run"
        return "run"


def _split_comment(line: str) -> tuple[str, str]:
    """``cmd  # note`` -> (``cmd``, ``note``); a ``#`` inside quotes is not a comment."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def readme_blocks(kinds: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block whose language is one of ``kinds``."""
    blocks, lines = [], README.read_text(encoding="utf-8").splitlines()
    start, language = None, ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if not fence:
            continue
        if start is None:
            start, language = number, fence.group(1).lower()
        else:
            if language in kinds:
                blocks.append((start, "\n".join(lines[start : number - 1])))
            start = None
    return blocks


def block_commands(first_line: int, text: str) -> list[Command]:
    """The commands of a shell block, continuations joined and ``&&`` chains split."""
    commands, pending, pending_line = [], "", 0
    for offset, raw in enumerate(text.splitlines(), first_line + 1):
        line = raw.removeprefix("$ ") if raw.startswith("$ ") else raw
        if not pending:
            pending_line = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        body, comment = _split_comment(pending + line)
        pending = ""
        for part in re.split(r"\s+&&\s+", body.strip()):
            if part:
                commands.append(Command(part, comment, pending_line))
    return commands


SHELL = readme_blocks(SHELL_BLOCKS)


# -- what the commands run on ------------------------------------------------------------------


def _copy_few(source: Path, target: Path, per_class: int) -> None:
    """``per_class`` photos of each class folder under ``source``, in the same layout."""
    for folder in sorted({p.parent for p in source.rglob("*.jpg")}):
        if folder.name in CLASSES:
            dest = target / folder.relative_to(source)
            dest.mkdir(parents=True, exist_ok=True)
            for photo in sorted(folder.glob("*.jpg"))[:per_class]:
                shutil.copy(photo, dest / photo.name)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    """The scratch checkout, home folder and small data folders the commands run with."""
    tmp = tmp_path_factory.mktemp("readme")
    clone = tmp / "checkout"
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (clone / entry.name).symlink_to(entry)
    (tmp / "shared").symlink_to(ROOT.parent / "shared")  # ../shared, as beside the checkout
    small = tmp / "small"
    if SHARED_DATA.is_dir():
        _copy_few(SHARED_DATA / "trashnet", small / "trashnet", 4)
        _copy_few(SHARED_DATA / "realworld", small / "realworld", 2)
    # The adapt example's folders: one setting's unlabelled photos (TrashNet++'s tiled floor) and
    # a folder per class of corrections (the fixture photos, without their README).
    kitchen = tmp / "kitchen-camera"
    if SHARED_DATA.is_dir():
        kitchen.mkdir()
        for photo in sorted((SHARED_DATA / "realworld" / "trashnetpp").rglob("*.jpg"))[::40]:
            shutil.copy(photo, kitchen / photo.name)
    corrections = tmp / "corrections"
    _copy_few(FIXTURE_PHOTOS, corrections, 3)
    home = tmp / "home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        QT_QPA_PLATFORM="offscreen",
        PYTHONUNBUFFERED="1",
    )
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)  # the web check talks to loopback
    return {
        "clone": clone,
        "small": small,
        "kitchen": kitchen,
        "corrections": corrections,
        "env": env,
        "tmp": tmp,
        "runs": 0,
    }


def _substituted(command: Command, place: dict) -> str | None:
    """The command with the known placeholders and data folders replaced; None if it needs the
    shared data and this machine has none."""
    text = command.text
    uses_shared = (
        "../shared/data" in text
        or "docs/model/split" in text
        or re.search(r"\bDIR\b", text)
        or "photos-from-the-kitchen-camera/" in text
    )
    if uses_shared and not SHARED_DATA.is_dir():
        return None
    small = place["small"]
    text = text.replace("../shared/data/trashnet", str(small / "trashnet"))
    text = text.replace("../shared/data/realworld", str(small / "realworld"))
    text = re.sub(r"\bDIR\b", str(small / "trashnet"), text)
    text = text.replace("photos-from-the-kitchen-camera/", str(place["kitchen"]))
    text = text.replace("--labelled corrections/", f"--labelled {place['corrections']}")
    text = text.replace("new-photo.jpg", str(FIXTURE_PHOTOS / "metal" / "metal1.jpg"))
    if re.search(r"\bRUN\b", text):
        place["runs"] += 1
        text = re.sub(r"\bRUN\b", str(place["tmp"] / f"run{place['runs']}"), text)
    unknown = [w for w in shlex.split(text) if PLACEHOLDER.match(w)]
    assert not unknown, (
        f"README line {command.line}: {unknown} look like placeholders; write a command that runs "
        "as it stands, or teach tests/test_readme.py the placeholder"
    )
    return text


def _run(text: str, place: dict) -> subprocess.CompletedProcess:
    """Run one command to its end in the scratch checkout, as a user's shell would."""
    return subprocess.run(
        ["bash", "-c", text],
        cwd=place["clone"],
        env=place["env"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _start(text: str, place: dict) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", f"exec {text}"],
        cwd=place["clone"],
        env=place["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> str:
    """End a long-running command (SIGTERM: no Python traceback) and return what it printed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_app(text: str, place: dict) -> str:
    """Start the app and wait until it idles in its event loop (window up, model in, photos
    answered): alive, and using under 0.1 s of CPU in 2 s."""
    proc = _start(text, place)
    try:
        started, samples = time.monotonic(), []
        while time.monotonic() - started < SETTLE:
            time.sleep(0.5)
            try:
                samples.append((time.monotonic(), _cpu_seconds(proc.pid)))
            except (FileNotFoundError, ProcessLookupError):
                break  # it exited
            if proc.poll() is not None:
                break
            old = [s for s in samples if s[0] <= samples[-1][0] - 2]
            if time.monotonic() - started > 3 and old and samples[-1][1] - old[-1][1] < 0.1:
                break
        alive = proc.poll() is None
    finally:
        out = _stop(proc)
    assert alive, f"`{text}` exited (status {proc.returncode}) instead of showing the app:\n{out}"
    assert time.monotonic() - started < SETTLE, f"`{text}` never settled:\n{out}"
    return out


def _run_web(words: list[str], text: str, place: dict) -> str:
    """Start the web page and wait until it answers on its address."""
    host, port = "127.0.0.1", 7860
    for flag, value in zip(words, words[1:], strict=False):
        host = value if flag == "--host" else host
        port = int(value) if flag == "--port" else port
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            pytest.skip(f"something on this machine already listens on {host}:{port}")
    proc = _start(text, place)
    url, answered = f"http://{host}:{port}/", None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + SETTLE
        while answered is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with opener.open(url, timeout=5) as response:
                    answered = response.status
            except OSError:
                time.sleep(0.5)
    finally:
        out = _stop(proc)
    assert answered == 200, f"`{text}`: {url} did not answer ({answered}):\n{out}"
    return out


def _reaches(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _run_without(kind: str, text: str, place: dict) -> str | None:
    """A command that needs the internet or a GPU, where there is none: it must say so."""
    if kind == "internet" and (_reaches("www.kaggle.com") or _reaches("huggingface.co")):
        return None  # this machine has the internet: the offline message cannot be checked
    if kind == "gpu":
        import torch

        if torch.cuda.is_available():
            return None
    proc = _run(text, place)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"`{text}` succeeded without {kind}?\n{out}"
    said = r"internet|network|offline|could not be reached" if kind == "internet" else r"CUDA|GPU"
    assert re.search(said, out, re.IGNORECASE), f"`{text}` does not say it needs {kind}:\n{out}"
    return out


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("first_line, text", SHELL, ids=[f"README.md:{n}" for n, _ in SHELL])
def test_readme_shell_block_runs_as_written(first_line, text, place):
    not_here = []
    for command in block_commands(first_line, text):
        kind = command.kind
        if kind in ("install", "suite"):
            continue
        runnable = _substituted(command, place)
        if runnable is None:
            not_here.append(command.text)
            continue
        if kind in ("internet", "gpu"):
            out = _run_without(kind, runnable, place)
            if out is None:
                not_here.append(command.text)
                continue
        elif kind == "app":
            out = _run_app(runnable, place)
        elif kind == "web":
            out = _run_web(shlex.split(runnable), runnable, place)
        else:
            proc = _run(runnable, place)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"README line {command.line}: `{command.text}`:\n{out}"
        assert "Traceback" not in out, f"README line {command.line}: `{command.text}`:\n{out}"
    if not_here:
        pytest.skip(f"could not run here (no ../shared/data, or the internet/a GPU): {not_here}")


def test_the_readme_shows_the_bare_command_and_every_kind_is_exercised():
    """The first command a user types is in a block, and the parser sees the README's commands."""
    commands = [c for n, t in SHELL for c in block_commands(n, t)]
    assert any(c.words == ["garbage-sorter"] and c.kind == "app" for c in commands)
    kinds = {c.kind for c in commands}
    assert {"install", "app", "web", "run", "internet"} <= kinds, kinds


def test_block_parsing():
    text = 'a --x 1 \\\n  --y "#2"   # about 1 min\nb && c  # needs the internet\n$ d'
    commands = block_commands(10, text)
    assert [(c.text, c.comment, c.line) for c in commands] == [
        ('a --x 1    --y "#2"', "about 1 min", 11),
        ("b", "needs the internet", 13),
        ("c", "needs the internet", 13),
        ("d", "", 14),
    ]
    assert [c.kind for c in commands[1:]] == ["internet", "internet", "run"]
    kinds = {
        "garbage-sorter": "app",
        "garbage-sorter photo.jpg": "app",
        "garbage-sorter --region de": "app",
        "garbage-sorter app a.jpg": "app",
        "garbage-sorter --help": "run",
        "garbage-sorter classify x.jpg": "run",
        "garbage-sorter web --port 1": "web",
        "pip install . ": "install",
        ". .venv/bin/activate": "install",
        "python -m pytest": "suite",
    }
    assert {t: Command(t, "", 1).kind for t in kinds} == kinds


SYNOPSES = [
    line
    for _, text in readme_blocks(("text",))
    for line in text.splitlines()
    if line.startswith("garbage-sorter")
]


def _synopsis_subcommand(line: str) -> str:
    words = line.split()
    sub = words[1].strip("[]") if len(words) > 1 else "app"
    return sub if sub in SUBCOMMANDS else "app"


@pytest.mark.parametrize("line", SYNOPSES, ids=[_synopsis_subcommand(s) for s in SYNOPSES])
def test_synopsis_options_are_in_the_help(line):
    sub = _synopsis_subcommand(line)
    proc = subprocess.run(
        [sys.executable, "-m", "garbage_sorter", sub, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    missing = sorted(o for o in options if o not in proc.stdout)
    assert not missing, f"`garbage-sorter {sub} --help` does not list {missing}"


def test_desktop_entry():
    """The menu entry the README installs opens photos with the app, with the bundled icon."""
    path = ROOT / "resources" / "garbage-sorter.desktop"
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(path, encoding="utf-8")
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Exec"] == "garbage-sorter %F"
    assert {"image/jpeg", "image/png"} <= set(desktop["MimeType"].strip(";").split(";"))
    assert (ROOT / "resources" / "icons" / f"{desktop['Icon']}.svg").is_file()
    validate = shutil.which("desktop-file-validate")
    if validate:
        proc = subprocess.run([validate, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
