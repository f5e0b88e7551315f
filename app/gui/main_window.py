"""The main window: library dock, tabs for browsing and searching, status bar with model, device and tasks.

Why this file is long: it is the one place that wires every panel, menu, shortcut and start-up step together
(the behaviour itself lives in the panels, library_actions and photo_actions).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QWidget,
)

from app.gui.drops import Dropped, read_mime
from app.gui.library_actions import LibraryActions, copy_sample_photos
from app.gui.library_service import LibraryService
from app.gui.model_service import DEFAULT_MODEL, ModelService, bundled_model, display_name
from app.gui.photo_actions import PhotoActions
from app.gui.text_actions import TextActions
from app.gui.text_service import TextService
from app.gui.thumbnails import ThumbnailCache
from app.gui.watch_service import WatchService
from app.gui.widgets.browse_tab import BrowseTab
from app.gui.widgets.duplicates_panel import DuplicatesPanel
from app.gui.widgets.labels_panel import LabelsPanel
from app.gui.widgets.lazy_tab import LazyTab
from app.gui.widgets.library_panel import LibraryPanel
from app.gui.widgets.panel import Panel, TaskPanel
from app.gui.widgets.search_panel import SearchPanel
from app.gui.widgets.task_bar import TaskBar
from app.gui.widgets.viewer import Viewer
from app.gui.workers import Task, TaskRunner

log = logging.getLogger(__name__)

MINIMUM_SIZE = (960, 640)  # everything stays readable down to here (checked at 1000×700)


def settings_for_app() -> QSettings:
    from engine import data_home

    return QSettings(str(data_home.home() / "settings.ini"), QSettings.Format.IniFormat)


class MainWindow(PhotoActions, QMainWindow):
    def __init__(self, log_path: Path | None = None, settings: QSettings | None = None,
                 first_start_sample: bool = True, open_library_now: bool = True) -> None:
        super().__init__()
        self._shown = False  # set at the first paint; event() runs from the first Qt call on
        self.first_start_sample = first_start_sample
        self.setWindowTitle("Dinoscope")
        self.resize(1280, 820)
        self.setMinimumSize(*MINIMUM_SIZE)
        self.setAcceptDrops(True)
        self.log_path = log_path
        self.settings = settings or settings_for_app()
        self.runner = TaskRunner(self)
        self.models = ModelService(self.settings, self)
        self.libraries = LibraryService(self.settings, self)
        self.text = TextService(self.settings, self)  # dino.txt: search by words, word heatmaps
        self.text_actions = TextActions(self)
        self.watcher = WatchService(self.settings, self)  # follows the open library's folders (Library menu)
        self.watcher.changed.connect(lambda _batch: self.refresh_library())
        self.watcher.notice.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.watcher.failed.connect(lambda m: self.statusBar().showMessage(m, 15000))
        self.thumbs = ThumbnailCache(self._fetch_thumbnails, parent=self)

        # Left: the library and its folders.
        self.library_panel = LibraryPanel()
        self.library_actions = LibraryActions(self)
        dock = QDockWidget("Library", self)
        dock.setObjectName("library_dock")
        dock.setWidget(self.library_panel)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        dock.setTitleBarWidget(QWidget())  # the panel names itself; the dock's title only repeated it
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
        self.resizeDocks([dock], [250], Qt.Orientation.Horizontal)
        self.library_dock = dock
        self.library_panel.add_folder_requested.connect(self.library_actions.add_folder)
        self.library_panel.library_selected.connect(self.open_library)
        self.library_panel.show_errors_requested.connect(self.show_errors)
        self.library_panel.folder_selected.connect(lambda f: self.browse.set_folder(f))

        self.task_bar = TaskBar()  # before the panels: they hand it their long tasks

        # Centre: tabs.
        self.tabs = QTabWidget()
        self.setCentralWidget(self.tabs)
        self.browse = self._make_browse_tab()
        self.tabs.addTab(self.browse, "Library")
        self.search_panel = SearchPanel(self.models, self.libraries, self.runner, self.thumbs, text=self.text)
        self.search_panel.text_index_needed.connect(self.text_actions.offer_index)
        self.tabs.addTab(self.search_panel, "Search")
        self.viewer = Viewer(self.models, self.runner, text=self.text)
        self.tabs.addTab(self.viewer, "Photo")
        self.labels_panel = LabelsPanel(self.models, self.libraries, self.runner, self.thumbs)
        self.tabs.addTab(self.labels_panel, "Labels")
        self.connect_panel(self.labels_panel)
        self.duplicates_panel = DuplicatesPanel(self.models, self.libraries, self.runner, self.thumbs)
        self.tabs.addTab(self.duplicates_panel, "Duplicates")
        self.connect_panel(self.duplicates_panel)
        self.duplicates_panel.files_moved.connect(lambda _n: self.reindex())
        self.map_tab = LazyTab(self._make_map_panel)
        self.tabs.addTab(self.map_tab, "Map")
        self.training_tab = LazyTab(self._make_training_panel)
        self.tabs.addTab(self.training_tab, "Training")
        self.grid.activated.connect(self._open_from_grid)  # double-click, or Enter on the selected photo
        self.search_panel.open_photo.connect(
            lambda path, paths: self.open_photo(path, _near(paths, path), paths))
        self.last_search: tuple[list, list] = ([], [])  # for the Map tab, which is built on first open
        self.search_panel.results_changed.connect(lambda q, r: setattr(self, "last_search", (q, r)))
        self.connect_panel(self.search_panel)
        self.viewer.status.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.viewer.region_search.connect(self._search_region)
        self.viewer.show_in_folder_requested.connect(self.show_in_folder)
        self.viewer.title_changed.connect(lambda _t: self._update_title())
        self.tabs.currentChanged.connect(lambda _i: self._update_title())
        self._return_tab: QWidget = self.browse  # where Escape in the viewer goes back to
        self._pending_files: list[Path] = []  # "Open with Dinoscope": searched once the library is ready
        self._indexing: Task | None = None
        self._starting = False  # inside _after_first_show
        self._warming: list[Task] = []  # start-up loads (the model, the vector index): the folder watcher waits

        # Bottom: model and device, running task.
        self.model_label = QPushButton()
        self.model_label.setFlat(True)
        self.model_label.clicked.connect(self.show_models)
        self.statusBar().addPermanentWidget(self.task_bar)
        self.statusBar().addPermanentWidget(self.model_label)
        self.models.changed.connect(lambda _s: self._update_model_label())
        self.models.loaded.connect(lambda _s, _d: self._update_model_label())
        self._update_model_label()

        self._make_menu()
        self._make_shortcuts()
        self.libraries.opened.connect(lambda _lib: self.refresh_library())
        self.libraries.opened.connect(lambda _lib: self.watch_library())
        if open_library_now:
            self._open_start_library()

    # ------------------------------------------------------------------------------------------- layout
    def _make_browse_tab(self) -> BrowseTab:
        tab = BrowseTab(self.thumbs)
        self.sort_box, self.grid, self.grid_status = tab.sort_box, tab.grid, tab.grid_status
        self.tag_button, self.copy_button = tab.tag_button, tab.copy_button
        self.sort_box.currentTextChanged.connect(lambda _t: self.refresh_grid())
        self.tag_button.clicked.connect(self._tag_selected)
        self.copy_button.clicked.connect(self._copy_selected)
        self.grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.grid.customContextMenuRequested.connect(self._grid_menu)
        return tab

    def _make_map_panel(self) -> QWidget:
        from app.gui.widgets.map_panel import MapPanel

        panel = MapPanel(self.models, self.libraries, self.runner, self.thumbs)
        self.connect_panel(panel)
        panel.open_photo.connect(lambda i: self.open_photo(self.libraries.library.image(i).path))
        self.libraries.opened.connect(lambda _lib: panel.load())
        self.search_panel.results_changed.connect(panel.show_search)
        panel.show_search(*self.last_search)  # searches made before the tab was first opened
        panel.load()
        return panel

    @property
    def map_panel(self):
        return self.map_tab.ensure()

    def _make_training_panel(self) -> QWidget:
        from app.gui.widgets.training_panel import TrainingPanel

        panel = TrainingPanel(self.libraries)
        self.connect_panel(panel)
        panel.use_model.connect(self.use_trained_model)
        self.libraries.opened.connect(lambda _lib: panel.refresh_sources())
        panel.refresh_sources()
        return panel

    @property
    def training_panel(self):
        return self.training_tab.ensure()

    def connect_panel(self, panel: Panel | TaskPanel) -> None:
        """Wire a panel's status line, errors and long tasks to the window (the one panel interface)."""
        panel.status.connect(lambda m: self.statusBar().showMessage(m, 8000))
        panel.error.connect(self.error)
        if hasattr(panel, "task_started"):
            panel.task_started.connect(self.task_bar.follow)

    def event(self, event) -> bool:
        if not self._shown and event.type() == QEvent.Type.Paint:
            self._shown = True
            # The window paints first; the library (SQLAlchemy) and the device probe (torch) load right after.
            QTimer.singleShot(0, self._after_first_show)
        return super().event(event)

    def _after_first_show(self) -> None:
        # A returning user's library exists: the model an earlier session compiled with OpenVINO (without torch)
        # and the library's vector index load in workers while the library opens here, and a drop is searched
        # with them; torch and the full model load once the library is open, so that torch's import does not
        # slow the opening (bench/startup.py at 100k photos). A first start indexes the sample, which loads the
        # model itself.
        early = self.libraries.library is None and bool(self.settings.value("library/name", ""))
        self._starting = True  # the watcher waits for the warm-up tasks below (watch_library)
        idle = True
        try:
            if early:
                name = str(self.settings.value("library/name", ""))
                self._warm(Task(lambda _r, _c: self.models.warm_up_quick(), name="quick start"))
                self._warm(Task(lambda _r, _c: self.models.warm_up_index_named(name), name="warm-up index"))
            else:
                self._start_labelled(Task(lambda _r, _c: self.models.probe_device(), name="device"))
            if self.libraries.library is None:
                self._open_start_library()
            self._search_pending()
            self.text_actions.resume_if_pending()  # an indexing for text search the last run did not finish
            lib = self.libraries.library
            idle = self._indexing is None or self._indexing.outcome is not None  # an indexing run loads it anyway
            if early:
                # The device probe rides along: a task of its own held one of the pool's two threads for torch's
                # import.
                self._warm(Task(lambda _r, _c: self.models.warm_up(None, probe=True), name="warm-up"), label=True)
            elif idle:
                self._warm(Task(lambda _r, _c: self.models.warm_up(lib), name="warm-up"))
        finally:
            self._starting = False
        if idle:
            self.watch_library()

    def _start_labelled(self, task: Task) -> Task:
        """Start a task after which the status bar names the device (however the task ends)."""
        for sig in (task.signals.finished, task.signals.failed):
            sig.connect(lambda *_a: self._update_model_label())
        return self.runner.start(task)

    def _warm(self, task: Task, label: bool = False) -> None:
        """Start a start-up load; the folder watcher is asked again when it ends (connected before it starts)."""
        self._warming.append(task)
        for sig in (task.signals.finished, task.signals.failed, task.signals.cancelled):
            sig.connect(lambda *_a: self.watch_library())
        if label:
            self._start_labelled(task)
        else:
            self.runner.start(task)

    def _make_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        add = QAction("&Add folder…", self)
        add.setShortcut(QKeySequence("Ctrl+O"))
        add.triggered.connect(self.library_panel.choose_folder)
        file_menu.addAction(add)
        file_menu.addSeparator()
        quit_ = QAction("&Quit", self)
        quit_.setShortcut(QKeySequence.StandardKey.Quit)
        quit_.triggered.connect(self.close)
        file_menu.addAction(quit_)
        edit_menu = self.menuBar().addMenu("&Edit")
        paste = QAction("&Paste as query", self)
        paste.setShortcut(QKeySequence.StandardKey.Paste)
        paste.setToolTip("Search by the photos or the image on the clipboard (from any tab)")
        paste.triggered.connect(lambda: self.paste())
        edit_menu.addAction(paste)
        paste_add = QAction("&Add pasted to query", self)
        paste_add.setShortcut(QKeySequence("Ctrl+Shift+V"))
        paste_add.triggered.connect(lambda: self.paste(add=True))
        edit_menu.addAction(paste_add)
        for action in (paste, paste_add):  # keep working with the menu bar hidden (and offscreen)
            self.addAction(action)
        self.library_menu = self.menuBar().addMenu("&Library")
        self.library_actions.fill_menu(self.library_menu)
        watch = QAction("&Watch folders for changes", self, checkable=True)
        watch.setToolTip("New, changed, moved and deleted photos appear without a restart")
        watch.setChecked(self.watcher.enabled)
        watch.toggled.connect(self._set_watching)
        self.library_menu.addAction(watch)
        model_menu = self.menuBar().addMenu("&Model")
        manage = QAction("&Models…", self)
        manage.triggered.connect(self.show_models)
        model_menu.addAction(manage)

    # ------------------------------------------------------------------------------------------ library
    def _open_start_library(self) -> None:
        from engine.store import Library

        name = str(self.settings.value("library/name", ""))
        try:
            if name:
                self.libraries.open(name)
            elif Library.list_names():
                self.libraries.open(Library.list_names()[0])
            elif self.first_start_sample:
                self._open_sample_library()
            else:
                self.libraries.open("default")
        except Exception as e:  # a broken or newer library must not keep the window from opening
            log.exception("cannot open library %s", name)
            self.error("Cannot open the library", str(e))

    def _open_sample_library(self) -> None:
        """First start: a library over the bundled sample photos, indexed if the model is at hand."""
        from app.gui.resources import asset_path

        lib = self.libraries.open("sample")
        if not asset_path("sample").is_dir():
            return
        sample = copy_sample_photos()
        lib.add_folder(str(sample))
        self.refresh_library()
        if not self.models.available_locally() and bundled_model() is not None:
            self.models.set_source(bundled_model())  # remembered: the library stays searchable with it
            self.browse.show_notice(
                f"The sample is indexed with the bundled demo model. For DINOv2's own features download "
                f"{DEFAULT_MODEL} (Model ▸ Models…).")
        if self.models.available_locally():
            self.add_folder(str(sample))
        else:
            self.grid_status.setText(
                f"The sample photos are ready to index: download {self.models.source} (Model ▸ Models…) or "
                "load a checkpoint, then use Add folder… or re-open the library")

    def open_library(self, name: str) -> None:
        try:
            self.libraries.open(name)
        except Exception as e:
            self.error("Cannot open the library", str(e))

    def refresh_library(self) -> None:
        from engine.store import Library

        lib = self.libraries.library
        if lib is None:
            return
        self.thumbs.clear()
        rows = lib.image_paths(status="ok", order_by=self.browse.order)
        self.library_panel.show_library(Library.list_names(), lib.name, [str(f.path) for f in lib.folders()],
                                        lib.counts(), [p for _i, p in rows])
        self.browse.set_stacks(self._stacks(lib))
        self.browse.set_folder(self.library_panel.selected_folder, rows)
        self._update_title()

    def _stacks(self, lib) -> dict[int, list[int]]:
        """The stacks of the model in use (engine.stacks): cover -> members; none before it indexed the library."""
        from engine.stacks import stacks

        record = lib.model_by_source(self.models.source)
        return stacks(lib, record.id) if record is not None else {}

    def _update_title(self) -> None:
        """The library's name; the photo's name and size while the viewer is shown (as photo viewers do)."""
        viewer = self.tabs.currentWidget() is self.viewer and self.viewer.path
        what = self.viewer.title_text() if viewer else self.libraries.name
        self.setWindowTitle(f"{what} — Dinoscope" if what else "Dinoscope")

    def refresh_grid(self) -> None:
        lib = self.libraries.library
        if lib is None:
            return
        self.browse.show_rows(lib.image_paths(status="ok", order_by=self.browse.order))

    def _fetch_thumbnails(self, ids: list[int]) -> dict[int, bytes]:
        lib = self.libraries.library
        if lib is None:
            return {}
        return {i: lib.thumbnail(i) for i in ids}

    def add_folder(self, path: str) -> Task | None:
        if self.libraries.library is None:
            return None
        task = self.libraries.index_task([path], self.models.source, self.models.device_name,
                                         before=self.watcher.stop, int8=self.models.index_int8)
        self._indexing = task
        return self.run_task(task, f"Indexing {Path(path).name}", on_done=lambda _r: self._indexing_ended(),
                             on_progress=lambda *_: self._maybe_refresh_while_indexing())

    def reindex(self) -> Task | None:
        """Index the library's known folders again with the model in use (new, changed, moved, deleted)."""
        lib = self.libraries.library
        if lib is None:
            return None
        task = self.libraries.index_task([], self.models.source, self.models.device_name, before=self.watcher.stop,
                                         int8=self.models.index_int8)
        self._indexing = task
        return self.run_task(task, "Updating the library", on_done=lambda _r: self._indexing_ended(),
                             on_progress=lambda *_: self._maybe_refresh_while_indexing())

    def use_trained_model(self, path: str) -> Task | None:
        """A training run's teacher becomes the app's model; the library is indexed with it."""
        self.models.set_source(path)
        return self.reindex()

    def _maybe_refresh_while_indexing(self) -> None:
        """The grid and the counts follow the indexing run: at every step while the library is small (cheap), at
        most every second once it is big."""
        import time

        now = time.monotonic()
        small = self.grid.grid_model().rowCount() < 2000
        if (small or now - getattr(self, "_last_live_refresh", 0.0) > 1.0) and self.libraries.library is not None:
            self._last_live_refresh = now
            self.browse.indexing = True
            self.refresh_grid()
            self.library_panel.show_counts(self.libraries.library.counts())

    def _indexing_ended(self) -> None:
        self.browse.indexing = False
        self.refresh_library()
        self.watch_library()

    def _set_watching(self, on: bool) -> None:
        self.watcher.set_enabled(on)
        if on:
            self.watch_library()

    def watch_library(self) -> None:
        """Follow the open library's folders (new, changed, moved, deleted photos appear without a restart),
        unless the setting is off, the window is not shown yet, or the window is indexing itself."""
        lib = self.libraries.library
        if lib is None or not self._shown or (self._indexing is not None and self._indexing.outcome is None):
            return
        # The watcher loads its own model and walks the folders: started while torch and the model load for the
        # first drop, it cost that drop seconds (bench/startup.py). It starts once they are in memory: each
        # start-up load asks again when it ends (_warm), and _after_first_show once it has started them all.
        if self._starting or any(t.outcome is None for t in self._warming):
            return
        if self.models.available_locally():
            self.watcher.start(str(lib.root), self.models.source, self.models.device_name, self.models.index_int8)

    def show_errors(self) -> None:
        lib = self.libraries.library
        errors = lib.errors() if lib is not None else []
        text = "\n".join(f"{p}: {e}" for p, e in errors[:200])
        box = QMessageBox(QMessageBox.Icon.Information, "Unreadable files",
                          f"{len(errors)} files could not be read; they are skipped.", parent=self)
        box.setDetailedText(text)
        box.exec()

    # ----------------------------------------------------------------------------------------- models
    def _update_model_label(self) -> None:
        """Model and device; a long checkpoint path is cut in the middle (in full in the tooltip), so the status
        bar keeps room for messages."""
        device = self.models.device_text or "…"
        full = f"Model: {display_name(self.models.source)} · {device}"
        metrics = self.model_label.fontMetrics()
        self.model_label.setText(metrics.elidedText(full, Qt.TextElideMode.ElideMiddle, 360))
        self.model_label.setToolTip(f"{full}\nThe DINOv2 model in use and where it runs; click to manage models")

    def show_models(self) -> None:
        from app.gui.widgets.model_manager import ModelManager

        dlg = ModelManager(self.runner, self.models.source, self, text_source=self.text.source,
                           index_int8=self.models.index_int8)
        dlg.model_chosen.connect(self.use_model)
        dlg.text_source_chosen.connect(self.text.set_source)
        dlg.text_index_requested.connect(lambda: self.text_actions.index_library())
        dlg.exec()
        if dlg.int8_box.isEnabled() and dlg.int8_box.isChecked() != self.models.index_int8:
            self.set_index_int8(dlg.int8_box.isChecked())  # once, when the dialog closes: not per click

    def set_index_int8(self, on: bool) -> Task | None:
        """Photos indexed from now on (by the window and the folder watcher) use int8 on the CPU; vectors already
        stored stay, since both precisions search together. A running watcher restarts with it: stopped in a
        worker (it may be loading its model or quantising, and the UI must not wait for that), then started."""
        self.models.set_index_int8(on)
        if not self.watcher.running:
            return None
        task = Task(lambda _report, _cancelled: self.watcher.stop(), name="watch-restart")
        return self.run_task(task, "Restarting the folder watcher", on_done=lambda _r: self.watch_library())

    def use_model(self, source: str) -> Task | None:
        """A model picked in the model manager: searches need the library's vectors from it, so index with it
        (only photos without them are embedded; the vectors of other models stay)."""
        if source == self.models.source:
            return None
        self.models.set_source(source)
        return self.reindex()

    # ------------------------------------------------------------------------------------------ search
    def search_files(self, paths: list[Path], add: bool = False) -> Task | None:
        """Files dropped anywhere on the window, pasted, or passed on the command line (a folder gives its
        photos); `add` keeps the current queries."""
        self.tabs.setCurrentWidget(self.search_panel)
        return self.search_panel.search_files(paths, add=add)

    def search_dropped(self, dropped: Dropped, add: bool = False) -> Task | None:
        """One rule for drops and pastes: the new photos replace the query; with Shift they are added to it."""
        if not dropped:
            return None
        self.tabs.setCurrentWidget(self.search_panel)
        if dropped.paths:
            return self.search_panel.search_files(dropped.paths, add=add)
        return self.search_panel.search_bytes(dropped.data, dropped.data_label, add=add)

    def paste(self, add: bool = False) -> Task | None:
        dropped = read_mime(QApplication.clipboard().mimeData(), "pasted image")
        if not dropped:
            self.statusBar().showMessage("The clipboard holds no photo or image to search by", 5000)
            return None
        return self.search_dropped(dropped, add=add)

    def search_on_start(self, files: list[str | Path]) -> None:
        """"Open with Dinoscope": search by these photos as soon as the library is open and, on a first start,
        indexed (a search before that would find nothing, or no library at all)."""
        self._pending_files = [Path(f) for f in files]
        if self._shown:
            self._search_pending()

    def _search_pending(self) -> None:
        if not self._pending_files or self.libraries.library is None:
            return
        task = self._indexing
        if task is not None and task.outcome is None:  # still indexing: search when it ends, however it ends
            for sig in (task.signals.finished, task.signals.failed, task.signals.cancelled):
                sig.connect(lambda *_: QTimer.singleShot(0, self._search_pending))
            self.statusBar().showMessage("Indexing the library first; the search follows", 8000)
            return
        files, self._pending_files = self._pending_files, []
        self.search_files(files)

    def _search_region(self, path: str, box: tuple) -> None:
        self.tabs.setCurrentWidget(self.search_panel)
        self.search_panel.search_region(path, box)

    def open_photo(self, path: str, context: list[str] | None = None, sequence: list[str] | None = None) -> None:
        """Open in the viewer; Left/Right (and Previous/Next) walk ``sequence``, by default the list shown where it
        was opened; Escape goes back there."""
        current = self.tabs.currentWidget()
        if current is not self.viewer:
            self._return_tab = current
        if sequence is None:
            grid = self.search_panel.grid if current is self.search_panel else self.grid
            sequence = [it.path for it in grid.grid_model().items]
        self.viewer.open(path, context or [], sequence if path in sequence else None)
        self.tabs.setCurrentWidget(self.viewer)

    def leave_viewer(self) -> None:
        self.tabs.setCurrentWidget(self._return_tab)

    def _make_shortcuts(self) -> None:
        keys = ((Qt.Key.Key_Left, self.viewer.show_previous), (Qt.Key.Key_Right, self.viewer.show_next),
                (Qt.Key.Key_Escape, self.leave_viewer))
        for key, slot in keys:
            sc = QShortcut(QKeySequence(key), self.viewer)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(slot)

    def _open_from_grid(self, index) -> None:
        paths = [it.path for it in self.grid.grid_model().items]
        self.open_photo(paths[index.row()], _near(paths, paths[index.row()]), paths)

    def dragEnterEvent(self, event) -> None:
        if read_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        dropped = read_mime(event.mimeData())
        if dropped:
            event.acceptProposedAction()
            self.search_dropped(dropped, add=bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier))

    # ------------------------------------------------------------------------------------------- tasks
    def run_task(self, task: Task, title: str, on_done=None, on_progress=None) -> Task:
        self.task_bar.follow(task, title)
        if on_done is not None:
            task.signals.finished.connect(on_done)
        if on_progress is not None:
            task.signals.progress.connect(on_progress)
        task.signals.failed.connect(lambda msg, tb: self.error(title + " failed", msg, tb))
        return self.runner.start(task)

    def error(self, title: str, message: str, traceback: str = "") -> QMessageBox:
        """Errors say what happened in plain words; only a crash (a traceback) points at the log. The box does not
        block: the window keeps painting and running tasks keep reporting."""
        log.error("%s: %s%s", title, message, "\n" + traceback if traceback else "")
        where = f"\n\nDetails are in the log: {self.log_path}" if traceback and self.log_path else ""
        box = QMessageBox(QMessageBox.Icon.Warning, title, message + where, parent=self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.last_error = box
        return box

    def closeEvent(self, event) -> None:
        self.text_actions.closing = True  # a quit is not a Cancel: an unfinished text indexing resumes next start
        self.watcher.stop(timeout=5.0)
        self.runner.cancel_all()
        self.runner.wait(5000)
        self.thumbs.wait()
        super().closeEvent(event)


def _near(paths: list[str], path: str) -> list[str]:
    """Up to 8 photos around `path` in its list: the context the viewer colours parts jointly with."""
    i = paths.index(path) if path in paths else 0
    return [p for p in paths[max(0, i - 4) : i + 5] if p != path]
