"""Tests of the training data layer on small folder trees built from real TrashNet photos."""

import io
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from garbage_sorter.training.data import (
    DataSourceError,
    Sample,
    audit,
    balance_weights,
    clean,
    find_class_root,
    kaggle_download,
    load_split,
    save_split,
    scan_folder,
    split,
)
from PIL import Image

TRASHNET = Path("/work/shared/data/trashnet")
pytestmark = pytest.mark.skipif(not TRASHNET.is_dir(), reason="needs the TrashNet photos")

# Three photos a class that are no near-duplicates of each other, plus two known defects:
# glass115 = metal91 byte for byte, and paper40 is paper2 shot again (pHash distance 2).
PHOTOS = {
    "cardboard": ["cardboard1", "cardboard2", "cardboard3"],
    "glass": ["glass1", "glass2", "glass3", "glass115"],
    "metal": ["metal1", "metal2", "metal3", "metal91"],
    "paper": ["paper1", "paper2", "paper3", "paper40"],
    "plastic": ["plastic2", "plastic5", "plastic6"],
    "trash": ["trash1", "trash2", "trash3"],
}


def _photo(name: str) -> Path:
    return TRASHNET / name.rstrip("0123456789") / f"{name}.jpg"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A TrashNet-like folder with the defects real data has."""
    root = tmp_path / "mixed"
    for label, names in PHOTOS.items():
        (root / label).mkdir(parents=True)
        for name in names:
            shutil.copy(_photo(name), root / label / f"{name}.jpg")
    # A JPEG with a PNG's extension and one with no extension at all.
    shutil.copy(_photo("plastic7"), root / "plastic" / "plastic7.png")
    shutil.copy(_photo("plastic8"), root / "plastic" / "snapshot")
    # The same file twice under one label.
    shutil.copy(_photo("trash1"), root / "trash" / "trash1_copy.jpg")
    # Files that are not photos, or are broken photos.
    (root / "trash" / "garbage.jpg").write_bytes(b"this is not a picture at all\n" * 20)
    (root / "trash" / "empty.jpg").write_bytes(b"")
    (root / "trash" / "truncated.jpg").write_bytes(_photo("trash4").read_bytes()[:4000])
    (root / "trash" / "notes.txt").write_text("taken on a white board\n")
    (root / "trash" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "README.md").write_text("# mixed\n")
    return root


def _by_name(samples):
    return {Path(s.path).name: s for s in samples}


def test_scan_folder_finds_photos_by_content(tree: Path):
    samples = scan_folder(tree)
    names = _by_name(samples)
    assert "plastic7.png" in names and "snapshot" in names
    assert names["snapshot"].label == "plastic"
    # Broken files with a photo's extension are kept so that the audit reports them.
    assert {"garbage.jpg", "empty.jpg", "truncated.jpg"} <= set(names)
    assert not {"notes.txt", ".DS_Store", "README.md"} & set(names)
    assert len(samples) == sum(map(len, PHOTOS.values())) + 2 + 1 + 3
    assert all(Path(s.path).is_absolute() and s.source == "mixed" for s in samples)
    assert len({s.group for s in samples}) == len(samples)


def test_scan_folder_keeps_only_asked_classes(tree: Path):
    samples = scan_folder(tree, source="mine", classes=["Glass", "metal"])
    assert {s.label for s in samples} == {"glass", "metal"}
    assert {s.source for s in samples} == {"mine"}


def test_kaggle_layout_is_found_and_lower_cased(tmp_path: Path):
    root = tmp_path / "versions" / "2"
    classes = root / "Garbage classification" / "Garbage classification"
    for label in ("Cardboard", "Glass", "trash"):
        (classes / label).mkdir(parents=True)
        shutil.copy(_photo(f"{label.lower()}1"), classes / label / f"{label.lower()}1.jpg")
    (root / "one-indexed-files.txt").write_text("cardboard1.jpg 3\n")

    assert find_class_root(root) == classes
    samples = scan_folder(root, source="kaggle")
    assert [(s.label, s.source) for s in samples] == [
        ("cardboard", "kaggle"),
        ("glass", "kaggle"),
        ("trash", "kaggle"),
    ]


def test_folder_without_classes_is_refused(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataSourceError, match="one subfolder of photos per class"):
        scan_folder(tmp_path)


def test_sources_side_by_side_and_manifest_groups(tmp_path: Path):
    """Like realworld/: taco/ with a manifest grouping crops of one photo, floor-photos/ without."""
    taco = tmp_path / "realworld" / "taco"
    crops = {
        "cardboard/c_a1.jpg": ("cardboard1", "batch_1/000001.jpg"),
        "trash/t_a2.jpg": ("trash1", "batch_1/000001.jpg"),
        "trash/t_b1.jpg": ("trash2", "batch_2/000007.jpg"),
        "trash/t_c1.jpg": ("trash3", ""),
    }
    lines = ["file,class,taco_image"]
    for file, (name, image) in crops.items():
        (taco / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_photo(name), taco / file)
        lines.append(f"{file},{file.split('/')[0]},{image}")
    (taco / "manifest.csv").write_text("\n".join(lines) + "\n")
    floor = tmp_path / "realworld" / "floor-photos" / "glass"
    floor.mkdir(parents=True)
    shutil.copy(_photo("glass1"), floor / "IMG_1.jpg")
    shutil.copy(_photo("glass2"), floor / "IMG_2.jpg")

    samples = _by_name(scan_folder(tmp_path / "realworld"))
    assert Counter(s.source for s in samples.values()) == {"taco": 4, "floor-photos": 2}
    assert samples["c_a1.jpg"].group == samples["t_a2.jpg"].group == "taco/taco:batch_1/000001.jpg"
    others = [samples[n].group for n in ("t_b1.jpg", "t_c1.jpg", "IMG_1.jpg", "IMG_2.jpg")]
    assert len(set(others)) == 4 and samples["c_a1.jpg"].group not in others


TRASHNETPP = TRASHNET.parent / "realworld" / "trashnetpp"


@pytest.mark.skipif(not TRASHNETPP.is_dir(), reason="needs the TrashNet++ crops")
def test_a_third_source_with_source_photo_groups_stays_whole_in_every_split(tmp_path: Path):
    """Like realworld/ today: taco/, floor-photos/ and trashnetpp/, whose manifest groups crops
    of one phone photo by ``source_photo`` and which has only glass, metal and plastic."""
    import csv

    rows = list(csv.DictReader((TRASHNETPP / "manifest.csv").open(newline="")))
    by_photo: dict[str, list[dict]] = {}
    for row in rows:
        by_photo.setdefault(row["source_photo"], []).append(row)
    several = [crops for crops in by_photo.values() if len(crops) > 1][:8]
    single = [crops for crops in by_photo.values() if len(crops) == 1][:12]
    picked = [row for crops in several + single for row in crops]
    root = tmp_path / "realworld"
    tpp = root / "trashnetpp"
    for row in picked:
        (tpp / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TRASHNETPP / row["file"], tpp / row["file"])
    with (tpp / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "class", "source_photo"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(picked)
    for source, names in {"taco": PHOTOS["trash"], "floor-photos": PHOTOS["cardboard"]}.items():
        for name in names:
            label = name.rstrip("0123456789")
            (root / source / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(_photo(name), root / source / label / f"{name}.jpg")

    samples = scan_folder(root)
    assert Counter(s.source for s in samples) == {
        "trashnetpp": len(picked),
        "taco": 3,
        "floor-photos": 3,
    }
    group_of = {Path(s.path).name: s.group for s in samples}
    for crops in several:
        names = [Path(row["file"]).name for row in crops]
        assert {group_of[n] for n in names} == {f"trashnetpp/photo:{crops[0]['source_photo']}"}
    assert len({s.group for s in samples if s.source == "trashnetpp"}) == len(several + single)

    found = audit(samples)
    assert set(found.class_counts["trashnetpp"]) <= {"glass", "metal", "plastic"}
    assert "trashnetpp" in found.format()
    cleaned = clean(samples, found)
    for seed in range(3):
        parts = split(cleaned, seed=seed)
        assert sorted(s.path for p in parts.values() for s in p) == sorted(s.path for s in cleaned)
        side = {}
        for name, part in parts.items():
            for s in part:
                assert side.setdefault(s.group, name) == name, f"{s.group} split across sides"
        assert any(s.source == "trashnetpp" for s in parts["train"])
    weights = balance_weights(cleaned)
    assert all(w > 0 for w in weights) and sum(weights) == pytest.approx(len(cleaned))


@pytest.mark.skipif(not TRASHNETPP.is_dir(), reason="needs the TrashNet++ crops")
def test_the_real_realworld_folder_reads_as_three_sources():
    import csv

    samples = scan_folder(TRASHNETPP.parent)
    assert {s.source for s in samples} == {"taco", "floor-photos", "trashnetpp"}
    tpp = [s for s in samples if s.source == "trashnetpp"]
    photos = {row["source_photo"] for row in csv.DictReader((TRASHNETPP / "manifest.csv").open())}
    assert len(tpp) == 1000 and {s.group for s in tpp} == {f"trashnetpp/photo:{p}" for p in photos}
    assert any(s.group.startswith("taco/taco:") for s in samples)  # as in the committed split


def test_audit_finds_the_defects(tree: Path):
    samples = scan_folder(tree)
    found = audit(samples)
    reasons = {Path(p).name: reason for p, reason in found.unreadable}
    assert set(reasons) == {"garbage.jpg", "empty.jpg", "truncated.jpg"}
    assert "not an image" in reasons["garbage.jpg"] and "empty" in reasons["empty.jpg"]
    assert "cannot be decoded" in reasons["truncated.jpg"]

    names = lambda groups: [tuple(Path(p).name for p in g) for g in groups]  # noqa: E731
    assert names(found.cross_label_duplicates) == [("glass115.jpg", "metal91.jpg")]
    assert names(found.exact_duplicates) == [("trash1.jpg", "trash1_copy.jpg")]
    assert sorted(names(found.near_duplicate_groups)) == [
        ("glass115.jpg", "metal91.jpg"),
        ("paper2.jpg", "paper40.jpg"),
        ("trash1.jpg", "trash1_copy.jpg"),
    ]
    assert found.mixed_label_groups == []
    assert found.class_counts == {
        "mixed": {"cardboard": 3, "glass": 4, "metal": 4, "paper": 4, "plastic": 5, "trash": 7}
    }
    assert found.imbalance_ratio == pytest.approx(7 / 3)

    as_dict = json.loads(json.dumps(found.to_dict()))
    assert as_dict["near_dup_threshold"] == found.near_dup_threshold
    report = found.format()
    assert "glass:glass115.jpg = metal:metal91.jpg" in report
    assert "garbage.jpg: not an image" in report


def test_near_duplicate_threshold_is_respected(tree: Path):
    # paper2 and paper40 differ in 2 bits of their perceptual hashes.
    strict = audit(scan_folder(tree, classes=["paper"]), near_dup_threshold=1)
    assert strict.near_duplicate_groups == []


BAD_FILES = Path(__file__).parent / "bad_files"


@pytest.mark.skipif(not BAD_FILES.is_dir(), reason="needs the corpus of awkward image files")
def test_audit_agrees_with_the_awkward_files_corpus(tmp_path: Path):
    """Every file the corpus marks as an error is unreadable; every other one is a photo."""
    expected = json.loads((BAD_FILES / "EXPECTED.json").read_text())
    shutil.copytree(BAD_FILES, tmp_path / "corpus" / "glass")
    samples = scan_folder(tmp_path / "corpus")
    assert sorted(Path(s.path).name for s in samples) == sorted(expected)
    unreadable = {Path(p).name for p, _ in audit(samples).unreadable}
    assert unreadable == {name for name, outcome in expected.items() if outcome == "error"}


def test_clean_drops_defects_and_merges_groups(tree: Path):
    samples = scan_folder(tree)
    cleaned = _by_name(clean(samples, audit(samples)))
    gone = {"garbage.jpg", "empty.jpg", "truncated.jpg", "glass115.jpg", "metal91.jpg"}
    assert not gone & set(cleaned)
    assert "trash1.jpg" in cleaned and "trash1_copy.jpg" not in cleaned
    assert len(cleaned) == len(samples) - len(gone) - 1
    assert cleaned["paper2.jpg"].group == cleaned["paper40.jpg"].group
    assert len({s.group for s in cleaned.values()}) == len(cleaned) - 1


def test_clean_merges_manifest_and_near_duplicate_groups(tmp_path: Path):
    """A near-duplicate of one TACO crop pulls all crops of that photo into its group."""
    taco = tmp_path / "taco"
    (taco / "paper").mkdir(parents=True)
    for name in ("paper2", "paper40", "paper1"):
        shutil.copy(_photo(name), taco / "paper" / f"{name}.jpg")
    (taco / "manifest.csv").write_text(
        "file,taco_image\npaper/paper2.jpg,batch_1/1.jpg\npaper/paper1.jpg,batch_1/1.jpg\n"
    )
    samples = scan_folder(taco)
    groups = {Path(s.path).name: s.group for s in clean(samples, audit(samples))}
    assert groups["paper1.jpg"] == groups["paper2.jpg"] == groups["paper40.jpg"]


def _synthetic(sources: dict[str, int]) -> list[Sample]:
    """Samples (paths need not exist for splitting) with groups of 1 to 3 photos."""
    samples = []
    for source, per_label in sources.items():
        for label in ("cardboard", "glass", "trash"):
            for i in range(per_label):
                group = f"{source}/{label}/{i // (1 + i % 3)}"
                samples.append(Sample(f"/data/{source}/{label}/{i}.jpg", label, source, group))
    return samples


def test_split_is_deterministic_disjoint_grouped_and_stratified():
    samples = _synthetic({"big": 200, "small": 10})
    parts = split(samples, seed=0)
    assert parts == split(list(reversed(samples)), seed=0)
    assert parts != split(samples, seed=1)

    paths = [s.path for part in parts.values() for s in part]
    assert sorted(paths) == sorted(s.path for s in samples)
    groups = {name: {s.group for s in part} for name, part in parts.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]

    for source, per_label in (("big", 200), ("small", 10)):
        for name, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            counts = Counter(s.label for s in parts[name] if s.source == source)
            # Within a group or two of the target for every class of every source.
            assert all(abs(counts[label] - fraction * per_label) <= 3 for label in counts)
        test_share = sum(s.source == source for s in parts["test"]) / (3 * per_label)
        assert test_share == pytest.approx(0.15, abs=0.04)


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        split(_synthetic({"a": 5}), fractions=(0.8, 0.15, 0.15))


def test_save_and_load_split_round_trip(tree: Path, tmp_path: Path):
    samples = scan_folder(tree)
    parts = split(clean(samples, audit(samples)), seed=3)
    out = tmp_path / "run" / "split"
    save_split(parts, out)
    save_split(parts, out)  # replacing an existing split works too
    assert load_split(out) == parts
    assert sorted(p.name for p in out.iterdir()) == ["test.txt", "train.txt", "val.txt"]
    first = (out / "train.txt").read_text().splitlines()[0].split("\t")
    assert first == [
        parts["train"][0].label,
        "mixed",
        parts["train"][0].group,
        parts["train"][0].path,
    ]


def test_load_split_explains_what_is_wrong(tmp_path: Path):
    with pytest.raises(DataSourceError, match="No saved split"):
        load_split(tmp_path)
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.txt").write_text("glass /a.jpg\n")
    with pytest.raises(DataSourceError, match="line 1"):
        load_split(tmp_path)


def test_balance_weights_equal_classes_sqrt_sources():
    samples = _synthetic({"big": 100, "small": 4})[:-2]  # small/trash has 2 photos
    weights = balance_weights(samples)
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    share = Counter()
    for s, w in zip(samples, weights, strict=True):
        share[s.label] += w
        share[s.source, s.label] += w
    assert share["glass"] == pytest.approx(share["trash"])
    assert share["small", "glass"] / share["big", "glass"] == pytest.approx(math.sqrt(4 / 100))
    assert share["small", "trash"] / share["big", "trash"] == pytest.approx(math.sqrt(2 / 100))


def test_kaggle_download_offline_names_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))  # no cached copy to fall back on
    with pytest.raises(DataSourceError, match="Kaggle could not be reached") as error:
        kaggle_download("garbage-sorter-tests/no-such-dataset")
    assert "--data DIR" in str(error.value)


def test_kaggle_download_without_kagglehub_names_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # what an uninstalled package does
    with pytest.raises(DataSourceError, match="--data DIR"):
        kaggle_download()


def test_image_hash_survives_recompression(tmp_path: Path):
    """A photo saved again at lower quality stays a near-duplicate of itself."""
    (tmp_path / "src" / "glass").mkdir(parents=True)
    (tmp_path / "src" / "metal").mkdir(parents=True)
    shutil.copy(_photo("glass1"), tmp_path / "src" / "glass" / "glass1.jpg")
    buffer = io.BytesIO()
    Image.open(_photo("glass1")).save(buffer, "JPEG", quality=40)
    (tmp_path / "src" / "glass" / "again.jpg").write_bytes(buffer.getvalue())
    shutil.copy(_photo("metal1"), tmp_path / "src" / "metal" / "metal1.jpg")
    found = audit(scan_folder(tmp_path / "src"))
    assert [len(g) for g in found.near_duplicate_groups] == [2]
    assert found.exact_duplicates == []


@pytest.mark.slow
def test_full_trashnet_audit_finds_the_known_cross_label_pairs():
    samples = scan_folder(TRASHNET)
    assert len(samples) == 2136
    found = audit(samples)
    pairs = {
        tuple(str(Path(p).relative_to(TRASHNET)) for p in g) for g in found.cross_label_duplicates
    }
    assert pairs == {
        ("glass/glass115.jpg", "metal/metal91.jpg"),
        ("glass/glass176.jpg", "plastic/plastic152.jpg"),
        ("glass/glass389.jpg", "plastic/plastic332.jpg"),
    }
    assert found.unreadable == []
    cleaned = clean(samples, found)
    assert len(cleaned) == 2136 - 6
    parts = split(cleaned, seed=0)
    test_groups = {s.group for s in parts["test"]}
    assert not test_groups & {s.group for s in parts["train"]}
    for label, n in Counter(s.label for s in cleaned).items():
        assert sum(s.label == label for s in parts["test"]) == pytest.approx(0.15 * n, abs=3)


def test_the_committed_split_loads_from_any_working_directory(monkeypatch, tmp_path):
    """docs/model/split stores paths relative to itself; --splits must find the photos."""
    from conftest import SHARED_DATA, TESTS

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not on this machine")
    monkeypatch.chdir(tmp_path)
    split = load_split(TESTS.parent / "docs" / "model" / "split")
    assert {name: len(part) for name, part in split.items()} == {
        "train": 2000,
        "val": 429,
        "test": 428,
    }
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in split["test"])
