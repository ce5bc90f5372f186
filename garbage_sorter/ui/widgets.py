"""The window's building blocks: image view, result panel, history list, notice bar.

They render what they are given and emit what the user does; none of them computes anything.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

NEUTRAL_BIN = "#9e9e9e"


class ImageView(QWidget):
    """The photo or camera frame, fitted to the space, with the isolation box and mask on top."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumSize(360, 270)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._image: QImage | None = None
        self._mask: QImage | None = None
        self._box: tuple[int, int, int, int] | None = None
        self._source_size: QSize | None = None
        self._caption = ""
        self._highlight = False
        self.placeholder = (
            "Drop photos or folders here",
            "or open files (Ctrl+O), paste (Ctrl+V), or start a camera",
        )

    def set_image(
        self,
        image: QImage | None,
        *,
        box: tuple[int, int, int, int] | None = None,
        source_size: tuple[int, int] | None = None,
        mask: QImage | None = None,
        caption: str = "",
    ) -> None:
        """Show ``image``; ``box`` is in the pixels of the original (``source_size``) image."""
        self._image, self._mask, self._box, self._caption = image, mask, box, caption
        self._source_size = QSize(*source_size) if source_size else None
        self.update()

    def image(self) -> QImage | None:
        return self._image

    def caption(self) -> str:
        return self._caption

    def set_drop_highlight(self, on: bool) -> None:
        self._highlight = on
        self.update()

    def image_rect(self) -> QRectF:
        """Where the image is drawn: fitted, centred, aspect kept."""
        if self._image is None or self._image.isNull():
            return QRectF()
        area = QRectF(self.rect()).adjusted(12, 12, -12, -12)
        size = QSize(self._image.width(), self._image.height()).scaled(
            area.size().toSize(), Qt.AspectRatioMode.KeepAspectRatio
        )
        x = area.x() + (area.width() - size.width()) / 2
        y = area.y() + (area.height() - size.height()) / 2
        return QRectF(x, y, size.width(), size.height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHints(
            QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform
        )
        painter.fillRect(self.rect(), QColor("#24292e"))
        if self._image is None or self._image.isNull():
            self._paint_placeholder(painter)
        else:
            target = self.image_rect()
            painter.drawImage(target, self._image)
            if self._mask is not None:
                painter.drawImage(target, self._mask)
            if self._box is not None:
                self._paint_box(painter, target)
            if self._caption:
                self._paint_caption(painter, target)
        if self._highlight:
            painter.setPen(QPen(QColor("#66bb6a"), 4))
            painter.drawRoundedRect(QRectF(self.rect()).adjusted(3, 3, -3, -3), 10, 10)
        painter.end()

    def _paint_placeholder(self, painter: QPainter) -> None:
        frame = QRectF(self.rect()).adjusted(28, 28, -28, -28)
        pen = QPen(QColor("#5c646c"), 2, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(frame, 16, 16)
        title, hint = self.placeholder
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.6)
        painter.setFont(font)
        painter.setPen(QColor("#d0d7de"))
        centre = frame.center()
        painter.drawText(
            QRectF(frame.left(), centre.y() - 40, frame.width(), 36),
            Qt.AlignmentFlag.AlignCenter,
            title,
        )
        painter.setFont(self.font())
        painter.setPen(QColor("#8b949e"))
        painter.drawText(
            QRectF(frame.left(), centre.y(), frame.width(), 28), Qt.AlignmentFlag.AlignCenter, hint
        )

    def _paint_box(self, painter: QPainter, target: QRectF) -> None:
        size = self._source_size or QSize(self._image.width(), self._image.height())
        sx, sy = target.width() / size.width(), target.height() / size.height()
        left, top, right, bottom = self._box
        rect = QRectF(
            target.x() + left * sx, target.y() + top * sy, (right - left) * sx, (bottom - top) * sy
        )
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(QColor(0, 0, 0, 140), 5))
        painter.drawRoundedRect(rect, 6, 6)
        painter.setPen(QPen(QColor("#ffeb3b"), 2.5))
        painter.drawRoundedRect(rect, 6, 6)

    def _paint_caption(self, painter: QPainter, target: QRectF) -> None:
        metrics = painter.fontMetrics()
        width = metrics.horizontalAdvance(self._caption) + 20
        chip = QRectF(
            target.left() + 10, target.bottom() - metrics.height() - 18, width, metrics.height() + 8
        )
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRoundedRect(chip, 6, 6)
        painter.setPen(QColor("white"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, self._caption)


class Swatch(QWidget):
    """A rounded square in a bin's colour."""

    def __init__(self, parent: QWidget | None = None, side: int = 56):
        super().__init__(parent)
        self._colour = NEUTRAL_BIN
        self._mark = ""
        self.setFixedSize(side, side)

    def set_colour(self, colour: str, mark: str = "") -> None:
        self._colour, self._mark = colour, mark
        self.update()

    def colour(self) -> str:
        """The colour shown, as ``#rrggbb``."""
        return self._colour

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(QColor(0, 0, 0, 50), 1))
        painter.setBrush(QColor(self._colour))
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), 10, 10)
        if self._mark:
            font = QFont(self.font())
            font.setPointSizeF(font.pointSizeF() * 2)
            font.setBold(True)
            painter.setFont(font)
            painter.setPen(QColor("white"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._mark)
        painter.end()


def _label(
    text: str = "",
    *,
    size: float = 1.0,
    bold: bool = False,
    muted: bool = False,
    wrap: bool = False,
) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * size)
    font.setBold(bold)
    label.setFont(font)
    if muted:
        label.setStyleSheet("color: palette(placeholder-text);")
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class ResultPanel(QFrame):
    """The answer: class, confidence, the top three, the bin, and what the user can do about it.

    Signals:
        correction_chosen(str): the user says the right class is this one.
    """

    correction_chosen = Signal(str)

    def __init__(self, why_action: QAction, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("ResultPanel")
        self._why_action = why_action
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 12)
        layout.setSpacing(8)

        self.caption = _label("Waiting for a photo", muted=True)
        self.title = _label("", size=2.2, bold=True)
        self.confidence = QProgressBar()
        self.confidence.setRange(0, 100)
        self.confidence.setFormat("%p% sure")
        self.confidence.setFixedHeight(22)
        layout.addWidget(self.caption)
        layout.addWidget(self.title)
        layout.addWidget(self.confidence)

        self._top = QGridLayout()
        self._top.setHorizontalSpacing(8)
        self._top_rows = []
        for row in range(3):
            name, bar, pct = _label(), QProgressBar(), _label()
            bar.setRange(0, 1000)
            bar.setTextVisible(False)
            bar.setFixedHeight(8)
            pct.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            pct.setMinimumWidth(44)
            self._top.addWidget(name, row, 0)
            self._top.addWidget(bar, row, 1)
            self._top.addWidget(pct, row, 2)
            self._top_rows.append((name, bar, pct))
        self._top.setColumnStretch(1, 1)
        layout.addLayout(self._top)

        self.bin_card = QFrame()
        self.bin_card.setObjectName("BinCard")
        card = QHBoxLayout(self.bin_card)
        card.setContentsMargins(12, 12, 12, 12)
        card.setSpacing(12)
        self.swatch = Swatch()
        card.addWidget(self.swatch, 0, Qt.AlignmentFlag.AlignTop)
        text = QVBoxLayout()
        text.setSpacing(2)
        self.bin_caption = _label("Put it in", muted=True)
        self.bin_name = _label("", size=1.25, bold=True, wrap=True)
        self.bin_note = _label("", wrap=True)
        text.addWidget(self.bin_caption)
        text.addWidget(self.bin_name)
        text.addWidget(self.bin_note)
        card.addLayout(text, 1)
        layout.addWidget(self.bin_card)
        self.region_note = _label("", size=0.9, muted=True, wrap=True)
        layout.addWidget(self.region_note)

        buttons = QHBoxLayout()
        self.why_button = QToolButton()
        self.why_button.setDefaultAction(why_action)
        self.why_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.wrong_button = QToolButton()
        self.wrong_button.setText("Wrong? Choose the right class")
        self.wrong_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.wrong_menu = QMenu(self.wrong_button)
        self.wrong_button.setMenu(self.wrong_menu)
        for button in (self.why_button, self.wrong_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keep Space for Capture
        buttons.addWidget(self.why_button)
        buttons.addWidget(self.wrong_button, 1)
        layout.addLayout(buttons)
        self.clear()

    def set_classes(self, classes: list[str]) -> None:
        """The choices offered under "Wrong?"."""
        self.wrong_menu.clear()
        for name in classes:
            action = self.wrong_menu.addAction(name.capitalize())
            action.setData(name)
            action.triggered.connect(self._on_correction_triggered)

    def _on_correction_triggered(self) -> None:
        self.correction_chosen.emit(self.sender().data())

    def clear(self, message: str = "Waiting for a photo") -> None:
        """No answer on show: the caption says why; no class, no "0% sure", nothing to act on."""
        self.caption.setText(message)
        self.title.setText("")
        self.confidence.setValue(0)
        self._set_answer_visible(False)
        for name, bar, pct in self._top_rows:
            name.setText("")
            bar.setValue(0)
            pct.setText("")
        self.swatch.set_colour(NEUTRAL_BIN)
        self.bin_name.setText("")
        self.bin_note.setText("The bin for the item will show here.")
        self.region_note.setText("")
        self.set_actions_enabled(False)
        self._why_action.setEnabled(False)

    def _set_answer_visible(self, on: bool) -> None:
        for widget in (self.title, self.confidence, *(w for row in self._top_rows for w in row)):
            widget.setVisible(on)

    def set_actions_enabled(self, on: bool, why_hint: str = "") -> None:
        self.wrong_button.setEnabled(on)
        self.wrong_button.setToolTip(
            why_hint or "Save this photo under the right class, to retrain with"
        )

    def show_prediction(self, prediction, region, unsure_message: str, live: bool = False) -> None:
        """Render ``prediction`` with ``region``'s bins (which may differ from the prediction's)."""
        label = prediction.label.capitalize()
        if live:
            self.caption.setText("Live camera")
        else:
            self.caption.setText(
                "Not sure; it might be" if prediction.uncertain else "This looks like"
            )
        if prediction.uncertain:
            self.title.setText(f"{label}?")
        else:
            self.title.setText(label)
        self.confidence.setValue(round(prediction.confidence * 100))
        # A confident softmax on a photo unlike the training ones is not to be trusted: say so
        # on the bar too, not only under it.
        unfamiliar = getattr(prediction, "unfamiliar", False)
        self.confidence.setFormat("%p%, but an unfamiliar photo" if unfamiliar else "%p% sure")
        # ... and in its colour: green only for an answer given as sure, amber for "not sure".
        if self.confidence.property("sure") != (not prediction.uncertain):
            self.confidence.setProperty("sure", not prediction.uncertain)
            self.confidence.style().polish(self.confidence)
        for (name, bar, pct), (cls, p) in zip(self._top_rows, prediction.top(3), strict=False):
            name.setText(cls.capitalize())
            bar.setValue(round(p * 1000))
            pct.setText(f"{p:.0%}")
        self.show_bin(prediction, region, unsure_message)
        self._set_answer_visible(True)
        self._why_action.setEnabled(True)  # on a live frame, "Why?" captures it first

    def show_bin(self, prediction, region, unsure_message: str) -> None:
        if prediction.uncertain:
            self.swatch.set_colour(NEUTRAL_BIN, "?")
            self.bin_caption.setText("Not sure which bin")
            self.bin_name.setText(unsure_message)
            self.bin_note.setText("")
        else:
            bin_ = region.bin_for(prediction.label)
            self.swatch.set_colour(bin_.colour)
            self.bin_caption.setText("Put it in")
            self.bin_name.setText(bin_.name)
            self.bin_note.setText(bin_.note)
        self.region_note.setText(f"{region.title}: {region.note}" if region.note else region.title)


class HistoryList(QListWidget):
    """Recent items, newest first: thumbnail, class and time. Emits ``chosen(job_id)`` on click."""

    chosen = Signal(int)
    LIMIT = 200

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setIconSize(QSize(56, 56))
        self.setUniformItemSizes(True)
        self.setSpacing(2)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keep Space for Capture
        self.itemClicked.connect(self._on_item_clicked)

    def add_result(
        self,
        job_id: int,
        thumbnail: QImage | None,
        title: str,
        detail: str,
        replaces: int | None = None,
    ) -> list[int]:
        """Put an entry on top (or in place of ``replaces``); returns the ids that fell off the end."""
        item = self._item(replaces) if replaces is not None else None
        if item is None:
            item = QListWidgetItem()
            self.insertItem(0, item)
        item.setText(f"{title}\n{detail}")
        item.setData(Qt.ItemDataRole.UserRole, job_id)
        if thumbnail is not None:
            pixmap = QPixmap.fromImage(thumbnail)
            pixmap.setDevicePixelRatio(max(1.0, max(thumbnail.width(), thumbnail.height()) / 56))
            item.setIcon(pixmap)
        self.setCurrentItem(item)
        dropped = []
        while self.count() > self.LIMIT:
            dropped.append(self.takeItem(self.count() - 1).data(Qt.ItemDataRole.UserRole))
        return dropped

    def select_id(self, job_id: int) -> None:
        item = self._item(job_id)
        if item is not None:
            self.setCurrentItem(item)

    def _item(self, job_id: int) -> QListWidgetItem | None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == job_id:
                return self.item(i)
        return None

    def ids(self) -> list[int]:
        return [self.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.count())]

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        self.chosen.emit(item.data(Qt.ItemDataRole.UserRole))


class Notice(QFrame):
    """A non-modal message bar: says what went wrong and, where it helps, offers the fix."""

    STYLES = {
        "info": ("#e3f2fd", "#0d47a1", "ℹ"),
        "warning": ("#fff8e1", "#8d6e00", "⚠"),
        "error": ("#ffebee", "#b71c1c", "✖"),
    }
    INFO_SECONDS = 6

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_button = QToolButton()
        self.action_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.clicked.connect(self.dismiss)
        layout.addWidget(self.icon)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.action_button)
        layout.addWidget(close)
        self.level = ""  # "" while nothing is shown
        self.topic = ""  # what the message is about ("model", "camera"), so its fix can clear it
        self._timer = QTimer(self, singleShot=True, interval=self.INFO_SECONDS * 1000)
        self._timer.timeout.connect(self.dismiss)
        self.hide()

    def dismiss(self, topic: str | None = None) -> None:
        """Hide the message (only if it is about ``topic``, when one is given)."""
        if topic is None or topic == self.topic:
            self.level = self.topic = ""
            self._timer.stop()
            self.hide()

    def show_message(
        self, text: str, level: str = "info", action: QAction | None = None, topic: str = ""
    ) -> None:
        background, foreground, icon = self.STYLES[level]
        self.setStyleSheet(
            f"Notice {{ background: {background}; border: 1px solid {foreground}40;"
            f" border-radius: 8px; }} QLabel {{ color: {foreground}; }}"
        )
        self.icon.setText(icon)
        self.text.setText(text)
        self.level, self.topic = level, topic
        if action is not None:
            self.action_button.setDefaultAction(action)
        self.action_button.setVisible(action is not None)
        self.show()
        if level == "info":
            self._timer.start()
        else:
            self._timer.stop()

    def message(self) -> str:
        return "" if self.isHidden() else self.text.text()
