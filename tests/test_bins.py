"""Tests for garbage_sorter.bins: the bundled region files, user overrides, the saved choice."""

import colorsys
import json
import tomllib
from importlib.resources import files

import pytest

from garbage_sorter import bins
from garbage_sorter.bins import CLASSES, UNKNOWN_BIN, get_region, load_regions, save_region

REQUIRED = {"default", "us", "uk", "de", "it", "au", "jp"}


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Every test gets an empty config dir, never the developer's own."""
    monkeypatch.setenv("GARBAGE_SORTER_CONFIG_DIR", str(tmp_path))
    return tmp_path


def hue(colour: str) -> float:
    """Hue of ``#rrggbb`` in degrees, 0-360."""
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def saturation(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hsv(r, g, b)[1]


def is_yellow(colour: str) -> bool:
    return 40 <= hue(colour) <= 65 and saturation(colour) > 0.5


def is_blue(colour: str) -> bool:
    return 195 <= hue(colour) <= 240 and saturation(colour) > 0.5


def is_green(colour: str) -> bool:
    return 90 <= hue(colour) <= 150 and saturation(colour) > 0.4


def is_grey(colour: str) -> bool:
    return saturation(colour) < 0.1


def bundled_files():
    entries = files("garbage_sorter.resources").joinpath("bins").iterdir()
    return sorted((e for e in entries if e.name.endswith(".toml")), key=lambda e: e.name)


@pytest.mark.parametrize("entry", bundled_files(), ids=lambda e: e.name)
def test_bundled_file_is_complete(entry):
    data = tomllib.loads(entry.read_text(encoding="utf-8"))
    assert data["id"] == entry.name.removesuffix(".toml")
    for key in ("title", "source", "note"):
        assert data[key].strip(), key
    assert set(data["bins"]) == set(CLASSES)
    for label, fields in data["bins"].items():
        assert set(fields) == {"name", "colour", "note"}, label
        assert fields["name"].strip() and fields["note"].strip(), label
        assert "\n" not in fields["note"], label
        assert bins._COLOUR.fullmatch(fields["colour"]), (label, fields["colour"])


def test_required_regions_are_bundled():
    assert REQUIRED <= set(load_regions())


def test_germany():
    de = get_region("de")
    assert is_blue(de.bin_for("paper").colour) and is_blue(de.bin_for("cardboard").colour)
    assert is_yellow(de.bin_for("plastic").colour) and is_yellow(de.bin_for("metal").colour)
    assert "Gelbe" in de.bin_for("plastic").name
    glass = de.bin_for("glass")
    assert "Altglas" in glass.name
    assert all(word in glass.note for word in ("white", "green", "brown"))
    assert is_grey(de.bin_for("trash").colour)


def test_italy_follows_uni_11686():
    it = get_region("it")
    assert is_blue(it.bin_for("paper").colour) and is_blue(it.bin_for("cardboard").colour)
    assert is_green(it.bin_for("glass").colour)
    assert 160 <= hue(it.bin_for("metal").colour) <= 190  # turquoise
    assert is_yellow(it.bin_for("plastic").colour)
    assert is_grey(it.bin_for("trash").colour)


def test_australia_lids():
    au = get_region("au")
    trash = au.bin_for("trash")
    assert "red lid" in trash.name
    assert hue(trash.colour) < 15 or hue(trash.colour) > 345
    for label in ("cardboard", "paper", "glass", "metal", "plastic"):
        assert is_yellow(au.bin_for(label).colour), label


def test_us_and_uk():
    us, uk = get_region("us"), get_region("uk")
    for label in ("cardboard", "paper", "metal", "plastic"):
        assert is_blue(us.bin_for(label).colour) and is_blue(uk.bin_for(label).colour), label
    assert is_grey(us.bin_for("trash").colour) and is_grey(uk.bin_for("trash").colour)
    assert "city" in us.bin_for("glass").note
    assert "council" in uk.note.lower()


def test_japan_names_its_city():
    jp = get_region("jp")
    assert "Yokohama" in jp.title and "Yokohama" in jp.source
    assert "燃やすごみ" in jp.bin_for("trash").name


def test_unknown_label_gets_check_local_rules():
    region = get_region("de")
    assert region.bin_for("banana") is UNKNOWN_BIN
    assert region.bin_for(" Glass ") == region.bin_for("glass")


def test_default_region_without_a_saved_choice():
    assert get_region().id == "default"


def test_unknown_region_lists_known_ids():
    with pytest.raises(ValueError, match="de.*jp"):
        get_region("atlantis")


def test_user_file_overrides_one_class_and_keeps_the_rest(config_dir):
    (config_dir / "bins").mkdir()
    (config_dir / "bins" / "my-de.toml").write_text(
        'id = "de"\n[bins.glass]\nname = "Glass at the Wertstoffhof"\ncolour = "#00ff00"\n',
        encoding="utf-8",
    )
    bundled = load_regions(user_dir=config_dir / "nowhere")["de"]
    de = get_region("de")
    assert de.bin_for("glass").name == "Glass at the Wertstoffhof"
    assert de.bin_for("glass").colour == "#00ff00"
    assert de.bin_for("glass").note == bundled.bin_for("glass").note
    assert de.title == bundled.title
    for label in CLASSES:
        if label != "glass":
            assert de.bin_for(label) == bundled.bin_for(label)


def test_user_file_adds_a_region(config_dir):
    (config_dir / "bins").mkdir()
    (config_dir / "bins" / "town.toml").write_text(
        'title = "My town"\nsource = "Town hall leaflet"\n'
        '[bins.trash]\nname = "Grey bin"\ncolour = "#808080"\nnote = "Weekly."\n',
        encoding="utf-8",
    )
    town = get_region("town")  # id taken from the file name
    assert town.title == "My town"
    assert town.bin_for("trash").name == "Grey bin"
    assert town.bin_for("glass") is UNKNOWN_BIN


@pytest.mark.parametrize(
    "text",
    [
        "this is = not [ toml",
        'id = "de"\n[bins.glass]\ncolour = "green"\n',
        'id = "de"\n[bins.glass]\nname = ""\n',
        'id = "new"\ntitle = "New"\n[bins.glass]\nname = "Only a name"\n',
        'id = "de"\nbins = "nope"\n',
        "id = 3\n",
    ],
    ids=["syntax", "colour", "empty-name", "incomplete-new-bin", "bins-not-table", "id-not-str"],
)
def test_broken_user_file_is_skipped(config_dir, text):
    (config_dir / "bins").mkdir()
    (config_dir / "bins" / "broken.toml").write_text(text, encoding="utf-8")
    (config_dir / "bins" / "good.toml").write_text(
        'id = "de"\n[bins.trash]\nnote = "Overridden."\n', encoding="utf-8"
    )
    with pytest.warns(UserWarning, match="broken.toml"):
        regions = load_regions()
    assert REQUIRED <= set(regions)
    assert "new" not in regions
    assert regions["de"].bin_for("glass").name.startswith("Altglas")
    assert regions["de"].bin_for("trash").note == "Overridden."


def test_save_region_round_trips(config_dir):
    assert bins.saved_region() is None
    save_region("it")
    assert bins.saved_region() == "it"
    assert get_region().id == "it"
    save_region("jp")
    assert get_region().id == "jp"
    assert [p.name for p in config_dir.iterdir()] == ["settings.json"]  # no temp file left


def test_save_region_keeps_other_settings(config_dir):
    (config_dir / "settings.json").write_text('{"theme": "dark"}', encoding="utf-8")
    save_region("uk")
    assert json.loads((config_dir / "settings.json").read_text()) == {
        "theme": "dark",
        "region": "uk",
    }


def test_save_unknown_region_is_refused(config_dir):
    with pytest.raises(ValueError):
        save_region("atlantis")
    assert not (config_dir / "settings.json").exists()


def test_corrupt_settings_fall_back_to_default(config_dir):
    (config_dir / "settings.json").write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="settings"):
        assert get_region().id == "default"


def test_saved_region_that_disappeared_falls_back_to_default(config_dir):
    (config_dir / "settings.json").write_text('{"region": "gone"}', encoding="utf-8")
    with pytest.warns(UserWarning, match="gone"):
        assert get_region().id == "default"
