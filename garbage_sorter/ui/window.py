"""The main window: wires actions, menus and workers together and renders their results.

State lives in plain objects (``Result``s keyed by job id, the current region, the classifier);
the widgets only show it. Every slow step -- loading a model, classifying, isolating, Grad-CAM,
reading a camera, saving a correction, training -- happens in a worker, and its answer comes
back through a signal to a small ``_on_<event>`` slot here.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QSettings, QSize, Qt, QThreadPool, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QActionGroup, QDesktopServices, QImage, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from garbage_sorter import bins
from garbage_sorter.classifier import StreamFamiliarity
from garbage_sorter.feedback import (
    count_corrections,
    feedback_dir,
    save_correction,
    setting_corrections_dir,
)
from garbage_sorter.images import IMAGE_SUFFIXES
from garbage_sorter.segmentation import ISOLATE_BY_DEFAULT
from garbage_sorter.storage import config_dir, data_dir

from .adapting import adapted_model_path, setting_key, setting_of
from .camera import CameraSource, CameraWorker, list_cameras, parse_source
from .dialogs import AdaptDialog, ModelCardDialog, RetrainDialog
from .inference import InferenceWorker, Job, Result, expand_paths, explain, load_classifier
from .tasks import run_task
from .widgets import HistoryList, ImageView, Notice, ResultPanel

# The View > Isolate object setting, stored only when the user toggles it.
ISOLATE_SETTING = "isolate_object"
UNFAMILIAR_CAMERA = "This camera looks unfamiliar to the model: Model → Adapt to this camera…"
SHORTCUTS = [
    ("Ctrl+O", "Open photos"),
    ("Ctrl+V", "Paste a photo"),
    ("Space", "Capture a camera frame / resume live"),
    ("Esc", "Stop the camera"),
    ("Ctrl+I", "Isolate the object"),
    ("Ctrl+E", "Why? (where the model looked)"),
    ("Ctrl+R", "Retrain the model"),
    ("Ctrl+Shift+O", "Open a model"),
    ("Ctrl+Q", "Quit"),
]


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _save_correction_and_count(image, label: str, root: Path | None) -> tuple[Path, int, bool]:
    """Save a correction (a pool thread: the file is fsynced) and count those beside it."""
    return save_correction(image, label, root), sum(count_corrections(root).values()), bool(root)


def _load_numbered(request: int, path: str | None, device: str, region: str | None):
    """``load_classifier``, answering with the request's number: only the latest load is used."""
    try:
        return request, load_classifier(path, device, region)
    except Exception as exc:
        exc.load_request = request  # type: ignore[attr-defined]
        raise


def app_settings() -> QSettings:
    """The app's settings file, beside the core's settings (so tests and kiosks can move both)."""
    return QSettings(str(config_dir() / "app.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    """The sorting assistant's window.

    Signals (for tests and benchmarks as much as for the window itself):
        model_loaded(object): a classifier is now in use.
        model_failed(str): loading a model failed; the previous one, if any, stays.
        result_shown(object): a ``Result`` was shown (live frames included).
        batch_done(): every queued photo has been answered.
    """

    model_loaded = Signal(object)
    model_failed = Signal(str)
    result_shown = Signal(object)
    batch_done = Signal()

    def __init__(
        self, *, device: str = "auto", region: str | None = None, parent: QWidget | None = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Garbage Sorter")
        self.setAcceptDrops(True)
        self.settings = app_settings()
        self.device = device
        self.classifier = None
        self.model_path: str | None = None
        self.results: dict[int, Result] = {}
        self.current: Result | None = None
        self.camera: CameraWorker | None = None
        self._camera_source: CameraSource | None = None
        self._retired_cameras: list[CameraWorker] = []
        self._frozen = False
        self._last_frame = None
        self._live_box = None
        self._frames = self._predictions = 0
        self._explanations: dict[int, QImage] = {}
        self._replacing: dict[int, int] = {}  # new job id -> the history entry it re-does
        self._batch_total = self._batch_done = 0
        self._batch_failures: list[str] = []
        self._retrain: RetrainDialog | None = None
        self._loading = False
        self._remember_model = False
        self._load_request = 0
        self._adapting: AdaptDialog | None = None
        # How long "Adapt to this camera" collects frames (tests shorten it; not a user option).
        self.adapt_seconds = 30.0
        self.camera_rates = (0, 0)  # frames shown, live predictions: in the last second
        # Shift scores of the camera's recent frames: a hint, once per camera run, when most
        # of them look unlike the model's training photos.
        self.camera_familiarity = StreamFamiliarity()
        self._hinted_unfamiliar = False

        self.regions = bins.load_regions()
        self.region = self.regions.get(self.settings.value("region", "", str)) or bins.get_region()
        if region is not None:
            if region in self.regions:
                self.region = self.regions[region]
            else:
                QTimer.singleShot(
                    0,
                    lambda: self.notify(
                        f"Unknown region {region!r}; using {self.region.title}. "
                        f"Known: {', '.join(sorted(self.regions))}.",
                        "warning",
                    ),
                )

        self._create_actions()
        self._create_layout()
        self._create_menus()
        self._create_status_bar()

        available = (
            self.screen().availableGeometry().size() * 0.92
        )  # a small laptop keeps its margins
        self.resize(QSize(1180, 740).boundedTo(available))
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        self._update_model_actions()

        # Threads last: if anything above fails, no running thread is left without its window.
        self.inference = InferenceWorker(self)
        self.inference.answered.connect(self._on_answered)
        self.inference.failed.connect(self._on_job_failed)
        self.inference.idle.connect(self._on_inference_idle)
        self.inference.start()
        self._rate_timer = QTimer(self, interval=1000)
        self._rate_timer.timeout.connect(self._on_rate_tick)
        self._rate_timer.start()

    # -- construction -------------------------------------------------------------------------

    def _action(
        self, text: str, slot, shortcut=None, *, checkable: bool = False, tip: str = ""
    ) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setCheckable(checkable)
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        (action.toggled if checkable else action.triggered).connect(slot)
        self.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _create_actions(self) -> None:
        self.open_action = self._action(
            "&Open photos…", self._on_open, QKeySequence.StandardKey.Open
        )
        self.paste_action = self._action(
            "&Paste photo", self._on_paste, QKeySequence.StandardKey.Paste
        )
        self.quit_action = self._action("&Quit", self.close, "Ctrl+Q")
        self.clear_action = self._action("Clear &history", self._on_clear_history)
        self.isolate_action = self._action(
            "&Isolate object",
            self._on_isolate_toggled,
            "Ctrl+I",
            checkable=True,
            tip="Find the item first and classify only it",
        )
        self.why_action = self._action(
            "Why?",
            self._on_why_toggled,
            "Ctrl+E",
            checkable=True,
            tip="Show where the model looked (Grad-CAM heatmap)",
        )
        self.capture_action = self._action(
            "&Capture frame",
            self._on_capture,
            Qt.Key.Key_Space,
            tip="Freeze the camera picture and classify it",
        )
        self.video_action = self._action("Use a &video file as camera…", self._on_choose_video)
        self.stop_camera_action = self._action("&Stop camera", self.stop_camera, Qt.Key.Key_Escape)
        self.open_model_action = self._action("&Open model…", self._on_open_model, "Ctrl+Shift+O")
        self.bundled_model_action = self._action(
            "Use the &bundled model", self._on_use_bundled_model
        )
        self.card_action = self._action("Model &card", self._on_model_card)
        self.retrain_action = self._action("&Retrain model…", self._on_retrain, "Ctrl+R")
        self.adapt_action = self._action(
            "&Adapt to this camera…",
            self._on_adapt,
            tip="Learn the running camera's light and background from a few seconds of items",
        )
        self.original_model_action = self._action(
            "Use the &original model",
            self._on_use_original_model,
            tip="Go back to the model this camera was adapted from",
        )
        self.adapted_model_action = self._action(
            "Use the model adapted to this &camera", self._on_use_adapted_model
        )
        self.retrain_setting_action = self._action(
            "Retrain with my &corrections",
            self._on_retrain_setting,
            tip="Adapt again to this camera, learning from the photos you corrected here",
        )
        self.data_folder_action = self._action("Open &data folder", self._on_open_data_folder)
        self.shortcuts_action = self._action(
            "&Keyboard shortcuts", self._on_show_shortcuts, QKeySequence.StandardKey.HelpContents
        )
        # Saved only when the user toggles it, so a user who never did follows ISOLATE_BY_DEFAULT.
        # The older "isolate" key is ignored: the app wrote it at every start while isolation was
        # the default, so it records that default, not a choice.
        self.isolate_action.setChecked(
            self.settings.value(ISOLATE_SETTING, ISOLATE_BY_DEFAULT, bool)
        )
        self.isolate_action.triggered.connect(self._on_isolate_chosen)
        self.capture_action.setEnabled(False)
        self.stop_camera_action.setEnabled(False)

    def _create_layout(self) -> None:
        self.notice = Notice()
        self.view = ImageView()
        self.capture_button = QPushButton("Capture (Space)")
        self.capture_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.capture_button.clicked.connect(self.capture_action.trigger)
        self.capture_button.hide()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(10, 10, 5, 10)
        left_layout.addWidget(self.notice)
        left_layout.addWidget(self.view, 1)
        camera_row = QHBoxLayout()
        camera_row.addStretch(1)
        camera_row.addWidget(self.capture_button)
        camera_row.addStretch(1)
        left_layout.addLayout(camera_row)

        self.result_panel = ResultPanel(self.why_action)
        self.result_panel.correction_chosen.connect(self._on_correction_chosen)
        self.history = HistoryList()
        self.history.chosen.connect(self._on_history_chosen)
        right = QWidget()
        right.setMinimumWidth(330)
        right.setMaximumWidth(460)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(5, 10, 10, 10)
        right_layout.addWidget(self.result_panel)
        recent = QLabel("Recent")
        recent.setObjectName("SectionTitle")
        right_layout.addWidget(recent)
        right_layout.addWidget(self.history, 1)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 1)
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)

    def _create_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addActions([self.open_action, self.paste_action])
        file_menu.addSeparator()
        file_menu.addAction(self.clear_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)

        view_menu = bar.addMenu("&View")
        view_menu.addActions([self.isolate_action, self.why_action])

        self.camera_menu = bar.addMenu("&Camera")
        self.camera_menu.aboutToShow.connect(self._on_camera_menu_about_to_show)
        self._camera_group = QActionGroup(self)
        self._on_camera_menu_about_to_show()

        region_menu = bar.addMenu("&Region")
        self._region_group = QActionGroup(self)
        self.region_actions: dict[str, QAction] = {}
        for region in sorted(self.regions.values(), key=lambda r: (r.id != "default", r.title)):
            action = region_menu.addAction(region.title)
            action.setCheckable(True)
            action.setData(region.id)
            action.setChecked(region.id == self.region.id)
            action.triggered.connect(self._on_region_triggered)
            self._region_group.addAction(action)
            self.region_actions[region.id] = action

        self.data_menu = bar.addMenu("&Data")
        self.data_menu.aboutToShow.connect(self._on_data_menu_about_to_show)
        self._on_data_menu_about_to_show()

        model_menu = bar.addMenu("&Model")
        model_menu.addActions([self.open_model_action, self.bundled_model_action, self.card_action])
        model_menu.addSeparator()
        model_menu.addActions(
            [
                self.adapt_action,
                self.original_model_action,
                self.adapted_model_action,
                self.retrain_setting_action,
            ]
        )
        model_menu.aboutToShow.connect(self._update_model_actions)

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)

    def _create_status_bar(self) -> None:
        self.status_model = QLabel("No model")
        self.status_device = QLabel("")
        self.status_time = QLabel("")
        self.status_camera = QLabel("")
        bar = self.statusBar()
        for label in (self.status_camera, self.status_time, self.status_device, self.status_model):
            label.setContentsMargins(8, 0, 8, 0)
            bar.addPermanentWidget(label)

    # -- model --------------------------------------------------------------------------------

    def saved_model_path(self) -> str | None:
        """The model the user last chose, if it is still there."""
        path = self.settings.value("model", "", str)
        return path if path and Path(path).is_file() else None

    def load_model(self, path: str | None, remember: bool = False) -> None:
        """Load ``path`` (None: the bundled model) in the background; the current one stays meanwhile."""
        self._loading = True
        self._remember_model = remember
        self._load_request += 1  # a later request wins over one still loading
        self.status_model.setText("Loading model…")
        if self.classifier is None:
            self.result_panel.clear("Loading the model…")
        run_task(
            _load_numbered,
            self._load_request,
            path,
            self.device,
            self.region.id,
            parent=self,
            on_done=self._on_model_loaded,
            on_error=self._on_model_error,
        )

    def _on_model_loaded(self, answer) -> None:
        request, classifier = answer
        if request != self._load_request:
            return  # a newer request is on its way
        self._loading = False
        if classifier.region.id != self.region.id:  # the region changed while it was loading
            classifier.set_region(self.region.id)
        self.classifier = classifier
        self.model_path = str(classifier.checkpoint.path) if classifier.checkpoint.path else None
        if self._remember_model and self.model_path:
            self.settings.setValue("model", self.model_path)
        self.inference.set_classifier(classifier)
        self.camera_familiarity.reset()  # another model, other scores
        self.notice.dismiss("unfamiliar")
        self.result_panel.set_classes(classifier.classes)
        self._explanations.clear()
        card = classifier.checkpoint.card()
        setting = setting_of(self.model_path)
        name = f"adapted to {self._setting_title(setting)}" if setting else classifier.name
        camera = self._camera_setting()
        if (
            camera
            and setting != camera
            and self.settings.value(f"adapted/{camera}/use", False, bool)
        ):
            # The user chose another model (Open, bundled, a retrain) for this camera.
            self.settings.setValue(f"adapted/{camera}/use", False)
        self.status_model.setText(f"Model: {name} ({card['arch']})")
        self.status_model.setToolTip(self.model_path or "")
        self.status_device.setText(classifier.device.type.upper())
        if self.current is None:
            self.result_panel.clear()
        self.notice.dismiss("model")
        self._update_model_actions()
        self.model_loaded.emit(classifier)

    def _on_model_error(self, exc: Exception) -> None:
        if getattr(exc, "load_request", self._load_request) != self._load_request:
            return  # a newer request is on its way
        self._loading = False
        message = str(exc) or type(exc).__name__
        if self.classifier is None:
            self.status_model.setText("No model")
            self.result_panel.clear("No model loaded")
            text = f"Could not load the model: {message}. Open another with Model > Open model."
        else:
            self.status_model.setText(f"Model: {self.classifier.name}")
            text = f"Could not load that model ({message}); still using {self.classifier.name}."
        self.notify(text, "error", self.open_model_action, topic="model")
        self._update_model_actions()
        self.model_failed.emit(message)

    def _update_model_actions(self) -> None:
        # "Why?" follows the result panel instead: it needs an answer, and answers need a model.
        ready = self.classifier is not None
        for action in (self.card_action, self.retrain_action, self.adapt_action):
            action.setEnabled(ready)
        in_use = setting_of(self.model_path)
        camera = self._camera_setting()
        self.original_model_action.setEnabled(in_use is not None)
        self.retrain_setting_action.setEnabled(in_use is not None)
        self.adapted_model_action.setEnabled(
            camera is not None and camera != in_use and adapted_model_path(camera).is_file()
        )

    def _on_open_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open a model",
            self._last_folder("model_folder"),
            "Garbage Sorter models (*.pt *.pth *.onnx);;All files (*)",
        )
        if path:
            self.settings.setValue("model_folder", str(Path(path).parent))
            self.load_model(path, remember=True)

    def _on_use_bundled_model(self) -> None:
        self.settings.remove("model")
        self.load_model(None)

    def _on_model_card(self) -> None:
        if self.classifier is None:
            return
        dialog = ModelCardDialog(self.classifier.checkpoint.card(), self.status_device.text(), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()

    # -- inputs -------------------------------------------------------------------------------

    def open_paths(self, paths: list[str]) -> None:
        """Classify these files, and the photos inside these folders, in order."""
        if not paths:
            return
        if not self._can_classify():
            return
        run_task(
            expand_paths,
            list(paths),
            parent=self,
            on_done=self._on_paths_expanded,
            on_error=self._on_paths_error,
        )

    def _can_classify(self) -> bool:
        if self.classifier is None and not self._loading:
            self.notify(
                "No model is loaded, so nothing can be classified. Open one with "
                "Model > Open model.",
                "error",
                self.open_model_action,
                topic="model",
            )
            return False
        return True

    def _on_paths_expanded(self, paths: list[Path]) -> None:
        if not paths:
            self.notify("No photos found there.", "warning")
            return
        self._freeze_live()
        for path in paths:
            self._submit(Job(path.name, path, isolate=self.isolate_action.isChecked()))

    def _on_paths_error(self, exc: Exception) -> None:
        self.notify(f"Could not read the folder: {exc}", "error")

    def _submit(self, job: Job) -> None:
        if self._batch_done >= self._batch_total:
            self._batch_total = self._batch_done = 0
            self._batch_failures.clear()
        self._batch_total += 1
        self._show_batch_progress()
        self.inference.submit(job)

    def _show_batch_progress(self) -> None:
        if self._batch_total > 1:
            self.statusBar().showMessage(
                f"Classifying {self._batch_done + 1} of {self._batch_total}…"
            )

    def _on_open(self) -> None:
        patterns = " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES))
        paths, _ = QFileDialog.getOpenFileNames(
            self,
            "Open photos",
            self._last_folder("photo_folder"),
            f"Photos ({patterns});;All files (*)",
        )
        if paths:
            self.settings.setValue("photo_folder", str(Path(paths[0]).parent))
            self.open_paths(paths)

    def _last_folder(self, key: str) -> str:
        return self.settings.value(key, str(Path.home()), str)

    def _on_paste(self) -> None:
        mime = QApplication.clipboard().mimeData()
        if mime is None:
            return
        self._accept_mime(mime, "Clipboard")

    def _accept_mime(self, mime, source: str) -> bool:
        paths = (
            [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
            if mime.hasUrls()
            else []
        )
        if not paths and mime.hasText() and Path(mime.text().strip()).exists():
            paths = [mime.text().strip()]
        if paths:
            self.open_paths(paths)
            return True
        if mime.hasImage():
            image = QImage(mime.imageData())
            if not image.isNull() and self._can_classify():
                self._freeze_live()
                self._submit(Job(source, image, isolate=self.isolate_action.isChecked()))
                return True
        self.notify(f"The {source.lower()} holds no photo.", "warning")
        return False

    def dragEnterEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasImage() or (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls())):
            event.acceptProposedAction()
            self.view.set_drop_highlight(True)

    def dragLeaveEvent(self, event) -> None:
        self.view.set_drop_highlight(False)

    def dropEvent(self, event) -> None:
        self.view.set_drop_highlight(False)
        if self._accept_mime(event.mimeData(), "Dropped picture"):
            event.acceptProposedAction()

    # -- results ------------------------------------------------------------------------------

    def _on_answered(self, result: Result) -> None:
        if result.live:
            self._on_live_result(result)
            return
        self._batch_done += 1
        self._show_batch_progress()
        replaced = self._replacing.pop(result.job_id, None)
        if replaced is not None:
            self.results.pop(replaced, None)
            self._explanations.pop(replaced, None)
        self.results[result.job_id] = result
        pred = result.prediction
        for dropped in self.history.add_result(
            result.job_id,
            result.thumbnail,
            f"{pred.label.capitalize()}{'?' if pred.uncertain else ''} · {pred.confidence:.0%}",
            f"{time.strftime('%H:%M:%S', time.localtime(result.when))} · {result.source}",
            replaces=replaced,
        ):
            self.results.pop(dropped, None)
            self._explanations.pop(dropped, None)
        self.status_time.setText(_duration(pred.seconds))
        self._show_result(result)

    def _on_live_result(self, result: Result) -> None:
        if self.camera is None or self._frozen:
            return  # a frame classified just before the preview was frozen or stopped
        self._predictions += 1
        self._live_box = result.prediction.crop_box
        self.camera_familiarity.add(result.prediction.shift)
        if self.camera_familiarity.unfamiliar and not self._hinted_unfamiliar:
            self._hinted_unfamiliar = True
            # Not again for a camera already adapted to, which kept the shipped statistics:
            # its corrections are the way on (_on_adapted says so).
            if self._adapting is None and setting_of(self.model_path) is None:
                self.notify(UNFAMILIAR_CAMERA, "info", self.adapt_action, topic="unfamiliar")
        self._render_prediction(result, live=True)
        self.status_time.setText(_duration(result.prediction.seconds))
        self.result_shown.emit(result)

    def _show_result(self, result: Result) -> None:
        self.current = result
        self.history.select_id(result.job_id)
        if self.why_action.isChecked():
            self._show_explanation(result)
        else:
            self._show_photo(result)
        self._render_prediction(result, live=False)
        self.result_shown.emit(result)

    def _show_photo(self, result: Result) -> None:
        self.view.set_image(
            result.display,
            box=result.prediction.crop_box,
            source_size=result.image.size,
            mask=result.mask,
            caption=result.source,
        )

    def _render_prediction(self, result: Result, live: bool) -> None:
        # loaded already: a result exists
        from garbage_sorter.classifier import UNFAMILIAR_MESSAGE, UNSURE_MESSAGE

        unsure = UNFAMILIAR_MESSAGE if result.prediction.unfamiliar else UNSURE_MESSAGE
        self.result_panel.show_prediction(result.prediction, self.region, unsure, live=live)
        self.result_panel.set_actions_enabled(not live, "Capture (Space) first" if live else "")

    def _on_job_failed(self, job_id: int, source: str, message: str) -> None:
        self._batch_done += 1
        self._replacing.pop(job_id, None)
        self._batch_failures.append(source)
        self._show_batch_progress()
        if len(self._batch_failures) == 1:
            self.notify(f"Could not read {source}: {message}.", "error")
        else:
            self.notify(
                f"{len(self._batch_failures)} files could not be read, the last one "
                f"{source}: {message}.",
                "error",
            )

    def _on_inference_idle(self) -> None:
        if self._batch_done < self._batch_total:
            return  # a result is still on its way through the event queue
        if self._batch_total > 1:
            failed = len(self._batch_failures)
            self.statusBar().showMessage(
                f"{self._batch_total - failed} photos classified"
                + (f", {failed} could not be read" if failed else ""),
                8000,
            )
        else:
            self.statusBar().clearMessage()
        self.batch_done.emit()

    def _on_history_chosen(self, job_id: int) -> None:
        if job_id in self.results:
            self._freeze_live()
            self._show_result(self.results[job_id])

    def _on_clear_history(self) -> None:
        self.history.clear()
        self.results.clear()
        self._explanations.clear()
        self.current = None
        if self.camera is None or self._frozen:
            self.view.set_image(None)
            self.result_panel.clear()

    # -- isolate, why, region ---------------------------------------------------------------------

    def _on_isolate_chosen(self, on: bool) -> None:
        self.settings.setValue(ISOLATE_SETTING, on)

    def _on_isolate_toggled(self, on: bool) -> None:
        if self.current is not None and (self.camera is None or self._frozen) and self.classifier:
            # Classify the photo on show again, with or without the crop, in its place in the history.
            job = Job(self.current.source, self.current.image, isolate=on)
            self._replacing[job.id] = self.current.job_id
            self._submit(job)

    def _on_why_toggled(self, on: bool) -> None:
        if on and self.camera is not None and not self._frozen:
            self._on_capture()  # explain a still frame, not a moving target
            return
        if self.current is not None:
            if on:
                self._show_explanation(self.current)
            else:
                self._show_photo(self.current)

    def _show_explanation(self, result: Result) -> None:
        overlay = self._explanations.get(result.job_id)
        if overlay is not None:
            self.view.set_image(overlay, caption="Red: where the model looked")
            return
        self._show_photo(result)
        if self.classifier is not None:
            self.statusBar().showMessage("Working out where the model looked…")
            run_task(
                explain,
                self.classifier,
                result,
                parent=self,
                on_done=self._on_explained,
                on_error=self._on_explain_error,
            )

    def _on_explained(self, answer: tuple[int, QImage]) -> None:
        job_id, overlay = answer
        self.statusBar().clearMessage()
        if job_id not in self.results:
            return
        self._explanations[job_id] = overlay
        if (
            self.why_action.isChecked()
            and self.current is not None
            and self.current.job_id == job_id
        ):
            self.view.set_image(overlay, caption="Red: where the model looked")

    def _on_explain_error(self, exc: Exception) -> None:
        self.statusBar().clearMessage()
        self.notify(f"Could not work out where the model looked: {exc}", "warning")

    def _on_region_triggered(self) -> None:
        self.set_region(self.sender().data())

    def set_region(self, region_id: str) -> None:
        """Use ``region_id``'s bins from now on, and for the result on show; remember the choice."""
        self.region = self.regions[region_id]
        self.region_actions[region_id].setChecked(True)
        self.settings.setValue("region", region_id)
        # The CLI remembers it too; that file is fsynced, so not on the GUI thread. If it fails,
        # the app's own setting above still holds.
        run_task(bins.save_region, region_id, parent=self)
        if self.classifier is not None:
            self.classifier.set_region(region_id)
        if self.current is not None and (self.camera is None or self._frozen):
            self._render_prediction(self.current, live=False)
        self.statusBar().showMessage(f"Bins for {self.region.title}", 4000)

    # -- feedback and retraining --------------------------------------------------------------------

    def _on_correction_chosen(self, label: str) -> None:
        if self.current is None:
            return
        # While a camera's adapted model is in use, corrections belong to that setting.
        setting = setting_of(self.model_path)
        run_task(
            _save_correction_and_count,
            self.current.image,
            label,
            setting_corrections_dir(setting) if setting else None,
            parent=self,
            on_done=self._on_correction_saved,
            on_error=self._on_correction_error,
        )

    def _on_correction_saved(self, saved: tuple[Path, int, bool]) -> None:
        path, total, for_setting = saved
        if for_setting:
            self.notify(
                f"Saved as {path.parent.name} for this camera ({total} correction"
                f"{'s' if total != 1 else ''} here so far). Model > Retrain with my corrections "
                "learns from them.",
                "info",
                self.retrain_setting_action,
            )
            return
        self.notify(
            f"Saved as {path.parent.name} in your dataset ({total} correction"
            f"{'s' if total != 1 else ''} so far). Data > Retrain model learns from them.",
            "info",
            self.retrain_action,
        )

    def _on_correction_error(self, exc: Exception) -> None:
        self.notify(str(exc), "error")

    def _on_data_menu_about_to_show(self) -> None:
        self.data_menu.clear()
        counts = count_corrections()
        total = sum(counts.values())
        header = self.data_menu.addAction(
            f"Your corrections: {total} photo{'s' if total != 1 else ''}"
        )
        header.setEnabled(False)
        for label, n in counts.items():
            self.data_menu.addAction(f"    {label}: {n}").setEnabled(False)
        setting = setting_of(self.model_path)
        if setting:  # corrections made while a camera's adapted model is in use are kept apart
            n = sum(count_corrections(setting_corrections_dir(setting)).values())
            self.data_menu.addAction(
                f"For {self._setting_title(setting)}: {n} photo{'s' if n != 1 else ''}"
            ).setEnabled(False)
        self.data_menu.addSeparator()
        self.data_menu.addActions([self.data_folder_action, self.retrain_action])
        if setting:
            self.data_menu.addAction(self.retrain_setting_action)

    def _on_open_data_folder(self) -> None:
        folder = feedback_dir() if feedback_dir().is_dir() else data_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _on_retrain(self) -> None:
        if self.classifier is None:
            return
        if self._retrain is not None:
            self._retrain.raise_()
            self._retrain.activateWindow()
            return
        from garbage_sorter.classifier import bundled_model_path

        folders = self.settings.value("retrain_folders", [], list) or []
        self._retrain = RetrainDialog(
            model_path=self.model_path or str(bundled_model_path()),
            arch=self.classifier.checkpoint.arch,
            corrections=count_corrections(),
            corrections_dir=feedback_dir(),
            folders=[str(f) for f in folders],
            parent=self,
        )
        self._retrain.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._retrain.use_model.connect(self._on_use_trained_model)
        self._retrain.folders_changed.connect(self._on_retrain_folders_changed)
        self._retrain.destroyed.connect(self._on_retrain_closed)
        self._retrain.show()

    def _on_retrain_folders_changed(self, folders: list[str]) -> None:
        self.settings.setValue("retrain_folders", folders)

    def _on_retrain_closed(self) -> None:
        self._retrain = None

    def _on_use_trained_model(self, path: str) -> None:
        self.load_model(path, remember=True)

    # -- adapting to a camera -------------------------------------------------------------------

    def _camera_setting(self) -> str | None:
        """The setting (see ``adapting.setting_key``) of the running camera, if one runs."""
        return setting_key(self._camera_source) if self.camera is not None else None

    def _setting_title(self, setting: str) -> str:
        return self.settings.value(f"adapted/{setting}/title", setting, str)

    def _base_model(self) -> str | None:
        """The model in use, or the one it was adapted from (None: the bundled model)."""
        if self.classifier is None or setting_of(self.model_path) is None:
            return self.model_path
        base = self.classifier.checkpoint.config.get("adaptation", {}).get("base_model")
        # Gone (moved, or the package reinstalled elsewhere): the bundled model is the original.
        return base if base and Path(base).is_file() else None

    def _follow_camera_setting(self) -> None:
        """Use the camera's adapted model if the user chose it, else not another camera's."""
        setting = self._camera_setting()
        if setting is None:
            return
        path = adapted_model_path(setting)
        wanted = path.is_file() and self.settings.value(f"adapted/{setting}/use", False, bool)
        if wanted and self.model_path != str(path):
            self.load_model(str(path))
        elif not wanted and setting_of(self.model_path) is not None:
            self.load_model(self._base_model())

    def _on_adapt(self) -> None:
        if self.classifier is None:
            return
        if self.camera is None:
            self.notify(
                "Adapting learns the look of one camera: start it from the Camera menu first, "
                "then choose Model > Adapt to this camera.",
                "info",
            )
            return
        self._start_adapting(retrain=False)

    def _on_retrain_setting(self) -> None:
        if self.classifier is not None and setting_of(self.model_path) is not None:
            self._start_adapting(retrain=True)

    def _start_adapting(self, retrain: bool) -> None:
        if self._adapting is not None:
            self._adapting.raise_()
            self._adapting.activateWindow()
            return
        if retrain:
            setting = setting_of(self.model_path)
            title = self._setting_title(setting)
        else:
            setting, title = self._camera_setting(), self._camera_source.title
            if self._frozen:
                self._on_capture()  # back to live: the user is about to show items
        self._adapting = AdaptDialog(
            setting=setting,
            title=title,
            base=self._base_model(),
            seconds=self.adapt_seconds,
            retrain=retrain,
            parent=self,
        )
        self._adapting.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._adapting.adapted.connect(self._on_adapted)
        self._adapting.destroyed.connect(self._on_adapting_closed)
        self._adapting.show()
        self._adapting.start()

    def _on_adapting_closed(self) -> None:
        self._adapting = None

    def _on_adapted(self, path: str, record: dict) -> None:
        dialog = self.sender()
        setting = dialog.setting
        self.settings.setValue(f"adapted/{setting}/title", dialog.title)
        self.settings.setValue(f"adapted/{setting}/use", True)
        if setting in (self._camera_setting(), setting_of(self.model_path)):
            self.load_model(path)  # else the camera changed meanwhile: used when it is back
        labelled = record.get("labelled_photos", 0)
        if record.get("kept_shipped"):
            self.notify(
                f"Adapting to {self._setting_title(setting)} without labels did not make the "
                "model's answers clearer, so it keeps its original statistics. Correct a few "
                "answers (Wrong? Choose the right class), then Model > Retrain with my "
                "corrections.",
                "info",
                self.retrain_setting_action,
            )
            return
        corrections = (
            f" and {labelled} correction{'s' if labelled != 1 else ''}" if labelled else ""
        )
        if record.get("older_labelled_left_out", 0):
            corrections += " (the newest of each class; older ones are kept)"
        self.notify(
            f"Adapted to {self._setting_title(setting)} from {record.get('unlabelled_photos', 0)} "
            f"views{corrections}. Model > Use the original model goes back.",
            "info",
            self.original_model_action,
        )

    def _on_use_original_model(self) -> None:
        setting = setting_of(self.model_path)
        if setting is None:
            return
        self.settings.setValue(f"adapted/{setting}/use", False)
        self.load_model(self._base_model())

    def _on_use_adapted_model(self) -> None:
        setting = self._camera_setting()
        if setting is None or not adapted_model_path(setting).is_file():
            return
        self.settings.setValue(f"adapted/{setting}/use", True)
        self.load_model(str(adapted_model_path(setting)))

    # -- camera -------------------------------------------------------------------------------

    def _on_camera_menu_about_to_show(self) -> None:
        menu = self.camera_menu
        menu.clear()
        cameras = list_cameras()
        for source in cameras:
            action = menu.addAction(source.title)
            action.setCheckable(True)
            action.setChecked(self.camera is not None and self._camera_source == source)
            action.setData(source.device)
            action.triggered.connect(self._on_camera_chosen)
            self._camera_group.addAction(action)
        if not cameras:
            menu.addAction("No camera found").setEnabled(False)
        menu.addAction(self.video_action)
        menu.addSeparator()
        menu.addActions([self.capture_action, self.stop_camera_action])

    def _on_camera_chosen(self) -> None:
        self.start_camera(parse_source(self.sender().data()))

    def _on_choose_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "A video to use as camera",
            self._last_folder("video_folder"),
            "Videos (*.mp4 *.avi *.mkv *.mov *.webm);;All files (*)",
        )
        if path:
            self.settings.setValue("video_folder", str(Path(path).parent))
            self.start_camera(parse_source(path))

    def start_camera(self, source: CameraSource, opener=None) -> CameraWorker:
        """Start (or restart) ``source``; a fault is reported in the notice bar, never raised."""
        self._retire_camera()
        self._camera_source = source
        self.camera = CameraWorker(source, opener)
        self.camera_familiarity.reset()
        self._hinted_unfamiliar = False
        self.camera.opened.connect(self._on_camera_opened)
        self.camera.frame_ready.connect(self._on_camera_frame_ready)
        self.camera.failed.connect(self._on_camera_failed)
        self._frozen = False
        self._last_frame = self._live_box = None
        self.status_camera.setText(f"Opening {source.title}…")
        self.stop_camera_action.setEnabled(True)
        self.camera.start()
        self._follow_camera_setting()
        self._update_model_actions()
        return self.camera

    def stop_camera(self) -> None:
        if self.camera is None:
            return
        self._retire_camera()
        self.status_camera.setText("")
        self._after_camera_gone()

    def _retire_camera(self) -> None:
        """Stop the running camera without waiting: it ends by itself within a frame."""
        if self.camera is None:
            return
        old, self.camera = self.camera, None
        for signal in (old.opened, old.frame_ready, old.failed):
            signal.disconnect()
        old.stop()
        old.finished.connect(self._on_retired_camera_finished)
        self._retired_cameras.append(old)
        self.inference.drop_frame()
        if self._adapting is not None:
            self._adapting.camera_gone()
        self._update_model_actions()

    def _on_retired_camera_finished(self) -> None:
        self._retired_cameras = [c for c in self._retired_cameras if not c.isFinished()]

    def _after_camera_gone(self) -> None:
        self.capture_action.setEnabled(False)
        self.stop_camera_action.setEnabled(False)
        self.capture_button.hide()
        self._frozen = False
        if self.current is not None:
            self._show_result(self.current)
        else:
            self.view.set_image(None)
            self.result_panel.clear()

    def _on_camera_opened(self, fps: float) -> None:
        if self.sender() is not self.camera:
            return
        self.notice.dismiss("camera")
        self.capture_action.setEnabled(True)
        self.capture_button.setText("Capture (Space)")
        self.capture_button.show()
        self.status_camera.setText(f"{self.camera.source.title}: starting")

    def _on_camera_frame_ready(self) -> None:
        camera = self.camera
        if camera is None or self.sender() is not camera:
            return
        taken = camera.take_frame()
        if taken is None:
            return
        frame, image = taken
        self._last_frame = frame
        if self._adapting is not None:
            self._adapting.offer_frame(frame)
        if self._frozen:
            return
        self._frames += 1
        self.view.set_image(
            image,
            box=self._live_box,
            source_size=(frame.shape[1], frame.shape[0]),
            caption=f"{camera.source.title} · live",
        )
        if self._adapting is not None and self._adapting.phase == "adapting":
            return  # live answers pause: adapting needs both cores (and the user is waiting)
        if self.classifier is not None:
            self.inference.offer_frame(frame, self.isolate_action.isChecked())

    def _on_camera_failed(self, message: str) -> None:
        if self.sender() is not self.camera:
            return
        source = self._camera_source
        self._retire_camera()
        self.status_camera.setText("Camera: none")
        retry = QAction(f"Try {source.title} again", self)
        retry.triggered.connect(self._on_retry_camera)
        self.notify(message, "warning", retry, topic="camera")
        self._after_camera_gone()

    def _on_retry_camera(self) -> None:
        if self._camera_source is not None:
            self.start_camera(self._camera_source)

    def _on_capture(self) -> None:
        if self.camera is None:
            self.notify(
                "No camera is running: choose one from the Camera menu. Photos work without "
                "one: drop them here or press Ctrl+O.",
                "info",
            )
            return
        if self._frozen:
            self._frozen = False
            self.capture_button.setText("Capture (Space)")
            return
        if self._last_frame is None or not self._can_classify():
            return
        self._freeze_live()
        self._submit(
            Job(
                f"Camera {time.strftime('%H:%M:%S')}",
                self._last_frame.copy(),
                isolate=self.isolate_action.isChecked(),
                channels="BGR",
            )
        )

    def _freeze_live(self) -> None:
        """Hold the preview still so a photo or captured frame stays on show (Space resumes)."""
        if self.camera is not None and not self._frozen:
            self._frozen = True
            self.inference.drop_frame()
            self.capture_button.setText("Resume live (Space)")

    def _on_rate_tick(self) -> None:
        if self.camera is not None and not self._frozen and self._frames:
            self.status_camera.setText(
                f"{self.camera.source.title}: {self._frames} fps · "
                f"{self._predictions} predictions/s"
            )
        elif self.camera is not None and self._frozen:
            self.status_camera.setText(f"{self.camera.source.title}: paused")
        self.camera_rates = (self._frames, self._predictions)
        self._frames = self._predictions = 0

    # -- messages, help, closing ------------------------------------------------------------------

    def notify(
        self, text: str, level: str = "info", action: QAction | None = None, topic: str = ""
    ) -> None:
        """Say something without stopping the user: a bar above the picture, and the status bar."""
        self.notice.show_message(text, level, action, topic)
        self.statusBar().showMessage(text, 6000)

    def _on_show_shortcuts(self) -> None:
        rows = "".join(
            f"<tr><td><b>{keys}</b>&nbsp;&nbsp;</td><td>{what}</td></tr>"
            for keys, what in SHORTCUTS
        )
        box = QMessageBox(
            QMessageBox.Icon.NoIcon,
            "Keyboard shortcuts",
            f"<table>{rows}</table>",
            QMessageBox.StandardButton.Close,
            self,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setModal(False)
        box.show()

    def shutdown(self) -> None:
        """Stop every worker and wait for it (cooperatively: nothing is terminated)."""
        self._rate_timer.stop()
        if self._retrain is not None:
            self._retrain.stop_and_close()
        if self._adapting is not None:
            self._adapting.stop_and_close()
        self._retire_camera()
        for camera in self._retired_cameras:
            camera.wait()
        self._retired_cameras.clear()
        self.inference.stop()
        self.inference.wait()
        QThreadPool.globalInstance().waitForDone()

    def closeEvent(self, event) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.sync()
        self.shutdown()
        super().closeEvent(event)
