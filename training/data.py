"""The data layer of training: find photos on disk, audit them, clean them, split them.

A data folder is one folder per class (torchvision ``ImageFolder`` layout), possibly wrapped in
extra folders (the Kaggle download nests its classes two levels deep) or holding several sources
side by side (``realworld/taco``, ``realworld/floor-photos``, ``realworld/trashnetpp``). Every
photo becomes a `Sample` that remembers its source and a *group*: photos in one group show the
same object (crops of one TACO or TrashNet++ photo, near-duplicate shots in TrashNet) and must
stay on one side of a split, or the test set measures memory instead of recognition.

The usual order is ``scan_folder`` -> ``audit`` -> ``clean`` -> ``split`` -> ``save_split``; the
training loop then reads the split back with ``load_split`` and samples with ``balance_weights``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from garbage_sorter.storage import atomic_write

KAGGLE_HANDLE = "asdasdasasdas/garbage-classification"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_NEAR_DUP_THRESHOLD = 6
# Manifest columns that name the photo a crop was cut from -> the prefix of its group id.
# TACO's prefix stays "taco" so that the group ids in the committed split files still match.
GROUP_COLUMNS = {"taco_image": "taco", "source_photo": "photo"}

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Files that sit beside the photos and are never photos, whatever their bytes look like.
_NOT_PHOTOS = {"manifest.csv", "readme", "readme.md", "readme.txt", "license", "licence"}
# Leading bytes of the formats PIL reads; WebP is checked separately (RIFF....WEBP).
_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


@dataclass(frozen=True)
class Sample:
    """One labelled photo on disk."""

    path: str  # absolute path
    label: str  # lower-case class name
    source: str  # name of the data folder it came from, e.g. "trashnet", "taco", "kaggle"
    group: str  # photos that must stay on one side of a split share a group id


class DataSourceError(Exception):
    """A data folder or download cannot be used; the message says why and what to do instead."""


# --------------------------------------------------------------------------------------------
# Finding photos


def kaggle_download(handle: str = KAGGLE_HANDLE) -> Path:
    """Download (or reuse the cached copy of) a Kaggle dataset and return its folder.

    Any failure -- kagglehub missing, no network, no credentials -- becomes a `DataSourceError`
    that points at ``--data DIR``. Scan the result with ``scan_folder(path, source="kaggle")``:
    the folder kagglehub returns is named after the dataset version, not the dataset.
    """
    try:
        import kagglehub  # lazy: an optional, slow import that most runs never need

        return Path(kagglehub.dataset_download(handle))
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else ""
        raise DataSourceError(
            f"Kaggle could not be reached to download {handle!r} "
            f"({type(error).__name__}{': ' + reason if reason else ''}). "
            "Without network access or Kaggle credentials, train on a local folder instead: "
            "--data DIR, where DIR holds one subfolder of photos per class."
        ) from error


def find_class_root(root: Path) -> Path:
    """Return the folder whose subfolders are the classes, descending through wrapper folders.

    The Kaggle download is ``Garbage classification/Garbage classification/cardboard/...`` beside
    a few index files; any chain of single-subfolder wrappers like that is followed down.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataSourceError(f"{root} is not a folder of photos.")
    folder = root
    while True:
        subfolders = _subfolders(folder)
        if any(_holds_images(sub) for sub in subfolders):
            return folder
        if len(subfolders) != 1:
            raise DataSourceError(
                f"No class folders found under {root}: expected one subfolder of photos per "
                "class (cardboard/, glass/, ...), possibly inside wrapper folders."
            )
        folder = subfolders[0]


def scan_folder(
    root: Path, source: str | None = None, classes: Sequence[str] | None = None
) -> list[Sample]:
    """List the photos of a folder-per-class tree as samples, sorted by path.

    Class names are the folder names lower-cased (``Cardboard`` and ``cardboard`` merge). A file
    is a photo if its bytes say so, whatever its extension; a file with a photo's extension but
    other bytes is kept too, so that `audit` reports it instead of it vanishing silently.
    ``classes`` keeps only those classes. ``source`` defaults to the folder's name.

    A folder without class subfolders whose own subfolders are class trees (``realworld/`` with
    ``taco/`` and ``floor-photos/``) is read as several sources, each named after its subfolder
    (``source`` is then ignored); subfolders that are not class trees are skipped.

    A ``manifest.csv`` with a ``file`` column and a grouping column (`GROUP_COLUMNS`: TACO's
    ``taco_image``, TrashNet++'s ``source_photo``) puts crops of one source photo into one group;
    every other photo starts in a group of its own.
    """
    root = Path(root).absolute()
    wanted = {name.lower() for name in classes} if classes is not None else None
    try:
        find_class_root(root)
    except DataSourceError:
        sources = [sub for sub in _subfolders(root) if _is_class_tree(sub)]
        if not sources:
            raise
        return sorted(
            (s for sub in sources for s in _scan_source(sub, sub.name, wanted)),
            key=lambda s: s.path,
        )
    return _scan_source(root, source or root.name, wanted)


def _scan_source(root: Path, source: str, wanted: set[str] | None) -> list[Sample]:
    class_root = find_class_root(root)
    # A manifest may sit in the source folder or in any wrapper down to the class folders.
    folders = [class_root, *(p for p in class_root.parents if p.is_relative_to(root))]
    groups = {}
    for folder in reversed(folders):  # the innermost manifest wins
        groups.update(_manifest_groups(folder, source))
    samples = []
    for class_dir in _subfolders(class_root):
        label = class_dir.name.lower()
        if wanted is not None and label not in wanted:
            continue
        for path in _photo_files(class_dir):
            group = groups.get(path) or f"{source}/{path.relative_to(class_root).as_posix()}"
            samples.append(Sample(str(path), label, source, group))
    return sorted(samples, key=lambda s: s.path)


def _manifest_groups(folder: Path, source: str) -> dict[Path, str]:
    """Map each photo listed in ``folder/manifest.csv`` to the group of its source photo.

    The first of `GROUP_COLUMNS` that the manifest has names the source photo; a row with that
    column empty leaves its photo in a group of its own.
    """
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        column = next((c for c in GROUP_COLUMNS if c in columns), None)
        if "file" not in columns or column is None:
            return {}
        prefix = GROUP_COLUMNS[column]
        return {
            folder / row["file"]: f"{source}/{prefix}:{row[column]}"
            for row in reader
            if row["file"] and row[column]
        }


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_class_tree(folder: Path) -> bool:
    try:
        find_class_root(folder)
    except DataSourceError:
        return False
    return True


def _holds_images(folder: Path) -> bool:
    return any(p.is_file() and _is_photo_file(p) for p in folder.iterdir())


def _photo_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and _is_photo_file(path):
            yield path


def _is_photo_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name in _NOT_PHOTOS:
        return False
    return path.suffix.lower() in _IMAGE_SUFFIXES or _sniff(path) is not None


def _sniff(path: Path) -> str | None:
    """The image format named by a file's first bytes, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    return _sniff_bytes(head)


def _sniff_bytes(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


# --------------------------------------------------------------------------------------------
# Auditing


@dataclass
class Audit:
    """What is wrong with (and inside) a list of samples. Paths are the samples' paths."""

    near_dup_threshold: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    cross_label_duplicates: list[tuple[str, ...]] = field(default_factory=list)
    exact_duplicates: list[tuple[str, ...]] = field(default_factory=list)  # same label
    near_duplicate_groups: list[tuple[str, ...]] = field(default_factory=list)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> label -> n
    labels: dict[str, str] = field(default_factory=dict, repr=False)  # path -> label

    @property
    def imbalance_ratio(self) -> float:
        """Largest class over smallest class, all sources together."""
        totals = Counter()
        for counts in self.class_counts.values():
            totals.update(counts)
        return max(totals.values()) / min(totals.values()) if totals else math.nan

    @property
    def mixed_label_groups(self) -> list[tuple[str, ...]]:
        """Near-duplicate groups with more than one label: label noise or a false match.

        Groups that are just a cross-label duplicate are left out: they are listed already."""
        known = {p for g in self.cross_label_duplicates for p in g}
        return [
            g
            for g in self.near_duplicate_groups
            if len({self.labels[p] for p in g}) > 1 and not set(g) <= known
        ]

    def to_dict(self) -> dict:
        """The audit as plain JSON-able data."""
        ratio = self.imbalance_ratio
        return {
            "near_dup_threshold": self.near_dup_threshold,
            "unreadable": [list(item) for item in self.unreadable],
            "cross_label_duplicates": [list(g) for g in self.cross_label_duplicates],
            "exact_duplicates": [list(g) for g in self.exact_duplicates],
            "near_duplicate_groups": [list(g) for g in self.near_duplicate_groups],
            "mixed_label_groups": [list(g) for g in self.mixed_label_groups],
            "class_counts": self.class_counts,
            "imbalance_ratio": None if math.isnan(ratio) else ratio,
        }

    def format(self) -> str:
        """A report for people, a few lines per finding."""
        labels = sorted({lab for counts in self.class_counts.values() for lab in counts})
        width = max([len(s) for s in self.class_counts] + [6])
        header = "".join(f"{lab:>10}" for lab in [*labels, "total"])
        lines = ["Class counts:", " " * (width + 2) + header]
        for source, counts in sorted(self.class_counts.items()):
            row = "".join(f"{counts.get(lab, 0):>10}" for lab in labels)
            lines.append(f"  {source:<{width}}{row}{sum(counts.values()):>10}")
        lines.append(f"Imbalance (largest / smallest class): {self.imbalance_ratio:.2f}")
        lines.append(f"Unreadable files: {len(self.unreadable)}")
        lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        lines.append(
            f"Identical files under different labels: {len(self.cross_label_duplicates)}"
            + (" (clean() drops every copy)" if self.cross_label_duplicates else "")
        )
        lines += [f"  {self._describe(g)}" for g in self.cross_label_duplicates]
        lines.append(f"Identical files under one label: {len(self.exact_duplicates)}")
        lines += [f"  {self._describe(g)}" for g in self.exact_duplicates]
        sizes = Counter(len(g) for g in self.near_duplicate_groups)
        in_groups = sum(len(g) for g in self.near_duplicate_groups)
        lines.append(
            f"Near-duplicate groups (perceptual hash distance <= {self.near_dup_threshold}): "
            f"{len(self.near_duplicate_groups)}, holding {in_groups} photos; sizes "
            + (", ".join(f"{n}x{size}" for size, n in sorted(sizes.items())) or "none")
        )
        mixed = self.mixed_label_groups
        lines.append(f"  with more than one label (label noise or a false match): {len(mixed)}")
        lines += [f"    {self._describe(g)}" for g in mixed]
        return "\n".join(lines)

    def _describe(self, paths: Iterable[str]) -> str:
        return " = ".join(f"{self.labels[p]}:{Path(p).name}" for p in paths)


def audit(
    samples: Sequence[Sample], *, near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD
) -> Audit:
    """Check every photo: can it be decoded, is it a copy of another, which look alike.

    Near-duplicates are photos whose 64-bit perceptual hashes (DCT pHash) differ in at most
    ``near_dup_threshold`` bits; groups are closed transitively. The default of 6 comes from
    looking at TrashNet's pairs: at 0-2 bits all are the same shot, at 4 six of seven and at 6
    seven of ten are the same object shot again; at 8 about half are different objects that merely
    share the white board, and groups start to chain. A false match only keeps two photos on one
    side of the split, while a missed one leaks an object into the test set, so the tie goes to
    the larger threshold. The same object turned or moved is as far apart as unrelated photos
    (18-30 bits), so no threshold finds it.
    """
    result = Audit(near_dup_threshold=near_dup_threshold)
    counts: dict[str, Counter] = defaultdict(Counter)
    by_content: dict[str, dict[str, Sample]] = defaultdict(dict)  # sha256 -> path -> sample
    hashed: list[tuple[str, int]] = []
    for sample, (digest, phash, problem) in zip(samples, map(_fingerprint, samples), strict=True):
        result.labels[sample.path] = sample.label
        counts[sample.source][sample.label] += 1
        if problem:
            result.unreadable.append((sample.path, problem))
            continue
        if sample.path not in by_content[digest]:  # a sample listed twice is not a copy
            by_content[digest][sample.path] = sample
            hashed.append((sample.path, phash))
    result.class_counts = {src: dict(sorted(c.items())) for src, c in sorted(counts.items())}
    for copies in by_content.values():
        if len(copies) < 2:
            continue
        paths = tuple(sorted(copies))
        if len({s.label for s in copies.values()}) > 1:
            result.cross_label_duplicates.append(paths)
        else:
            result.exact_duplicates.append(paths)
    result.cross_label_duplicates.sort()
    result.exact_duplicates.sort()
    paths = [p for p, _ in hashed]
    hashes = np.array([h for _, h in hashed], dtype=np.uint64)
    pairs = near_duplicate_pairs(hashes, near_dup_threshold)
    result.near_duplicate_groups = [
        tuple(sorted(paths[i] for i in members))
        for members in _components(len(paths), pairs)
        if len(members) > 1
    ]
    result.near_duplicate_groups.sort()
    return result


def _fingerprint(sample: Sample) -> tuple[str, int, str]:
    """(sha256 of the bytes, perceptual hash, problem or "") for one photo."""
    try:
        data = Path(sample.path).read_bytes()
    except OSError as error:
        return "", 0, f"cannot be read ({error.strerror or error})"
    if not data:
        return "", 0, "empty file"
    kind = _sniff_bytes(data[:12])
    if kind is None:
        return "", 0, "not an image (unrecognised content)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            phash = image_phash(image)
    except Exception as error:  # decoders raise many types; any of them means unusable
        return "", 0, f"{kind} that cannot be decoded ({error})"
    return hashlib.sha256(data).hexdigest(), phash, ""


_DCT_SIZE = 32
# DCT-II basis: row k holds cos(pi * (2n + 1) * k / 2N); D @ x @ D.T is the 2-D transform.
_DCT = np.cos(
    np.pi
    * (2 * np.arange(_DCT_SIZE)[None, :] + 1)
    * np.arange(_DCT_SIZE)[:, None]
    / (2 * _DCT_SIZE)
)


def image_phash(image: Image.Image) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey image.

    Bit i is set where coefficient i exceeds the median of the 63 non-DC coefficients.
    """
    image.draft("L", (2 * _DCT_SIZE, 2 * _DCT_SIZE))  # JPEG: decode at 1/2..1/8 scale, fast
    grey = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX)
    low = (_DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def near_duplicate_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """All index pairs (i < j) whose hashes differ in at most ``threshold`` bits, shape (n, 2)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    block = 256  # rows per step: a slice of the distance matrix is 256 x n x 8 bytes
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= threshold)
        i += start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.intp)


def _components(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``n`` nodes joined by ``pairs`` (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = defaultdict(list)
    for x in range(n):
        members[find(x)].append(x)
    return list(members.values())


# --------------------------------------------------------------------------------------------
# Cleaning and splitting


def clean(samples: Sequence[Sample], audit: Audit) -> list[Sample]:
    """Drop what the audit found unusable and merge groups that show the same object.

    Dropped: unreadable files; every copy of a file that appears under different labels (which
    label is right is unknown, so neither is trusted); all but the first copy (by path) of a file
    repeated under one label. Near-duplicate groups are merged with the existing groups
    (union-find), and each merged group takes the smallest of its group ids as its name.
    """
    dropped = {path for path, _ in audit.unreadable}
    dropped.update(p for g in audit.cross_label_duplicates for p in g)
    dropped.update(p for g in audit.exact_duplicates for p in g[1:])
    kept = [s for s in samples if s.path not in dropped]

    ids = sorted({s.group for s in kept})
    index = {g: i for i, g in enumerate(ids)}
    group_of = {s.path: index[s.group] for s in kept}
    pairs = []
    for members in audit.near_duplicate_groups:
        present = [group_of[p] for p in members if p in group_of]
        pairs += [(present[0], other) for other in present[1:]]
    # Components list their smallest member first and ids are sorted, so the name is min(id).
    renamed = {}
    for component in _components(len(ids), pairs):
        for i in component:
            renamed[ids[i]] = ids[component[0]]
    return [
        s if renamed[s.group] == s.group else Sample(s.path, s.label, s.source, renamed[s.group])
        for s in kept
    ]


def split(
    samples: Sequence[Sample],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Split samples into train/val/test, keeping each group whole and each stratum in proportion.

    A stratum is a (source, label) pair, so every source and every class gets about the same
    share in each split; a group is filed under the stratum most of its photos belong to. Within
    a stratum the groups are shuffled (by ``seed`` and the stratum's name, so adding a source
    does not reshuffle the others) and placed largest first, each into the split furthest below
    its share of the photos placed so far. The shortfall is counted per source across its
    classes, so the rounding of small classes (floor-photos has 8-10 a class) evens out over the
    source instead of always favouring one split. The same samples and seed give the same split.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.path):
        groups[s.group].append(s)
    strata: dict[tuple[str, str], list[list[Sample]]] = defaultdict(list)
    for members in groups.values():
        key = Counter((s.source, s.label) for s in members).most_common()
        best = max(n for _, n in key)
        strata[min(k for k, n in key if n == best)].append(members)

    result: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    placed: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # per source, per split
    for (source, label), stratum in sorted(strata.items()):
        rng = random.Random(f"{seed}/{source}/{label}")
        stratum.sort(key=lambda members: members[0].group)
        rng.shuffle(stratum)
        stratum.sort(key=len, reverse=True)  # stable: ties keep the shuffled order
        counts = placed[source]
        for members in stratum:
            total = sum(counts) + len(members)
            shortfall = [f * total - n for f, n in zip(fractions, counts, strict=True)]
            order = rng.sample(range(3), 3)  # a random split wins an exact tie
            k = max(order, key=lambda k: (fractions[k] > 0, round(shortfall[k], 9)))
            counts[k] += len(members)
            result[SPLIT_NAMES[k]] += members
    return {name: sorted(items, key=lambda s: s.path) for name, items in result.items()}


def save_split(splits: dict[str, Sequence[Sample]], directory: Path) -> None:
    """Write ``train.txt``, ``val.txt``, ``test.txt``: one ``label\\tsource\\tgroup\\tpath`` line
    per sample. Each file is replaced atomically, so a crash never leaves half a file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        lines = []
        for s in splits.get(name, ()):
            fields = (s.label, s.source, s.group, s.path)
            if any(c in f for f in fields for c in "\t\n\r"):
                raise ValueError(f"Cannot save a sample with a tab or line break in it: {s}")
            lines.append("\t".join(fields) + "\n")
        atomic_write(directory / f"{name}.txt", "".join(lines))


def load_split(directory: Path) -> dict[str, list[Sample]]:
    """Read back what `save_split` wrote."""
    directory = Path(directory)
    result = {}
    for name in SPLIT_NAMES:
        path = directory / f"{name}.txt"
        if not path.is_file():
            raise DataSourceError(f"No saved split at {path}.")
        samples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise DataSourceError(
                    f"{path}, line {number}: expected label, source, group and path separated "
                    f"by tabs, found {len(fields)} field(s)."
                )
            label, source, group, sample_path = fields
            if not Path(sample_path).is_absolute():  # relative to the split file, as committed
                sample_path = str((directory / sample_path).resolve())
            samples.append(Sample(sample_path, label, source, group))
        result[name] = samples
    return result


def balance_weights(samples: Sequence[Sample]) -> list[float]:
    """Per-sample weights for ``torch.utils.data.WeightedRandomSampler``; their mean is 1.

    The rule: every class gets the same share of the draws (so the small trash class is seen as
    often as paper). Within a class, each source gets a share proportional to the *square root*
    of its photo count: a source with 8 photos beside one with 341 gets about 13% of that class's
    draws instead of 2% (not drowned), yet its few photos are not repeated as often as the
    big source's many (an equal share would show each of them ~40 times more often).
    Within a (source, class) cell every photo weighs the same.
    """
    if not samples:
        return []
    cells = Counter((s.source, s.label) for s in samples)
    root_sum: dict[str, float] = defaultdict(float)
    for (_, label), n in cells.items():
        root_sum[label] += math.sqrt(n)
    n_classes = len(root_sum)

    def weight(s: Sample) -> float:
        n = cells[s.source, s.label]
        return len(samples) / n_classes * math.sqrt(n) / root_sum[s.label] / n

    return [weight(s) for s in samples]
