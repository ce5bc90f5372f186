"""Dialogs: retrain from the menu, adapt to a camera, and the model card. All are non-modal: the
window goes on."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .adapting import MIN_FRAMES, AdaptWorker, FrameCollector, adapted_model_path
from .training import TrainWorker


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RetrainDialog(QDialog):
    """Choose data, mode and epochs; train in a worker with progress, ETA and Cancel.

    Signals:
        use_model(str): the user wants the new checkpoint (its path) used from now on.
        folders_changed(list): the base folders chosen, for the window to remember.
    """

    use_model = Signal(str)
    folders_changed = Signal(list)

    def __init__(
        self,
        *,
        model_path: str,
        arch: str,
        corrections: dict[str, int],
        corrections_dir: Path,
        folders: list[str],
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle("Retrain the model")
        self.setMinimumWidth(560)
        self.model_path, self.arch, self.corrections_dir = model_path, arch, corrections_dir
        self.worker: TrainWorker | None = None
        self.result = None
        self._close_when_stopped = False

        layout = QVBoxLayout(self)
        data = QGroupBox("Data")
        data_layout = QVBoxLayout(data)
        total = self._corrections_total = sum(corrections.values())
        self.use_corrections = QCheckBox(
            f"My corrections ({total} photo{'s' if total != 1 else ''} in {len(corrections)} "
            f"class{'es' if len(corrections) != 1 else ''})"
        )
        self.use_corrections.setChecked(total > 0)
        self.use_corrections.setEnabled(total > 0)
        data_layout.addWidget(self.use_corrections)
        data_layout.addWidget(QLabel("Together with these folders (one sub-folder per class):"))
        self.folders = QListWidget()
        self.folders.setMaximumHeight(90)
        self.folders.addItems([f for f in folders if Path(f).is_dir()])
        data_layout.addWidget(self.folders)
        folder_buttons = QHBoxLayout()
        self.add_folder_button = QPushButton("Add folder…")
        self.remove_folder_button = QPushButton("Remove")
        self.add_folder_button.clicked.connect(self._on_add_folder)
        self.remove_folder_button.clicked.connect(self._on_remove_folder)
        folder_buttons.addWidget(self.add_folder_button)
        folder_buttons.addWidget(self.remove_folder_button)
        folder_buttons.addStretch(1)
        data_layout.addLayout(folder_buttons)
        layout.addWidget(data)

        training = QGroupBox("Training")
        form = QFormLayout(training)
        self.head_mode = QRadioButton(
            "Head only: reuse the current model's features (minutes on a laptop)"
        )
        self.full_mode = QRadioButton("Full fine-tune: every layer (slow without a GPU)")
        self.head_mode.setChecked(True)
        modes = QButtonGroup(self)
        modes.addButton(self.head_mode)
        modes.addButton(self.full_mode)
        self.head_mode.toggled.connect(self._on_mode_toggled)
        mode_box = QVBoxLayout()
        mode_box.addWidget(self.head_mode)
        mode_box.addWidget(self.full_mode)
        form.addRow("Mode", mode_box)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 200)
        self.epochs.setValue(10)
        form.addRow("Epochs", self.epochs)
        layout.addWidget(training)

        self.stage = QLabel("Ready.")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.eta = QLabel("")
        self.eta.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setFixedHeight(110)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setOpenExternalLinks(False)
        self.summary.linkActivated.connect(self._on_link_activated)
        status = QHBoxLayout()
        status.addWidget(self.stage, 1)
        status.addWidget(self.eta)
        layout.addLayout(status)
        layout.addWidget(self.progress)
        layout.addWidget(self.log)
        layout.addWidget(self.summary)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.cancel_button = QPushButton("Cancel training")
        self.use_button = QPushButton("Use this model")
        self.close_button = QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self._on_use_clicked)
        self.close_button.clicked.connect(self.close)
        for button in (self.start_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)
        self._set_running(False)
        self.use_button.hide()

    # -- what the user chose ----------------------------------------------------------------

    def data_folders(self) -> list[str]:
        folders = [self.folders.item(i).text() for i in range(self.folders.count())]
        if self.use_corrections.isChecked():
            folders.append(str(self.corrections_dir))
        return folders

    def config(self):
        """The run as a ``TrainConfig``: the same dataclass the CLI fills."""
        from garbage_sorter.training.config import TrainConfig

        return TrainConfig(
            data=self.data_folders(),
            mode="head" if self.head_mode.isChecked() else "full",
            arch=self.arch,
            weights=self.model_path,  # reuse the current model's backbone
            epochs=self.epochs.value(),
            workers=0,  # no worker processes forked from a GUI process
        )

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.worker is not None:
            return
        config = self.config()
        if not config.data:
            self.stage.setText("Choose some data first: your corrections, a folder, or both.")
            return
        self.result = None
        self.summary.setText("")
        self.use_button.hide()
        self.log.clear()
        self.progress.setValue(0)
        self.stage.setText("Starting…")
        self.folders_changed.emit(
            [self.folders.item(i).text() for i in range(self.folders.count())]
        )
        self.worker = TrainWorker(config, self)
        self.worker.progress.connect(self._on_progress)
        self.worker.succeeded.connect(self._on_succeeded)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.failed.connect(self._on_failed)
        self.worker.finished.connect(self._on_worker_finished)
        self._set_running(True)
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None and not self.worker.is_cancelling():
            self.worker.cancel()
            self.stage.setText("Stopping at the next batch…")
            self.cancel_button.setEnabled(False)

    def stop_and_close(self) -> None:
        """For the app closing: cancel a run, wait for it to end, close the dialog."""
        if self.worker is not None:
            self.worker.close()  # cancel; stopped hard only if it does not stop in time
            self.worker.wait()
            self.worker = None
        self.close()

    def _set_running(self, running: bool) -> None:
        for widget in (
            self.start_button,
            self.use_corrections,
            self.folders,
            self.add_folder_button,
            self.remove_folder_button,
            self.head_mode,
            self.full_mode,
        ):
            widget.setEnabled(not running)
        self.use_corrections.setEnabled(not running and self._corrections_total > 0)
        self._on_mode_toggled(self.head_mode.isChecked())
        self.epochs.setEnabled(not running and self.full_mode.isChecked())
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, p) -> None:
        if p.stage == "log":
            self.log.appendPlainText(p.message)
            return
        if p.message:
            self.stage.setText(p.message[:1].upper() + p.message[1:])
        if p.stage == "train" and p.steps and p.epochs:
            self.progress.setValue(
                round(1000 * (p.epoch * p.steps + p.step) / (p.epochs * p.steps))
            )
        elif p.stage == "features" and p.steps:
            self.progress.setValue(round(1000 * p.step / p.steps))
        elif p.stage == "done":
            self.progress.setValue(1000)
        self.eta.setText(f"about {format_duration(p.eta_seconds)} left" if p.eta_seconds else "")

    def _on_succeeded(self, result) -> None:
        self.result = result
        test = result.metrics.get("test", {})
        lines = [
            f"<b>Finished.</b> Test accuracy <b>{test.get('acc', float('nan')):.1%}</b> "
            f"on {test.get('n', 0)} held-out photos"
        ]
        val = result.metrics.get("val", {})
        if "acc" in val:
            lines.append(f"validation accuracy {val['acc']:.1%}")
        recall = test.get("all", {}).get("recall", {})
        if recall:
            worst = min(recall, key=recall.get)
            lines.append(f"weakest class: {worst} ({recall[worst]:.0%} found)")
        lines.append(
            f'<a href="{QUrl.fromLocalFile(str(result.out)).toString()}">Open the run folder</a>'
        )
        self.summary.setText("<br>".join(lines))
        self.stage.setText("Done. The current model stays in use until you choose the new one.")
        self.eta.setText("")
        self.use_button.show()
        self.use_button.setDefault(True)

    def _on_cancelled(self) -> None:
        self.stage.setText("Cancelled. The current model is still in use, unchanged on disk.")
        self.eta.setText("")

    def _on_failed(self, message: str) -> None:
        self.stage.setText("Training failed; the current model is still in use.")
        self.eta.setText("")
        self.summary.setText(f'<span style="color:#b71c1c">{html.escape(message)}</span>')

    def _on_worker_finished(self) -> None:
        if self.sender() is not self.worker:
            return  # already handled by stop_and_close
        self.worker.deleteLater()
        self.worker = None
        self._set_running(False)
        if self._close_when_stopped:
            self.close()

    def _on_use_clicked(self) -> None:
        if self.result is not None:
            self.use_model.emit(str(self.result.best))
            self.close()

    def _on_mode_toggled(self, head: bool) -> None:
        self.epochs.setEnabled(not head and self.worker is None)
        self.epochs.setToolTip(
            "Head mode fits the last layer in one go; epochs apply to full mode." if head else ""
        )

    def _on_add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder with one sub-folder per class")
        if folder and folder not in self.data_folders():
            self.folders.addItem(folder)

    def _on_remove_folder(self) -> None:
        for item in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(item))

    def _on_link_activated(self, link: str) -> None:
        QDesktopServices.openUrl(QUrl(link))

    def closeEvent(self, event) -> None:
        # Closing asks the run to stop and waits for it (in the event loop, not by blocking).
        if self.worker is not None:
            self._close_when_stopped = True
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)

    def reject(self) -> None:
        self.close()


class AdaptDialog(QDialog):
    """Adapt the model to the running camera: show items for a while, then adapt in a worker.

    The window hands every camera frame to :meth:`offer_frame`; distinct ones are kept
    (:class:`FrameCollector`) for ``seconds``, then an :class:`AdaptWorker` adapts ``base`` to
    them. ``retrain=True`` skips the collection: the setting's kept frames and its corrections
    are adapted on again. Cancel at any point leaves the setting and the app as they were.

    Signals:
        adapted(str, dict): the setting's new model (its path) and the adaptation record.
    """

    adapted = Signal(str, dict)

    def __init__(
        self,
        *,
        setting: str,
        title: str,
        base: str | None,
        seconds: float = 30.0,
        retrain: bool = False,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setting, self.base, self.seconds, self.retrain = setting, base, seconds, retrain
        self.title = title
        self.setWindowTitle(f"Retrain for {title}" if retrain else f"Adapt to {title}")
        self.setMinimumWidth(520)
        self.collector = FrameCollector()
        self.worker: AdaptWorker | None = None
        self.phase = "ready"  # ready -> collecting -> adapting -> done | failed
        self._started = 0.0
        self._close_when_stopped = False

        layout = QVBoxLayout(self)
        self.heading = QLabel()
        self.heading.setObjectName("SectionTitle")
        self.instructions = QLabel()
        self.instructions.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.counts = QLabel("")
        self.stage = QLabel("")
        self.stage.setWordWrap(True)
        for widget in (self.heading, self.instructions, self.progress, self.counts, self.stage):
            layout.addWidget(widget)
        buttons = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel")
        self.again_button = QPushButton("Try again")
        self.close_button = QPushButton("Close")
        self.cancel_button.clicked.connect(self.cancel)
        self.again_button.clicked.connect(self.start)
        self.close_button.clicked.connect(self.close)
        buttons.addStretch(1)
        for button in (self.again_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self._timer = QTimer(self, interval=200)
        self._timer.timeout.connect(self._on_tick)
        self._show_buttons()

    # -- steps ------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin: collect frames (or, to retrain, adapt on the kept ones at once)."""
        self.progress.setValue(0)
        self.counts.setText("")
        if self.retrain:
            self.heading.setText("Learning from your corrections")
            self.instructions.setText(
                "Adapting again to this camera's kept frames, with the photos you corrected "
                "as examples of each class."
            )
            self._start_worker(None)
            self.adjustSize()
            return
        self.collector = FrameCollector()
        self.phase = "collecting"
        self._started = time.monotonic()
        self.heading.setText("Step 1 of 2: show the camera several different items")
        self.instructions.setText(
            f"For about {self.seconds:.0f} seconds, hold items in front of the camera one after "
            "another, where you normally would, and turn them a little. Different items and "
            "views teach the model this camera's light and background; it needs no labels."
        )
        self.stage.setText("Watching…")
        self._timer.start()
        self._show_buttons()
        self.adjustSize()  # the dialog is already shown: fit the new text

    def offer_frame(self, frame) -> None:
        """A camera frame (BGR array), kept if different enough from the last kept one."""
        if self.phase != "collecting":
            return
        self.collector.add(frame)
        self._show_counts()
        if self.collector.full:
            self._finish_collecting()

    def camera_gone(self) -> None:
        """The camera stopped or was switched: a collection cannot go on."""
        if self.phase == "collecting":
            self._fail(
                "The camera stopped, so no more frames came. Start it again from the Camera "
                "menu, then try again."
            )

    def _on_tick(self) -> None:
        elapsed = time.monotonic() - self._started
        self.progress.setValue(min(1000, round(1000 * elapsed / max(self.seconds, 1e-3))))
        if elapsed >= self.seconds:
            self._finish_collecting()

    def _show_counts(self) -> None:
        kept, seen = len(self.collector.frames), self.collector.seen
        self.counts.setText(
            f"<b>{kept}</b> different view{'s' if kept != 1 else ''} kept "
            f"(of {seen} frame{'s' if seen != 1 else ''}; near-repeats are skipped)"
        )

    def _finish_collecting(self) -> None:
        self._timer.stop()
        frames = self.collector.frames
        if len(frames) < MIN_FRAMES:
            self._fail(
                f"Only {len(frames)} different view{'s' if len(frames) != 1 else ''} in "
                f"{self.seconds:.0f} s; adapting needs at "
                f"least {MIN_FRAMES}. Show more items, one after another, and try again."
            )
            return
        self.heading.setText("Step 2 of 2: adapting the model to this camera")
        self.instructions.setText(
            f"Learning this camera's look from {len(frames)} views. The current model stays in "
            "use until this is done."
        )
        self._start_worker(frames)
        self.adjustSize()

    def _start_worker(self, frames) -> None:
        self.phase = "adapting"
        self.progress.setValue(0)
        self.stage.setText("Starting…")
        self.worker = AdaptWorker(self.setting, self.base, frames, self)
        self.collector = FrameCollector()  # the worker has the frames now
        self.worker.progress.connect(self._on_progress)
        self.worker.succeeded.connect(self._on_succeeded)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.failed.connect(self._on_failed)
        self.worker.finished.connect(self._on_worker_finished)
        self._show_buttons()
        self.worker.start()

    # Where each of the core's steps sits on the bar (per mille): reading, measuring, the rest.
    _STEPS = {"saving": (0, 100), "reading": (100, 400), "measuring": (400, 900)}

    def _on_progress(self, message: str) -> None:
        if self.phase != "adapting":
            return
        self.stage.setText(message[:1].upper() + message[1:] + "…")
        step = self._STEPS.get(message.split(" ", 1)[0])
        done = re.search(r"(\d+)/(\d+)", message)
        if step and done and int(done.group(2)):
            low, high = step
            self.progress.setValue(low + (high - low) * int(done.group(1)) // int(done.group(2)))
        elif not step:
            self.progress.setValue(max(self.progress.value(), 950))

    def _on_succeeded(self, record: dict) -> None:
        self.phase = "done"
        self.progress.setValue(1000)
        self.stage.setText("Done.")
        self.adapted.emit(str(adapted_model_path(self.setting)), record)
        self._close_when_stopped = True  # closes once the worker's thread has ended
        self._show_buttons()

    def _on_cancelled(self) -> None:
        self.stage.setText("Cancelled. Nothing was changed.")

    def _on_failed(self, message: str) -> None:
        self._fail(message)

    def _fail(self, message: str) -> None:
        self._timer.stop()
        self.phase = "failed"
        self.collector = FrameCollector()
        self.stage.setText(f'<span style="color:#b71c1c">{html.escape(message)}</span>')
        self._show_buttons()

    def _on_worker_finished(self) -> None:
        if self.sender() is not self.worker:
            return
        self.worker.deleteLater()
        self.worker = None
        if self.phase == "adapting":  # cancelled
            self.phase = "ready"
        self._show_buttons()
        if self._close_when_stopped:
            self.close()

    def _show_buttons(self) -> None:
        running = self.phase in ("collecting", "adapting")
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running and not self._close_when_stopped)
        self.again_button.setVisible(self.phase == "failed")
        self.close_button.setVisible(not running)

    # -- stopping ---------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop collecting or adapting and close; nothing is kept."""
        self._timer.stop()
        self.collector = FrameCollector()
        if self.worker is not None:
            self.worker.cancel()
            self.stage.setText("Stopping at the next step…")
        elif self.phase == "collecting":
            self.phase = "ready"
        self.close()

    def stop_and_close(self) -> None:
        """For the app closing: cancel a run, wait for it to end, close the dialog."""
        if self.worker is not None:
            self.worker.cancel()
            self.worker.wait()
            self.worker = None
        self._timer.stop()
        self.phase = "ready"
        self.close()

    def closeEvent(self, event) -> None:
        # Closing cancels the run and waits for it in the event loop, not by blocking.
        if self.worker is not None:
            self._close_when_stopped = True
            self.worker.cancel()
            self._show_buttons()
            event.ignore()
            return
        self._timer.stop()
        if self.phase == "collecting":
            self.phase = "ready"
        super().closeEvent(event)

    def reject(self) -> None:
        # Esc or the title bar's close: a run is cancelled first (QDialog would only hide).
        if self.worker is not None or self.phase == "collecting":
            self.cancel()
        else:
            super().reject()


class ModelCardDialog(QDialog):
    """What the loaded model is: architecture, classes, accuracy, when it was made, where it lies."""

    def __init__(self, card: dict[str, Any], device: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Model card")
        self.setMinimumWidth(460)
        form = QFormLayout(self)
        test = card.get("metrics", {}).get("test", {})
        accuracy = (
            f"{test['acc']:.1%} on {test.get('n', '?')} test photos"
            if "acc" in test
            else "not measured"
        )
        calibration = card.get("calibration", {})
        rows = [
            ("File", card.get("path") or "bundled"),
            ("Architecture", card.get("arch", "?")),
            ("Classes", ", ".join(card.get("classes", []))),
            ("Test accuracy", accuracy),
            ("Abstains below", f"{calibration.get('threshold', 0):.0%} confidence"),
            ("Created", (card.get("created") or "unknown").replace("T", " ")[:19]),
            ("Running on", device),
        ]
        self.values = {}
        for name, value in rows:
            label = QLabel(str(value))
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(f"<b>{name}</b>", label)
            self.values[name] = label.text()
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        form.addRow(close)
