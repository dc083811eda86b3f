"""The main window: image list (left), canvas (centre), class / tool / model / CRF panels (right), menus.

It wires widgets to the :class:`~deeplab_gui.session.Session` and owns the keyboard shortcuts; it holds
no state of its own beyond layout.  The model, CRF and export panels come from another part of the app
and are imported lazily, so the window still works (with a logged warning) without them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QWidget,
)

from ..state.session import VIEW_MODES, Session
from .activity import EffortLabel, install_activity_filter
from .canvas.canvas import Canvas
from .canvas.tools import TOOL_KEYS, make_tools
from .dialogs import unsaved_dialog
from .dialogs.class_picker import open_class_picker
from .dialogs.help import add_help_menu
from .input_guard import install_input_guard
from .panels.class_panel import ClassPanel, CursorReadout
from .panels.image_list import ImageListPanel
from .panels.tool_options import VIEW_TITLES, ToolOptions
from .save_feedback import save_and_report
from .toolbar import add_tool_bar

__all__ = ["MainWindow"]

log = logging.getLogger("deeplab_gui")
_TOOL_TITLES = {"brush": "Brush", "eraser": "Eraser (Shift: to background)", "polygon": "Polygon",
                "fill": "Flood fill", "picker": "Label picker", "snap": "CRF-snap brush",
                "superpixel": "Superpixels ([ ] granularity)", "crfclick": "CRF click (Enter accepts)",
                "click": "Click model (right click: exclude, drag: box, Tab, Enter)"}


class _VerticalScroll(QScrollArea):
    """Scrolls vertically only: as wide as its widget needs, as tall as it likes when there is room."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802  (Qt's name)
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        # The panel's layout changed (the no-weights banner appeared, say): the dock must ask again.
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
            # No taller than the panel: height it cannot use goes to the class list, not a blank band.
            self.setMaximumHeight(self.sizeHint().height() + 2 * self.frameWidth())
        return super().eventFilter(obj, event)

    def _with_bar(self, size: QSize) -> QSize:
        return QSize(size.width() + self.verticalScrollBar().sizeHint().width() + 2, size.height())

    def sizeHint(self) -> QSize:  # noqa: N802  (Qt's name)
        w = self.widget()
        return self._with_bar(w.sizeHint()) if w is not None else super().sizeHint()

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        w = self.widget()
        if w is None:
            return super().minimumSizeHint()
        return QSize(self._with_bar(w.minimumSizeHint()).width(), super().minimumSizeHint().height())


class MainWindow(QMainWindow):
    def __init__(self, session: Session | None = None) -> None:
        super().__init__()
        self.session = session or Session(parent=self)
        s = self.session
        self.canvas = Canvas(s, self)
        self.setCentralWidget(self.canvas)
        self.tools = make_tools()
        self.image_list = ImageListPanel(s)
        self.class_panel = ClassPanel(s)
        self.tool_options = ToolOptions(s)
        self.panels: dict[str, QWidget] = {}
        self.messages: list[tuple[str, str]] = []   # (level, text), newest last: for tests and the log
        self._box: QMessageBox | None = None
        self._settling = False  # the unsaved-changes question is open
        s.confirm_replace = lambda: self.confirm_unsaved("opening another folder")
        self._dock("Images", self.image_list, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._dock("Classes", self.class_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self._load_panels()
        self._build_menus()
        self.tool_bar = add_tool_bar(self)  # tool icons: the Tools menu's actions, so they stay in step
        self.view_menu.addAction(self.tool_bar.toggleViewAction())  # a hidden bar can come back
        install_input_guard(self, home=self.canvas)  # panels: no wheel edits, keys back to the canvas
        install_activity_filter(self, s.effort)  # input in this window keeps the effort meter's clock going
        self.tool_options.size.valueChanged.connect(self._on_size)
        self.set_tool("brush")
        s.message.connect(self.show_message)
        for sig in (s.current_changed, s.saved, s.folder_opened, s.mask_changed):
            sig.connect(lambda *_: self.update_title())
        s.busy.connect(lambda text: self.statusBar().showMessage(text, 3000) if text else None)
        self.canvas.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f}%"))
        self.zoom_label = QLabel()
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.cursor_readout = CursorReadout(s)  # "under cursor: 15 person"
        self.canvas.hovered.connect(self.cursor_readout.show_pixel)
        self.statusBar().addPermanentWidget(self.cursor_readout)
        self.effort_label = EffortLabel(s.effort)  # "⏱ 1:42 · 17 actions" on the current image
        self.statusBar().addPermanentWidget(self.effort_label)
        self.resize(1280, 800)
        geo, state = s.settings.window_state()
        if geo is not None:
            self.restoreGeometry(geo)
        if state is not None:
            self.restoreState(state)
        self.update_title()

    # ------------------------------------------------------------ layout
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea, scroll: bool = False) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.replace(" ", "_"))  # saveState() needs object names
        if scroll:
            # The right-hand docks together are taller than a 768-pixel laptop screen; without a scroll
            # area their minimum heights would push the window off the screen.
            area_widget = _VerticalScroll()
            area_widget.setWidgetResizable(True)
            area_widget.setFrameShape(QFrame.Shape.NoFrame)
            area_widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            area_widget.setWidget(widget)
            dock.setWidget(area_widget)
        else:
            dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _load_panels(self) -> None:
        """Model and CRF panels as docks on the right."""
        # Plain imports (not importlib): PyInstaller follows them into the bundle.
        from .panels.crf_panel import CRFPanel
        from .panels.model_panel import ModelPanel

        for name, cls in (("Model", ModelPanel), ("CRF", CRFPanel)):
            panel = cls(self.session)
            self.panels[name] = panel
            self._dock(name, panel, Qt.DockWidgetArea.RightDockWidgetArea, scroll=True)

    def _action(self, menu, text: str, slot, shortcut=None, checkable: bool = False) -> QAction:
        act = QAction(text, self)
        if shortcut:
            shortcuts = shortcut if isinstance(shortcut, list) else [shortcut]
            act.setShortcuts([QKeySequence(k) for k in shortcuts])
        act.setCheckable(checkable)
        act.triggered.connect(slot)
        if menu is not None:
            menu.addAction(act)
        self.addAction(act)  # window-wide shortcut even when its menu is hidden
        return act

    def _build_menus(self) -> None:
        s, mb = self.session, self.menuBar()
        f = mb.addMenu("&File")
        self._action(f, "&Open folder...", self.ask_open_folder, QKeySequence.StandardKey.Open)
        self.recent_menu = f.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self._action(f, "Rescan &folder (new images)", s.rescan, "F5")
        self._action(f, "&Save", lambda: save_and_report(self), "Ctrl+S")  # says what it did
        self.export_action = self._action(f, "&Export VOC...", self.open_export)
        self._action(f, "&Import labels...", lambda: self.open_labels_dialog("import"))
        self._action(f, "Export &labels (COCO, labelme, mask folders, ...)...",
                     lambda: self.open_labels_dialog("export"))
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo", self.undo, "Ctrl+Z")
        self.redo_action = self._action(e, "&Redo", self.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        # Greyed out while there is nothing to undo or redo (the session says when that changes).
        s.history.availability.connect(lambda u, r: [a.setEnabled(on) for a, on in ((self.undo_action, u),
                                                                                 (self.redo_action, r))])
        self.undo_action.setEnabled(s.history.can_undo)
        self.redo_action.setEnabled(s.history.can_redo)
        v = self.view_menu = mb.addMenu("&View")
        self._action(v, "&Fit", self.canvas.fit, "Ctrl+0")
        self._action(v, "&Actual size (1:1)", self.canvas.actual_size, "Ctrl+1")
        self._action(v, "Zoom &in", lambda: self.canvas.set_zoom(self.canvas.zoom * 1.25), "Ctrl++")
        self._action(v, "Zoom &out", lambda: self.canvas.set_zoom(self.canvas.zoom / 1.25), "Ctrl+-")
        self.outline_action = self._action(v, "&Outline only", s.set_outline, "O", checkable=True)
        self.unconfirmed_action = self._action(v, "&Dim unconfirmed pixels", s.set_show_unconfirmed,
                                               checkable=True)
        v.addSeparator()
        for i, m in enumerate(VIEW_MODES):
            self._action(v, VIEW_TITLES[m], lambda _=False, m=m: s.set_view_mode(m), f"Alt+{i + 1}")
        v.addSeparator()
        self.progress_action = self._action(v, "&Progress…", self.open_progress)
        im = mb.addMenu("&Image")
        self._action(im, "&Previous", s.prev_image, "A")
        self._action(im, "&Next", s.next_image, "D")
        self._action(im, "Mark &reviewed", s.review.mark_reviewed, "Ctrl+R")  # accepted, as the meter counts
        self.accept_action = self._action(im, "&Accept and next", s.review.accept_and_next, ["Ctrl+Return", "Ctrl+Enter"])
        m = self.image_list.model  # accept and next follows the list's order, its filter applied
        s.review.visible = lambda: [m.image_id(r) for r in range(m.rowCount())]
        self._action(im, "Next most &uncertain", s.review.next_most_uncertain, "U")
        mm = mb.addMenu("&Model")
        self.finetune_action = self._action(mm, "&Fine-tune on my labels...", self.open_finetune)
        t = mb.addMenu("&Tools")
        group = QActionGroup(self)
        self.tool_actions = {}
        for name, key in TOOL_KEYS.items():
            act = self._action(t, _TOOL_TITLES[name], lambda _=False, n=name: self.set_tool(n), key, checkable=True)
            group.addAction(act)
            self.tool_actions[name] = act
        t.addSeparator()
        self._action(t, "Smaller brush", lambda: self.change_size(1 / 1.25), "[")
        self._action(t, "Larger brush", lambda: self.change_size(1.25), "]")
        self._action(t, "Choose &class by name or number...", lambda: open_class_picker(s, self), "/")
        for k in range(10):  # 1-9 classes 1-9, 0 background
            self._action(None, f"Class {k}", lambda _=False, k=k: setattr(s, "current_label", k), str(k))
        for dock in self.findChildren(QDockWidget):
            v.addAction(dock.toggleViewAction())
        add_help_menu(self)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in self.session.settings.recent_folders():
            self.recent_menu.addAction(folder, lambda f=folder: self.session.open_folder(f))

    # ------------------------------------------------------------ commands
    def ask_open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open image folder", str(self.session.folder or Path.home()))
        if folder:
            self.session.open_folder(folder)

    def open_export(self) -> None:
        from .dialogs.export_dialog import ExportDialog

        if self.session.store is None:
            self.show_message("info", "open a folder first")
            return
        ExportDialog(self.session, self).open()

    def open_labels_dialog(self, mode: str):
        """The import or export dialog for every label format; None (and a message) without a folder."""
        from .dialogs.formats_dialog import LabelsDialog

        if self.session.store is None:
            self.show_message("info", "open a folder first")
            return None
        dialog = LabelsDialog(self.session, mode, self)
        dialog.open()
        return dialog

    def open_progress(self):
        """The progress window (time and actions per image, before and after each fine-tune); None,
        saying why, without a folder."""
        from .dialogs.progress import ProgressDialog

        if self.session.store is None:
            self.show_message("info", "open a folder first")
            return None
        dialog = ProgressDialog(self.session, self)
        dialog.open()
        return dialog

    def open_finetune(self):
        """The model panel's fine-tune dialog, asked for as its button does (with no model the run starts
        a new one); None, with a message saying why, when it cannot be used yet."""
        if not self.session.models.request_finetune():
            return None
        return getattr(self.panels.get("Model"), "finetune_dialog", None)

    def undo(self) -> None:
        self.session.history.undo()  # names the step in the status bar

    def redo(self) -> None:
        self.session.history.redo()

    def set_tool(self, name: str) -> None:
        tool = self.tools[name]
        self.canvas.set_tool(tool)
        self.tool_actions[name].setChecked(True)
        self.tool_options.for_tool(name)
        if tool.sized:
            tool.size = self.session.settings.tool_size(name, tool.size)
            self.tool_options.size.blockSignals(True)
            self.tool_options.size.setValue(tool.size)
            self.tool_options.size.blockSignals(False)
        self.statusBar().showMessage(_TOOL_TITLES[name], 2000)

    def change_size(self, factor: float) -> None:
        tool = self.canvas.tool
        if tool is not None and tool.sized:
            self.tool_options.size.setValue(max(0.5, min(500.0, tool.size * factor)))

    def _on_size(self, value: float) -> None:
        tool = self.canvas.tool
        if tool is not None and tool.sized:
            tool.size = float(value)
            self.session.settings.set_tool_size(tool.name, tool.size)

    # ------------------------------------------------------------ feedback
    def update_title(self) -> None:
        s = self.session
        parts = ["deeplab-gui"]
        if s.folder is not None:
            parts.append(str(s.folder) + (" [read-only]" if s.read_only else ""))
        if s.image_id:
            parts.append(s.image_id + (" *" if s.dirty else ""))
        self.setWindowTitle(" — ".join(parts))

    def show_message(self, level: str, text: str) -> None:
        """Info goes to the status bar; warnings and errors to a (non-blocking) dialog as well."""
        self.messages.append((level, text))
        self.statusBar().showMessage(text, 8000)
        if level not in ("warning", "error"):
            return
        if self._box is not None and self._box.isVisible():
            if text not in self._box.text().split("\n\n"):   # one box, not a pile of them; each line once
                self._box.setText(self._box.text() + "\n\n" + text)
            return
        icon = QMessageBox.Icon.Critical if level == "error" else QMessageBox.Icon.Warning
        self._box = QMessageBox(icon, "deeplab-gui", text, QMessageBox.StandardButton.Ok, self)
        self._box.setWindowModality(Qt.WindowModality.NonModal)
        self._box.show()

    def shutdown_panels(self) -> None:
        """Stop what the panels run on their own threads: the live CRF worker and a pre-label batch.
        (Session.shutdown then cancels and waits for the session's task pool.)"""
        for name, method in (("CRF", "shutdown"), ("Model", "cancel")):
            panel = self.panels.get(name)
            if panel is not None and hasattr(panel, method):
                try:
                    getattr(panel, method)()
                except Exception as exc:  # noqa: BLE001  (quitting must go on whatever a panel does)
                    log.warning("%s panel did not stop cleanly: %s", name, exc)

    def confirm_unsaved(self, action: str) -> bool:
        """True when ``action`` may let go of the folder: nothing unsaved would be lost, or the person
        answered the question about it (see unsaved_dialog.py)."""
        if self._settling:
            return False
        self._settling = True
        try:
            return unsaved_dialog.settle(self, action)
        finally:
            self._settling = False

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.confirm_unsaved("closing the window"):
            event.ignore()
            return
        self.session.settings.set_window_state(self.saveGeometry(), self.saveState())
        self.shutdown_panels()
        self.session.shutdown()
        self.session.settings.sync()
        super().closeEvent(event)
