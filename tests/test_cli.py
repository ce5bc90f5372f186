"""The ``garbage-sorter`` command as a subprocess, on real photos: the contract scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BAD_FILES, CLASSES


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garbage_sorter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def test_classify_json_one_line_per_image(tiny_model, photos):
    folder = photos[0].parent.parent  # tests/fixtures/photos, walked recursively
    proc = run_cli(
        "classify", "--json", "--no-crop", "--model", str(tiny_model), "--region", "de", str(folder)
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(photos)
    assert {Path(d["path"]).resolve() for d in lines} == {p.resolve() for p in photos}
    for d in lines:
        assert set(d) >= {"path", "label", "confidence", "probabilities", "bin", "crop_box"}
        assert d["label"] in CLASSES and set(d["probabilities"]) == set(CLASSES)
        assert set(d["bin"]) >= {"name", "colour"} and d["bin"]["colour"].startswith("#")
        assert d["crop_box"] is None


def test_classify_bad_file_corpus_answers_every_input(tiny_model):
    expected = json.loads((BAD_FILES / "EXPECTED.json").read_text())
    proc = run_cli("classify", "--json", "--model", str(tiny_model), str(BAD_FILES))
    assert proc.returncode == 1
    assert_no_traceback(proc)
    answers = {Path(d["path"]).name: d for d in map(json.loads, proc.stdout.splitlines())}
    assert set(answers) == set(expected)
    for name, outcome in expected.items():
        if outcome == "error":
            assert "error" in answers[name] and len(answers[name]["error"]) > 5, name
        else:
            assert answers[name].get("label") in CLASSES, (name, answers[name])


def test_classify_into_a_closed_pipe_stops_quietly(photos):
    """`classify --json DIR | head -1`: when the reader has gone, no BrokenPipeError traceback."""
    folder = photos[0].parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "garbage_sorter", "classify", "--json", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader goes away before the first answer is written
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    assert proc.returncode == 141


def test_classify_table_and_exit_codes(tiny_model, photos, tmp_path):
    proc = run_cli("classify", "--model", str(tiny_model), str(photos[0]))
    assert proc.returncode == 0 and photos[0].name in proc.stdout and "1 classified" in proc.stdout
    missing = run_cli("classify", "--model", str(tiny_model), str(tmp_path / "nope.jpg"))
    assert missing.returncode == 1 and "file not found" in missing.stdout
    assert_no_traceback(missing)
    usage = run_cli("classify")
    assert usage.returncode == 2
    bad_model = tmp_path / "model.pt"
    bad_model.write_bytes(b"not a model")
    proc = run_cli("classify", "--model", str(bad_model), str(photos[0]))
    assert proc.returncode == 1 and str(bad_model) in proc.stderr
    assert_no_traceback(proc)


def test_classify_crop_reports_a_box(tiny_model, photos):
    pytest.importorskip("onnxruntime")
    proc = run_cli("classify", "--json", "--crop", "--model", str(tiny_model), str(photos[0]))
    assert proc.returncode == 0, proc.stderr
    box = json.loads(proc.stdout)["crop_box"]
    assert box is None or (len(box) == 4 and box[0] < box[2] and box[1] < box[3])


def test_classify_takes_the_whole_image_by_default(tiny_model, photos):
    pytest.importorskip("onnxruntime")
    args = ["classify", "--json", "--model", str(tiny_model), *map(str, photos)]
    default, crop, whole = run_cli(*args), run_cli(*args, "--crop"), run_cli(*args, "--no-crop")

    def answers(proc):
        assert proc.returncode == 0, proc.stderr
        return [(d["label"], d["crop_box"]) for d in map(json.loads, proc.stdout.splitlines())]

    assert answers(default) == answers(whole)
    assert not any(box for _, box in answers(default))
    assert any(box for _, box in answers(crop))  # --crop isolates: some photo was cropped


def test_classify_with_the_bundled_model_never_imports_torch(photos):
    """ONNX Runtime serves the bundled model; PyTorch (over a second of start-up) stays unloaded,
    also for the heatmap, which comes from the graph's class activation maps."""
    code = (
        "import sys\n"
        "from garbage_sorter.cli import main\n"
        "from garbage_sorter.classifier import Classifier\n"
        "from garbage_sorter.explain import gradcam\n"
        "status = main(['classify', '--json', '--device', 'cpu', *sys.argv[1:]])\n"
        "gradcam(Classifier.load(device='cpu'), sys.argv[1])\n"
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, photos[:3])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [json.loads(line)["label"] in CLASSES for line in lines[:-1]] == [True] * 3
    assert lines[-1] == "0 []"


def test_evaluate_folder_prints_figures(tiny_model, tiny_dataset):
    proc = run_cli("evaluate", "--json", "--model", str(tiny_model), str(tiny_dataset))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 24
    assert 0 <= result["accuracy"] <= 1
    assert set(result["per_class"]) == set(CLASSES)
    assert sum(map(sum, result["confusion_matrix"])) == 24
    text = run_cli("evaluate", "--model", str(tiny_model), str(tiny_dataset))
    assert "Accuracy:" in text.stdout and "Confusion matrix" in text.stdout


def test_help_and_version():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for sub in ("app", "classify", "evaluate", "web", "train", "export"):
        assert sub in proc.stdout
    assert run_cli("--version").returncode == 0


def test_uncertain_answers_say_not_sure(tmp_path, photos):
    """Below the calibrated threshold the JSON says "uncertain" and the table does not assert a bin."""
    from garbage_sorter.classifier import UNSURE_MESSAGE
    from garbage_sorter.model import build_model, save_checkpoint
    from garbage_sorter.presets import default_preprocessing

    model = tmp_path / "unsure.pt"
    save_checkpoint(
        model,
        build_model("efficientnet_lite0", len(CLASSES)),
        arch="efficientnet_lite0",
        classes=CLASSES,
        preprocessing=default_preprocessing("efficientnet_lite0"),
        calibration={"temperature": 1.0, "threshold": 0.99},
    )
    proc = run_cli("classify", "--json", "--model", str(model), str(photos[0]))
    answer = json.loads(proc.stdout)
    assert answer["uncertain"] is True and answer["label"] in CLASSES
    table = run_cli("classify", "--model", str(model), str(photos[0]))
    assert UNSURE_MESSAGE in table.stdout


def test_help_lists_the_subcommands_and_a_mistyped_one_is_a_usage_error():
    from garbage_sorter.cli import SUBCOMMANDS

    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0 and all(sub in proc.stdout for sub in SUBCOMMANDS)
    typo = run_cli("clasify", "bottle.jpg", timeout=60)  # a word, not a photo: not the app
    assert typo.returncode == 2 and "invalid choice: 'clasify'" in typo.stderr
    assert_no_traceback(typo)
