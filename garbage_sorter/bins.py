"""Which bin a class of waste goes in, by region.

Regions are data: one TOML file per region in ``garbage_sorter.resources/bins``, plus the
user's own files in ``<config dir>/bins/*.toml``, which add regions or override some classes of
a bundled one. The chosen region is persisted in ``<config dir>/settings.json`` so the CLI
remembers it between runs. The config dir is ``platformdirs.user_config_dir("garbage-sorter")``
unless the ``GARBAGE_SORTER_CONFIG_DIR`` environment variable points elsewhere.

A region file looks like::

    id = "de"
    title = "Germany"
    source = "Where the rules come from."
    note = "Optional caveat shown with the region."

    [bins.glass]
    name = "Altglascontainer (bottle bank)"
    colour = "#2e7d32"
    note = "Sort by colour into white, green and brown."
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .storage import atomic_write, config_dir

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
DEFAULT_REGION = "default"

_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_BIN_FIELDS = ("name", "colour", "note")


@dataclass(frozen=True)
class Bin:
    """Where one class of waste goes: the bin's name, its colour as ``#rrggbb``, a one-line hint."""

    name: str
    colour: str
    note: str


# Returned for a label the region has no rule for, e.g. a class of a custom model.
UNKNOWN_BIN = Bin(
    name="Check local rules",
    colour="#9e9e9e",
    note="This region's rules do not cover this kind of item; ask your local council.",
)


@dataclass(frozen=True)
class Region:
    """A region's bins, keyed by class label."""

    id: str
    title: str
    bins: Mapping[str, Bin]
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        # A read-only view, so a Region shared between the GUI and a worker cannot be changed.
        object.__setattr__(self, "bins", MappingProxyType(dict(self.bins)))

    def bin_for(self, label: str) -> Bin:
        """The bin for ``label``; a generic "Check local rules" bin for a label with no rule."""
        return self.bins.get(label.strip().lower(), UNKNOWN_BIN)


def load_regions(user_dir: Path | None = None) -> dict[str, Region]:
    """All regions: the bundled ones, then the user's files in ``user_dir`` on top.

    ``user_dir`` defaults to ``config_dir() / "bins"``. A user file whose ``id`` is a bundled
    region's overrides only what it sets (one class, or one field of one class); any other id
    adds a region. A user file that cannot be read or is malformed is skipped with a warning.
    A broken bundled file raises, because that is a bug in the package, not in the user's setup.
    """
    raw: dict[str, dict[str, Any]] = {}
    bundled = files("garbage_sorter.resources").joinpath("bins")
    for entry in sorted(bundled.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = _check(tomllib.loads(entry.read_text(encoding="utf-8")), entry.name)
            raw[data["id"]] = data

    user_dir = config_dir() / "bins" if user_dir is None else user_dir
    for path in sorted(user_dir.glob("*.toml")) if user_dir.is_dir() else ():
        try:
            data = _check(tomllib.loads(path.read_text(encoding="utf-8")), path.name, path.stem)
            merged = _merge(raw.get(data["id"]), data)
            _build(merged)  # a new region or class must give every field of its bins
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
            warnings.warn(f"Skipping region file {path}: {exc}", stacklevel=2)
            continue
        raw[data["id"]] = merged

    return {region_id: _build(data) for region_id, data in raw.items()}


def get_region(region_id: str | None = None) -> Region:
    """The region ``region_id``; with ``None``, the saved choice, else ``"default"``.

    Raises ValueError, listing the known ids, when ``region_id`` is not a known region. A saved
    choice that no longer exists (its user file was removed) falls back to ``"default"``.
    """
    regions = load_regions()
    if region_id is None:
        saved = saved_region()
        if saved is not None and saved not in regions:
            warnings.warn(f"Saved region {saved!r} no longer exists; using default", stacklevel=2)
            saved = None
        region_id = saved or DEFAULT_REGION
    try:
        return regions[region_id]
    except KeyError:
        known = ", ".join(sorted(regions))
        raise ValueError(f"Unknown region {region_id!r}; known regions: {known}") from None


def saved_region() -> str | None:
    """The region id saved by :func:`save_region`, or ``None`` if there is none."""
    region_id = _read_settings().get("region")
    return region_id if isinstance(region_id, str) else None


def save_region(region_id: str) -> None:
    """Persist ``region_id`` as the user's choice; ValueError if it is not a known region."""
    get_region(region_id)
    settings = _read_settings()
    settings["region"] = region_id
    atomic_write(config_dir() / "settings.json", json.dumps(settings, indent=2) + "\n")


def _check(data: dict[str, Any], filename: str, default_id: str | None = None) -> dict[str, Any]:
    """Validate a parsed region file; a user file may omit ``id`` (the file name's stem is used)."""
    data = dict(data)
    data.setdefault("id", default_id)
    if data["id"] is None:
        raise ValueError(f"{filename}: missing 'id'")
    for key in ("id", "title", "source"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            raise ValueError(f"{filename}: {key!r} must be a non-empty string")
    if not isinstance(data.get("note", ""), str):
        raise ValueError(f"{filename}: 'note' must be a string")
    bins = data.get("bins", {})
    if not isinstance(bins, dict):
        raise ValueError(f"{filename}: 'bins' must be a table")
    for label, fields in bins.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{filename}: bins.{label} must be a table")
        unknown = set(fields) - set(_BIN_FIELDS)
        if unknown:
            raise ValueError(f"{filename}: bins.{label} has unknown keys {sorted(unknown)}")
        for key, value in fields.items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{filename}: bins.{label}.{key} must be a non-empty string")
        if "colour" in fields and not _COLOUR.fullmatch(fields["colour"]):
            raise ValueError(f"{filename}: bins.{label}.colour must look like #rrggbb")
    return data


def _merge(base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, class by class and field by field."""
    if base is None:
        return override
    merged = {**base, **{k: v for k, v in override.items() if k != "bins"}}
    bins = {label: dict(fields) for label, fields in base.get("bins", {}).items()}
    for label, fields in override.get("bins", {}).items():
        bins[label] = {**bins.get(label, {}), **fields}
    merged["bins"] = bins
    return merged


def _build(data: dict[str, Any]) -> Region:
    """A Region from validated data; raises ValueError if a bin lacks a field."""
    bins = {}
    for label, fields in data.get("bins", {}).items():
        missing = [key for key in _BIN_FIELDS if key not in fields]
        if missing:
            raise ValueError(f"Region {data['id']!r}: bins.{label} is missing {missing}")
        bins[label.lower()] = Bin(**fields)
    return Region(
        id=data["id"],
        title=data.get("title", data["id"]),
        bins=bins,
        source=data.get("source", ""),
        note=data.get("note", ""),
    )


def _read_settings() -> dict[str, Any]:
    path = config_dir() / "settings.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"Ignoring unreadable settings file {path}: {exc}", stacklevel=3)
        return {}
    return settings if isinstance(settings, dict) else {}
