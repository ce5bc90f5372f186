"""``garbage-sorter adapt``: the real command on real photos, with a tiny real model."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BAD_FILES, CLASSES, SHARED_DATA, fixture_photos

from garbage_sorter import cli
from garbage_sorter.adapt import CANDIDATES, DEFAULT, MIN_PHOTOS, adapted_layers
from garbage_sorter.model import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_photos(cls: str, n: int) -> list[Path]:
    """``n`` real photos of a class: TrashNet's when the shared data is here, else the fixtures."""
    found = sorted((SHARED_DATA / "trashnet" / cls).glob("*.jpg"))[:n]
    if len(found) < n:
        found = [fixture_photos()[i % len(fixture_photos())] for i in range(n)]
    return found


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> Path:
    """A folder of 20 real photos: the unlabelled photos of one setting."""
    root = tmp_path_factory.mktemp("setting")
    for i, photo in enumerate(p for cls in CLASSES for p in real_photos(cls, 4)[:4]):
        if i < 20:
            shutil.copy(photo, root / f"{i:02d}.jpg")
    return root


def corrections(tmp_path: Path) -> Path:
    """A folder per class of 12 real labelled photos (4 each of glass, metal, plastic) that are
    not in ``setting``."""
    labelled = tmp_path / "corrections"
    for cls in ("glass", "metal", "plastic"):
        (labelled / cls).mkdir(parents=True)
        for photo in real_photos(cls, 8)[4:8]:
            shutil.copy(photo, labelled / cls / photo.name)
    return labelled


def run(*args: str) -> int:
    return cli.main(["adapt", *map(str, args)])


def test_command_writes_a_model_classify_loads(tiny_model, setting, tmp_path):
    """The installed command end to end: exit 0, progress on stderr, base untouched, loadable."""
    before = sha(tiny_model)
    out = tmp_path / "adapted.pt"
    done = subprocess.run(
        [sys.executable, "-m", "garbage_sorter", "adapt", "--out", out, "--model", tiny_model]
        + [setting],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "measuring the setting 20/20" in done.stderr
    assert f"wrote {out}" in done.stdout
    assert sha(tiny_model) == before

    record = load_checkpoint(out).config["adaptation"]
    assert record["unlabelled_photos"] == 20 and record["labelled_photos"] == 0
    assert record["base_model"] == str(tiny_model)
    assert record["base_sha256"] == before[:16]
    assert record["method"] == "adabn-blend"
    assert (record["alpha"], record["blocks"]) == DEFAULT
    assert record["date"].startswith("20")

    photo = sorted(setting.glob("*.jpg"))[0]
    assert cli.main(["classify", "--json", "--model", str(out), str(photo)]) == 0


def test_statistics_are_the_settings(tiny_model, setting, tmp_path):
    """AdaBN: the stem's BatchNorm now holds the mean of its input over the setting's photos."""
    from garbage_sorter.images import load_image
    from garbage_sorter.presets import EvalTransform

    out = tmp_path / "adapted.pt"
    assert run("--out", out, "--model", tiny_model, setting) == 0
    base, adapted = load_checkpoint(tiny_model), load_checkpoint(out)
    transform = EvalTransform(base.preprocessing)
    x = torch.stack([transform(load_image(p)) for p in sorted(setting.glob("*.jpg"))])
    model = base.build()
    with torch.no_grad():
        stem = model._conv_stem(x)
    alpha, blocks = DEFAULT
    shipped = base.state_dict["_bn0.running_mean"].float()
    wanted = alpha * stem.mean((0, 2, 3)) + (1 - alpha) * shipped
    got = adapted.state_dict["_bn0.running_mean"].float()
    assert torch.allclose(got, wanted, atol=2e-3 * wanted.abs().max())
    assert not torch.allclose(shipped, wanted, atol=1e-2)
    # The adapted layers' statistics moved; the convolutions, the head and later layers did not.
    changed = {k for k, v in adapted.state_dict.items() if not torch.equal(v, base.state_dict[k])}
    layers = adapted_layers(model, base.arch, blocks)
    assert len(layers) == sum(1 for k in changed if k.endswith("running_var"))
    assert all("running_" in k for k in changed)


def test_labelled_photos_choose_and_are_recorded(tiny_model, setting, tmp_path):
    labelled = corrections(tmp_path)
    out = tmp_path / "adapted.pt"
    assert run("--out", out, "--model", tiny_model, "--labelled", labelled, setting) == 0
    record = load_checkpoint(out).config["adaptation"]
    assert record["labelled_photos"] == 12 and record["unlabelled_photos"] == 20
    assert record["labelled_per_class"] == {"glass": 4, "metal": 4, "plastic": 4}
    assert "fold" in record["chosen_by"]
    tried = [(c["alpha"], c["blocks"], c["head"]) for c in record["candidates"]]
    assert tried == [(a, b, h) for h in ("original", "refitted") for a, b in CANDIDATES]
    assert (record["alpha"], record["blocks"], record["head"]) in tried
    # The shipped model is a candidate: the choice is never worse than it on the k-fold check.
    accuracy = {(c["alpha"], c["blocks"], c["head"]): c["accuracy"] for c in record["candidates"]}
    assert (
        accuracy[(record["alpha"], record["blocks"], record["head"])]
        >= accuracy[(0.0, None, "original")]
    )


def test_labelled_photos_alone_are_enough(tiny_model, tmp_path):
    labelled = tmp_path / "corrections"
    for cls in CLASSES[:4]:
        (labelled / cls).mkdir(parents=True)
        for photo in real_photos(cls, 4):
            shutil.copy(photo, labelled / cls / photo.name)
    out = tmp_path / "adapted.pt"
    assert run("--out", out, "--model", tiny_model, "--labelled", labelled) == 0
    assert load_checkpoint(out).config["adaptation"]["labelled_photos"] == 16


def broken_copies(folder: Path, n: int) -> None:
    for i in range(n):
        shutil.copy(BAD_FILES / "empty.jpg", folder / f"broken{i}.jpg")


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda d, m, s: ["--model", m], 2, "give photos"),
        (lambda d, m, s: ["--model", m, d / "empty"], 1, "no photos found"),
        (lambda d, m, s: ["--model", m, d / "few"], 1, f"at least {MIN_PHOTOS}"),
        (lambda d, m, s: ["--model", m, "--labelled", d / "odd", s], 2, "unknown class folder"),
        (lambda d, m, s: ["--model", m, "--labelled", d / "loose", s], 2, "not in a class folder"),
        (lambda d, m, s: ["--model", m, "--labelled", d / "missing"], 2, "not a folder"),
        (lambda d, m, s: ["--model", d / "model.onnx", s], 2, "ONNX"),
        (lambda d, m, s: ["--model", d / "garbage.pt", s], 1, "not a readable model"),
        (lambda d, m, s: ["--model", d / "missing.pt", s], 1, "no such model"),
    ],
    ids=["nothing", "empty", "too-few", "odd-class", "loose", "no-dir", "onnx", "garbage", "none"],
)
def test_unusable_input_is_refused(tiny_model, setting, tmp_path, capsys, make, status, message):
    (tmp_path / "empty").mkdir()
    few = tmp_path / "few"
    few.mkdir()
    for photo in sorted(setting.glob("*.jpg"))[: MIN_PHOTOS - 4]:
        shutil.copy(photo, few)
    broken_copies(few, 6)
    (tmp_path / "odd" / "bottles").mkdir(parents=True)
    (tmp_path / "loose").mkdir()
    shutil.copy(sorted(setting.glob("*.jpg"))[0], tmp_path / "loose")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a model" * 20)
    before = sha(tiny_model)
    out = tmp_path / "out.pt"

    assert run("--out", out, *make(tmp_path, tiny_model, setting)) == status
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("garbage-sorter: ") and message in error, error
    assert not out.exists() and sha(tiny_model) == before


def test_never_overwrites_the_base(tiny_model, setting, tmp_path, capsys):
    base = tmp_path / "base.pt"
    shutil.copy(tiny_model, base)
    before = sha(base)
    assert run("--out", base, "--model", base, setting) == 2
    assert "base model" in capsys.readouterr().err
    assert sha(base) == before


def test_adapt_is_listed_in_help(capsys):
    assert cli.main(["--help"]) == 0
    assert "adapt" in capsys.readouterr().out
    assert "adapt" in cli.SUBCOMMANDS


def test_without_labels_the_photos_familiarity_decides(bundled_model, setting, tmp_path, capsys):
    """The bundled model keeps its statistics for studio photos like its training ones. A dark
    bin under a blue LED looks unfamiliar; its adaptation is kept only if it makes the answers
    more informative, and otherwise the record says so and the weights stay the shipped ones."""
    from PIL import Image
    from test_familiarity import in_a_dark_blue_bin

    from garbage_sorter.adapt import FAMILIAR, UNFAMILIAR

    dark = tmp_path / "dark bin"
    dark.mkdir()
    for photo in sorted(setting.glob("*.jpg")):
        in_a_dark_blue_bin(Image.open(photo).convert("RGB")).save(dark / photo.name)
    studio_out, dark_out = tmp_path / "studio.pt", tmp_path / "dark.pt"
    assert run("--out", studio_out, "--model", bundled_model, setting) == 0
    assert "the photos look familiar to the model" in capsys.readouterr().err
    assert run("--out", dark_out, "--model", bundled_model, dark) == 0
    note = capsys.readouterr().err

    studio = load_checkpoint(studio_out).config["adaptation"]
    assert (studio["alpha"], studio["blocks"]) == FAMILIAR and studio["unfamiliar_share"] <= 0.1
    assert "information" not in studio  # familiar photos: nothing adapted, nothing to compare
    base = load_checkpoint(bundled_model).state_dict
    same = load_checkpoint(studio_out).state_dict
    assert all(torch.equal(same[k].float(), base[k].float()) for k in base)

    adapted = load_checkpoint(dark_out).config["adaptation"]
    assert adapted["unfamiliar_share"] == 1.0 and "look unfamiliar" in adapted["chosen_by"]
    info = adapted["information"]
    if info["adapted"] > info["shipped"]:
        assert (adapted["alpha"], adapted["blocks"]) == UNFAMILIAR
    else:  # 20 photos of this bin: the shipped model's answers were the more informative
        assert (adapted["alpha"], adapted["blocks"]) == FAMILIAR and adapted["kept_shipped"]
        assert "less informative" in adapted["chosen_by"] and "less clear" in note
        kept = load_checkpoint(dark_out)
        assert all(torch.equal(kept.state_dict[k].float(), base[k].float()) for k in base)
        shipped = load_checkpoint(bundled_model).familiarity  # the base's reference, kept
        assert kept.familiarity["fitted_on"] == shipped["fitted_on"]
        assert torch.equal(
            torch.as_tensor(kept.familiarity["mean"]), torch.as_tensor(shipped["mean"])
        )


def test_unfamiliar_photos_are_adapted_and_become_familiar(bundled_model, tmp_path):
    """60 photos of a synthetic smart bin: adapting every layer makes the bundled model's
    answers more informative, so it is kept, and the adapted model knows its setting."""
    from garbage_sorter.training.backgrounds import smart_bin_set
    from PIL import Image

    from garbage_sorter.adapt import UNFAMILIAR
    from garbage_sorter.classifier import Classifier
    from garbage_sorter.images import load_image

    if not (SHARED_DATA / "trashnet").is_dir():
        pytest.skip("needs the shared TrashNet photos")
    studio = [p for cls in CLASSES for p in real_photos(cls, 10)]
    frames = smart_bin_set([np.asarray(load_image(p)) for p in studio], seed=0)
    binned = tmp_path / "smart bin"
    binned.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(binned / f"{i:02d}.jpg", quality=92)
    out = tmp_path / "bin.pt"
    assert run("--out", out, "--model", bundled_model, binned) == 0

    adapted = load_checkpoint(out).config["adaptation"]
    assert (adapted["alpha"], adapted["blocks"]) == UNFAMILIAR and not adapted.get("kept_shipped")
    assert adapted["information"]["adapted"] > adapted["information"]["shipped"]
    photos = sorted(binned.glob("*.jpg"))
    before = [p.shift for p in Classifier.load(bundled_model).predict_batch(photos)]
    after = [p.shift for p in Classifier.load(out).predict_batch(photos)]
    # The adapted model knows the setting it was adapted to: its photos are familiar to it.
    assert min(before) > 1 and sum(s > 1 for s in after) <= 6, after
    assert load_checkpoint(out).familiarity["fitted_on"] == {"setting_photos": 60}
    # ... and photos from elsewhere, the studio ones, look unfamiliar to it.
    studio_shifts = [p.shift for p in Classifier.load(out).predict_batch(studio[::6])]
    assert min(studio_shifts) > 1, studio_shifts


def test_information_rewards_answers_both_confident_and_varied():
    from garbage_sorter.adapt import information

    eye = np.eye(6, dtype=np.float32) * 20
    varied = np.concatenate([eye, eye])  # each photo sure, of a different class each time
    collapsed = np.tile(eye[:1], (12, 1))  # sure of every photo, always the same class
    unsure = np.zeros((12, 6), np.float32)  # every class equally likely for every photo
    assert information(varied, 1.0) == pytest.approx(np.log(6), abs=1e-3)
    assert information(collapsed, 1.0) == pytest.approx(0.0, abs=1e-3)
    assert information(unsure, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert 0 < information(varied, 8.0) < information(varied, 1.0)  # a softer calibration


def labelled_tensors(checkpoint, per_class: int, classes=CLASSES[:3]):
    """Preprocessed real photos and their class indices, ``per_class`` of each of ``classes``."""
    from garbage_sorter.images import load_image
    from garbage_sorter.presets import EvalTransform

    transform = EvalTransform(checkpoint.preprocessing)
    pairs = [(p, checkpoint.classes.index(c)) for c in classes for p in real_photos(c, per_class)]
    return [transform(load_image(p)) for p, _ in pairs], [label for _, label in pairs]


def test_tuning_moves_only_the_last_scales_and_shifts_and_the_head(tiny_model):
    """tune_norms fits the labelled photos through the last blocks' BatchNorm scales and shifts
    and the head; the convolutions, the blocks the shift score reads (up to 10) and every
    running statistic stay."""
    from garbage_sorter.adapt import tune_norms

    base = load_checkpoint(tiny_model)
    x, y = labelled_tensors(base, 4)
    model = base.build().float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        loss_before = torch.nn.functional.cross_entropy(model(torch.stack(x)), torch.tensor(y))
    tune_norms(model, base.arch, x, y)
    with torch.no_grad():
        loss_after = torch.nn.functional.cross_entropy(model(torch.stack(x)), torch.tensor(y))
    assert loss_after < loss_before - 0.1

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    later = tuple(f"_blocks.{i}." for i in range(11, len(model._blocks))) + ("_bn1.",)
    assert {"_fc.weight", "_fc.bias"} <= changed
    assert any(k.startswith(later) and k.endswith("_bn0.weight") for k in changed)
    for k in changed - {"_fc.weight", "_fc.bias"}:
        assert k.startswith(later) and k.endswith((".weight", ".bias")), k
        assert "bn" in k.rsplit(".", 2)[-2], k  # a BatchNorm's, not a convolution's
    assert all(p.requires_grad for p in model.parameters())  # as it was handed in


def test_enough_labelled_photos_also_try_tuning(tiny_model, setting, tmp_path, monkeypatch):
    """From MIN_TO_TUNE labelled photos on, the tuned network is one more candidate, judged on
    photos it was not tuned on like the others; when it wins, the written model is tuned."""
    import garbage_sorter.adapt as adapt

    monkeypatch.setattr(adapt, "MIN_TO_TUNE", 12)
    labelled = corrections(tmp_path)
    out = tmp_path / "adapted.pt"
    assert run("--out", out, "--model", tiny_model, "--labelled", labelled, setting) == 0
    record = load_checkpoint(out).config["adaptation"]
    tried = [(c["alpha"], c["blocks"], c["head"]) for c in record["candidates"]]
    assert tried[-1] == (0.0, None, "tuned") and len(tried) == 2 * len(CANDIDATES) + 1
    # ... against the best other candidate on the same two folds; the winner is what was written.
    duel = record["two_fold_accuracy"]
    assert (record["head"] == "tuned") == (duel["tuned"] > duel["best other"])
    base, adapted = load_checkpoint(tiny_model).state_dict, load_checkpoint(out).state_dict
    bn_weights_moved = any(
        k.endswith("_bn2.weight") and not torch.equal(v, base[k]) for k, v in adapted.items()
    )
    assert bn_weights_moved == (record["head"] == "tuned")


def test_tuning_reports_progress_and_can_be_stopped(tiny_model, setting, tmp_path, monkeypatch):
    """Tuning reports each epoch, and a progress callback that raises (the app's Cancel) stops it
    there: nothing is written."""
    import garbage_sorter.adapt as adapt

    class Stop(Exception):
        pass

    monkeypatch.setattr(adapt, "MIN_TO_TUNE", 12)
    labelled = corrections(tmp_path)
    seen = []

    def progress(message: str) -> None:
        seen.append(message)
        if "epoch 2/" in message:
            raise Stop

    out = tmp_path / "adapted.pt"
    with pytest.raises(Stop):
        adapt.adapt(out, [setting], base=tiny_model, labelled=labelled, progress=progress)
    assert seen[-2:] == [
        "check 1/2: tuning on 6 labelled photos, epoch 1/10",
        "check 1/2: tuning on 6 labelled photos, epoch 2/10",
    ]
    assert not out.exists()


def test_tuning_a_resnet18_moves_only_layer3_and_layer4_norms_and_the_head(tiny_model):
    """The same split for the designed architecture: its shift score reads up to layer2."""
    from garbage_sorter.adapt import tune_norms
    from garbage_sorter.model import build_model

    x, y = labelled_tensors(load_checkpoint(tiny_model), 2)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tune_norms(model, "resnet18", x, y)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"fc.weight", "fc.bias"} <= changed
    assert any(k.startswith("layer3.") for k in changed)
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for k in changed - {"fc.weight", "fc.bias"}:
        module, name = k.rsplit(".", 1)
        assert k.startswith(("layer3.", "layer4.")) and module in norms, k
        assert name in ("weight", "bias"), k


def test_the_choice_is_judged_on_a_balanced_share_and_fitted_on_all(
    tiny_model, setting, tmp_path, monkeypatch
):
    """Past CHOOSE_ON labelled photos, the candidates are judged on that many, as many of each
    class as there are; the one chosen is fitted on all of them."""
    import garbage_sorter.adapt as adapt

    monkeypatch.setattr(adapt, "CHOOSE_ON", 9)
    labelled = corrections(tmp_path)
    out = tmp_path / "adapted.pt"
    assert run("--out", out, "--model", tiny_model, "--labelled", labelled, setting) == 0
    record = load_checkpoint(out).config["adaptation"]
    assert record["chosen_by"].startswith("9 of 12 labelled photos")
    assert record["labelled_photos"] == 12 and record["older_labelled_left_out"] == 0

    y = np.array([0] * 10 + [1] * 2 + [2] * 20)
    on = adapt._balanced(y, 9)
    assert np.bincount(y[on]).tolist() == [4, 2, 3] and len(set(on)) == 9
    assert adapt._balanced(y, 40).tolist() == list(range(32))  # all, in order


def test_a_tuned_winner_is_tuned_on_every_photo_with_its_own_label(
    tiny_model, setting, tmp_path, monkeypatch
):
    """Past CHOOSE_ON labelled photos the tuning checks see only the judged share; a tuned winner
    is then tuned on all of them, each photo's views with that photo's label."""
    import garbage_sorter.adapt as adapt

    monkeypatch.setattr(adapt, "CHOOSE_ON", 9)
    monkeypatch.setattr(adapt, "MIN_TO_TUNE", 6)
    # The duel is not what is tested here: the checks' answers are made perfect, so tuning wins.
    monkeypatch.setattr(
        adapt,
        "tuned_out_of_fold_logits",
        lambda model, arch, cached, y, n, progress: np.eye(n, dtype=np.float32)[y] * 10,
    )
    tuned_on = []
    real_tune = adapt._tune
    monkeypatch.setattr(
        adapt,
        "_tune",
        lambda m, a, cached, y, **kw: (
            tuned_on.append((cached, y)) or real_tune(m, a, cached, y, **kw)
        ),
    )
    base = load_checkpoint(tiny_model)
    classes = base.classes
    photos = adapt.read_photos(
        base, list(setting.iterdir()), adapt.labelled_folder(corrections(tmp_path), classes)
    )
    adapted = adapt.adapt_model(base, photos)
    assert adapted.choice["head"] == "tuned" and adapted.choice["chosen_by"].startswith("9 of 12")

    ((cached, y),) = tuned_on
    model = base.build().float()
    expected = adapt.first_views(model, base.arch, photos.labelled)
    assert len(cached) == len(expected) == 24
    # Each tuned row is one of the expected views, with the label of the photo it came from.
    for row, label in zip(cached, np.repeat(y, 2), strict=True):
        distance = (expected - row).flatten(1).abs().amax(1)
        nearest = int(distance.argmin())
        assert distance[nearest] < 1e-4 and photos.labels[nearest // 2] == label


def test_newest_keeps_the_last_photos_of_each_class_by_name(tiny_model, setting, tmp_path):
    """The app's corrections are named by time: ``newest`` learns from the last of each class
    and counts the older ones it left out."""
    from garbage_sorter.adapt import adapt

    labelled = corrections(tmp_path)
    record = adapt(tmp_path / "adapted.pt", [setting], base=tiny_model, labelled=labelled, newest=3)
    assert record["labelled_per_class"] == {"glass": 3, "metal": 3, "plastic": 3}
    assert record["older_labelled_left_out"] == 3


def test_tuning_takes_fewer_epochs_past_its_step_budget(tiny_model, monkeypatch):
    """More photos than TUNE_STEPS batches allow for TUNE_EPOCHS: fewer epochs, never none."""
    import garbage_sorter.adapt as adapt

    base = load_checkpoint(tiny_model)
    x, y = labelled_tensors(base, 8)  # 24 photos, 48 views: 2 batches of 32
    seen = []
    monkeypatch.setattr(adapt, "TUNE_STEPS", 7)
    adapt.tune_norms(base.build().float(), base.arch, x, y, progress=seen.append)
    assert seen[-1] == "tuning on 24 labelled photos, epoch 3/3"
    monkeypatch.setattr(adapt, "TUNE_STEPS", 1)
    adapt.tune_norms(base.build().float(), base.arch, x, y, progress=seen.append)
    assert seen[-1] == "tuning on 24 labelled photos, epoch 1/1"
