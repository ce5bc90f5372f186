"""Model > Adapt to this camera, end to end: a real video file as the camera, a real tiny model,
the real adaptation (garbage_sorter.adapt) in the app's worker, real files in the user's data
folder, and a real restart of the window. No sleeps: every wait is on a signal or a condition.
"""
# ruff: noqa: F811 - test_ui's fixtures are imported, then named again as test parameters

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from test_ui import (  # noqa: E402, F401 - the app's fixtures, shared
    WAIT,
    RecordingWorker,
    _private_settings,
    open_window,
    recording_cameras,
    wait_for,
    window,
)

from garbage_sorter.feedback import (  # noqa: E402
    count_corrections,
    setting_corrections_dir,
    setting_dir,
    settings_dir,
)
from garbage_sorter.ui import adapting, dialogs  # noqa: E402
from garbage_sorter.ui.adapting import (  # noqa: E402
    FrameCollector,
    adapted_model_path,
    setting_key,
    setting_of,
)
from garbage_sorter.ui.camera import parse_source  # noqa: E402
from garbage_sorter.ui.window import app_settings  # noqa: E402

SECONDS = 3.0  # collection time in these tests (the app's is 30 s)


@pytest.fixture(scope="module")
def bin_camera(tmp_path_factory) -> Path:
    """A real MJPEG video of a "bin camera": every frame a different real photo under one strong
    blue cast (an LED-lit bin), 15 fps, 2.2 s, looping like a camera that never stops."""
    from conftest import fixture_photos

    path = tmp_path_factory.mktemp("video") / "bin camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    assert writer.isOpened()
    for photo in fixture_photos()[:33]:
        frame = cv2.resize(cv2.imread(str(photo)), (320, 240)).astype(np.float32)
        frame *= np.array([1.5, 0.8, 0.55], np.float32)  # BGR: blue up, red down
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()
    return path


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def camera_window(qtbot, open_window, model, video):
    """A window whose camera is ``video``, with the model in and the camera delivering."""
    win = open_window(model, camera=str(video))
    qtbot.waitUntil(lambda: win.classifier is not None and not win._loading, timeout=WAIT)
    wait_for(qtbot, win.camera, "opened")
    win.adapt_seconds = SECONDS
    return win


def adapt_and_wait(qtbot, win) -> dialogs.AdaptDialog:
    win.adapt_action.trigger()
    dialog = win._adapting
    assert dialog is not None and dialog.phase == "collecting"
    assert dialog.progress.value() < 1000 and "different items" in dialog.heading.text()
    with qtbot.waitSignal(win.model_loaded, timeout=WAIT * 4):
        pass
    return dialog


def test_adapt_to_a_camera_switch_remember_correct_retrain_and_go_back(
    qtbot, open_window, tiny_model, bin_camera, recording_cameras, photos, monkeypatch
):
    base_hash = sha256(tiny_model)
    win = camera_window(qtbot, open_window, tiny_model, bin_camera)
    setting = setting_key(parse_source(str(bin_camera)))
    assert not win.original_model_action.isEnabled() and not win.retrain_setting_action.isEnabled()

    # Adapt: frames collected for a few seconds, de-duplicated and counted, then the worker.
    dialog = adapt_and_wait(qtbot, win)
    record = win.classifier.checkpoint.config["adaptation"]
    kept = sorted((setting_dir(setting) / "frames").glob("*.jpg"))
    assert len(kept) == record["unlabelled_photos"] >= adapting.MIN_FRAMES
    assert record["base_model"] == str(tiny_model) and sha256(tiny_model) == base_hash
    assert win.model_path == str(adapted_model_path(setting)) and setting_of(win.model_path)
    assert win.status_model.text().startswith(f"Model: adapted to Video {bin_camera.name}")
    assert "Use the original model goes back" in win.notice.message()
    qtbot.waitUntil(lambda: win._adapting is None, timeout=WAIT)  # the dialog closes itself
    assert dialog.phase == "done"
    assert win.original_model_action.isEnabled() and win.retrain_setting_action.isEnabled()
    assert not win.adapted_model_action.isEnabled()  # already in use
    # Only the setting's folder was written: no work folder left behind.
    assert sorted(p.name for p in setting_dir(setting).iterdir()) == ["frames", "model.pt"]

    # A correction while adapted lands in the setting's folder, not the general dataset.
    with qtbot.waitSignal(win.batch_done, timeout=WAIT):
        win.capture_action.trigger()
    metal = next(a for a in win.result_panel.wrong_menu.actions() if a.data() == "metal")
    metal.trigger()
    qtbot.waitUntil(lambda: "for this camera" in win.notice.message(), timeout=WAIT)
    assert count_corrections(setting_corrections_dir(setting)) == {"metal": 1}
    assert count_corrections() == {}
    assert win.notice.action_button.defaultAction() is win.retrain_setting_action
    win._on_data_menu_about_to_show()
    texts = [a.text() for a in win.data_menu.actions()]
    assert (
        "Your corrections: 0 photos" in texts and f"For Video {bin_camera.name}: 1 photo" in texts
    )

    # Retrain with my corrections: the kept frames plus the newest corrections of each class
    # (here the one just made, not an older one) make a new model; the older one stays.
    older = setting_corrections_dir(setting) / "metal" / "20000101-000000-0000abcd.jpg"
    shutil.copy(photos[0], older)
    monkeypatch.setattr(adapting, "NEWEST_CORRECTIONS", 1)
    before = sha256(adapted_model_path(setting))
    with qtbot.waitSignal(win.model_loaded, timeout=WAIT * 4):
        win.retrain_setting_action.trigger()
    record = win.classifier.checkpoint.config["adaptation"]
    assert record["labelled_photos"] == 1 and record["labelled_per_class"] == {"metal": 1}
    assert record["older_labelled_left_out"] == 1 and older.is_file()
    assert "and 1 correction (the newest of each class" in win.notice.message()
    assert record["unlabelled_photos"] == len(kept) and record["base_model"] == str(tiny_model)
    assert sha256(adapted_model_path(setting)) != before
    assert win.model_path == str(adapted_model_path(setting))

    # Use the original model, and back again.
    with qtbot.waitSignal(win.model_loaded, timeout=WAIT):
        win.original_model_action.trigger()
    assert win.model_path == str(tiny_model) and win.status_model.text().startswith("Model: tiny")
    assert win.adapted_model_action.isEnabled() and not win.original_model_action.isEnabled()
    assert app_settings().value(f"adapted/{setting}/use", True, bool) is False
    with qtbot.waitSignal(win.model_loaded, timeout=WAIT):
        win.adapted_model_action.trigger()
    assert win.model_path == str(adapted_model_path(setting))
    win.close()

    # A restart with this camera uses its adapted model again, without being asked.
    again = camera_window(qtbot, open_window, tiny_model, bin_camera)
    qtbot.waitUntil(lambda: again.model_path == str(adapted_model_path(setting)), timeout=WAIT)
    assert again.original_model_action.isEnabled()
    # Choosing another model for this camera (here Model > Open) is remembered too.
    with qtbot.waitSignal(again.model_loaded, timeout=WAIT):
        again.load_model(str(tiny_model), remember=True)
    assert app_settings().value(f"adapted/{setting}/use", True, bool) is False
    assert again.adapted_model_action.isEnabled()
    again.adapted_model_action.trigger()
    qtbot.waitUntil(lambda: again.model_path == str(adapted_model_path(setting)), timeout=WAIT)
    # Another camera does not: it gets the original model back.
    other = again.start_camera(parse_source(str(bin_camera.with_name("elsewhere.avi"))))
    assert isinstance(other, RecordingWorker)
    qtbot.waitUntil(lambda: again.model_path == str(tiny_model), timeout=WAIT)


class PausingWorker(adapting.AdaptWorker):
    """The app's adaptation worker, held at its first "measuring" step until the test lets it
    go: Cancel is then pressed while the core is in the middle of adapting, every time."""

    paused = threading.Event()
    release = threading.Event()

    def start(self) -> None:
        # Connected last, after the dialog's slot: the dialog is told of the step first.
        self.progress.connect(self._hold, Qt.ConnectionType.DirectConnection)
        super().start()

    def _hold(self, message: str) -> None:
        if message.startswith("measuring") and not self.paused.is_set():
            self.paused.set()
            self.release.wait(WAIT / 1000)


def test_cancel_while_collecting_or_adapting_changes_nothing(
    qtbot, open_window, tiny_model, bin_camera, recording_cameras, monkeypatch
):
    monkeypatch.setattr(dialogs, "AdaptWorker", PausingWorker)
    PausingWorker.paused.clear()
    PausingWorker.release.clear()
    win = camera_window(qtbot, open_window, tiny_model, bin_camera)

    win.adapt_action.trigger()
    qtbot.waitUntil(lambda: len(win._adapting.collector.frames) >= 2, timeout=WAIT)
    win._adapting.cancel_button.click()
    qtbot.waitUntil(lambda: win._adapting is None, timeout=WAIT)
    assert not settings_dir().exists()

    win.adapt_action.trigger()
    dialog = win._adapting
    qtbot.waitUntil(PausingWorker.paused.is_set, timeout=WAIT * 2)
    qtbot.waitUntil(lambda: dialog.stage.text().startswith("Measuring"), timeout=WAIT)
    assert dialog.phase == "adapting" and 400 <= dialog.progress.value() < 1000
    assert "Step 2 of 2" in dialog.heading.text() and dialog.cancel_button.isVisible()
    dialog.cancel_button.click()
    PausingWorker.release.set()
    qtbot.waitUntil(lambda: win._adapting is None, timeout=WAIT)
    assert win.model_path == str(tiny_model) and not win._loading
    assert not settings_dir().exists()  # no model, no frames, no work folder, no empty folder
    assert not app_settings().contains(f"adapted/{setting_key(win._camera_source)}/use")
    assert not win.original_model_action.isEnabled()


def test_adapt_without_a_camera_says_how(qtbot, window):
    window.adapt_action.trigger()
    assert window._adapting is None
    assert "start it from the Camera menu first" in window.notice.message()
    assert not window.adapted_model_action.isEnabled()


def test_too_few_distinct_views_is_a_message_and_try_again(
    qtbot, open_window, tiny_model, tmp_path, recording_cameras
):
    still = tmp_path / "still.avi"  # one photo, held still: one distinct view
    from conftest import fixture_photos

    writer = cv2.VideoWriter(str(still), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    frame = cv2.resize(cv2.imread(str(fixture_photos()[0])), (320, 240))
    for _ in range(15):
        writer.write(frame)
    writer.release()
    win = camera_window(qtbot, open_window, tiny_model, still)
    win.adapt_seconds = 1.0
    win.adapt_action.trigger()
    dialog = win._adapting
    qtbot.waitUntil(lambda: dialog.phase == "failed", timeout=WAIT)
    assert "Only 1 different view in" in dialog.stage.text() and dialog.again_button.isVisible()
    assert "of " in dialog.counts.text() and not settings_dir().exists()
    dialog.again_button.click()
    assert dialog.phase == "collecting"
    win.stop_camera()  # the camera going away ends a collection with a message
    assert dialog.phase == "failed" and "camera stopped" in dialog.stage.text()
    dialog.close()


def test_frame_collector_skips_near_repeats(photos):
    frames = [cv2.resize(cv2.imread(str(p)), (320, 240)) for p in photos[:4]]
    collector = FrameCollector(max_frames=3)
    noisy = np.clip(frames[0].astype(np.int16) + 2, 0, 255).astype(np.uint8)
    kept = [
        collector.add(f) for f in (frames[0], frames[0], noisy, frames[1], frames[2], frames[3])
    ]
    assert kept == [True, False, False, True, True, False]  # the last: full
    assert collector.seen == 6 and len(collector.frames) == 3
    big = FrameCollector()
    assert big.add(cv2.resize(frames[0], (1920, 1080)))  # kept shrunk: 150 of them fit in memory
    assert big.frames[0].shape == (360, 640, 3)


def test_frame_collector_keeps_each_item_in_a_dark_bin(photos):
    """A smart bin's camera: an item on a dim shelf in a dark bin under a blue LED. Each new
    item is a new view, however dark; the same view again with sensor noise and JPEG is not."""
    rng = np.random.default_rng(0)
    collector = FrameCollector()
    for path in photos[:10]:
        frame = np.full((480, 640, 3), 6, np.uint8)
        frame[100:440, 100:540] = 40  # the shelf
        frame[130:410, 180:460] = cv2.resize(cv2.imread(str(path)), (280, 280)) // 2
        frame = (frame * np.array([1.0, 0.45, 0.25])).astype(np.uint8)  # BGR: a blue LED
        noisy = np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
        noisy = cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 1)
        assert collector.add(frame), path.name
        assert not collector.add(noisy), path.name
    assert len(collector.frames) == 10


def test_min_frames_is_the_cores():
    from garbage_sorter.adapt import MIN_PHOTOS

    assert adapting.MIN_FRAMES == MIN_PHOTOS


def dark_bin_video(path: Path, dark: bool) -> Path:
    """A video of the fixture photos, each held for 3 frames; with ``dark``, as a dark bin
    under a blue LED sees them (the test_familiarity look), else as they are (studio)."""
    from conftest import fixture_photos
    from PIL import Image
    from test_familiarity import in_a_dark_blue_bin

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    for photo in fixture_photos():
        image = Image.open(photo).convert("RGB")
        image = in_a_dark_blue_bin(image) if dark else image
        frame = cv2.cvtColor(np.asarray(image.resize((320, 240))), cv2.COLOR_RGB2BGR)
        for _ in range(3):
            writer.write(frame)
    writer.release()
    return path


def test_an_unfamiliar_camera_gets_a_quiet_hint_to_adapt(
    qtbot, open_window, bundled_model, tmp_path, recording_cameras
):
    win = camera_window(qtbot, open_window, bundled_model, dark_bin_video(tmp_path / "d.avi", True))
    qtbot.waitUntil(lambda: "looks unfamiliar" in win.notice.message(), timeout=WAIT * 2)
    assert win.notice.action_button.defaultAction() is win.adapt_action
    assert win.camera_familiarity.unfamiliar and win.notice.level == "info"
    assert "unlike the photos the model learnt from" in win.result_panel.bin_name.text()
    assert win.result_panel.confidence.text().endswith("but an unfamiliar photo")
    # A studio camera: as many answered frames, no hint.
    win.notice.dismiss()
    camera = win.start_camera(parse_source(str(dark_bin_video(tmp_path / "s.avi", False))))
    wait_for(qtbot, camera, "opened")
    qtbot.waitUntil(lambda: len(win.camera_familiarity.scores) >= 15, timeout=WAIT * 2)
    assert not win.camera_familiarity.unfamiliar and "unfamiliar" not in win.notice.message()


def test_adapting_to_an_unfamiliar_camera_says_what_it_kept(
    qtbot, open_window, bundled_model, bin_camera, recording_cameras
):
    """The bundled model and a blue-lit bin camera: the adaptation is checked without labels (the answers'
    information); when it keeps the shipped statistics the app says so, points to corrections,
    and does not offer to adapt the same camera again."""
    win = camera_window(qtbot, open_window, bundled_model, bin_camera)
    adapt_and_wait(qtbot, win)
    record = win.classifier.checkpoint.config["adaptation"]
    assert record["unfamiliar_share"] > 0.5 and "information" in record
    assert setting_of(win.model_path)  # the camera's own model either way, for its corrections
    if not record.get("kept_shipped"):
        assert "Use the original model goes back" in win.notice.message()
        return
    assert "keeps its original statistics" in win.notice.message()
    assert win.notice.action_button.defaultAction() is win.retrain_setting_action
    win.notice.dismiss()
    qtbot.waitUntil(lambda: len(win.camera_familiarity.scores) >= 15, timeout=WAIT * 2)
    assert win.camera_familiarity.unfamiliar  # still unfamiliar, but no second offer to adapt
    assert "looks unfamiliar" not in win.notice.message()
