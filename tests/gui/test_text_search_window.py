"""Search by words in the window, as a person does it: type in the search field and press Enter, combine the
words with a dropped photo, remove a chip; a library without dino.txt vectors offers to index it, and that
indexing runs in the background and resumes after a restart. A reduced dino.txt in the official three-file
layout stands in for the 3.5 GB model; rankings are checked against the model's own cosines."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from engine.extract import eval_input
from engine.models import load_dinotxt
from engine.text import Tokenizer
from tests.dinotxt_helpers import save_tiny_dinotxt


@pytest.fixture
def dinotxt(tmp_path: Path) -> Path:
    return save_tiny_dinotxt(tmp_path / "dinotxt")


def _window(qtbot, settings):
    from app.gui.main_window import MainWindow

    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def _index_with_dinotxt(folder: Path, photos: Path) -> None:
    from engine.store import Library
    from engine.store.indexer import index_library

    with Library.open("family") as lib:
        index_library(lib, str(folder), folders=[str(photos)], device="cpu")


def _expected(folder: Path, photos: Path, words: list[str], images: list[Path] = ()) -> list[str]:
    """File names by the model's own cosine with the mean of the unit query vectors, best first."""
    model = load_dinotxt(folder)
    paths = sorted(photos.rglob("*.jpg"))
    with torch.no_grad():
        lib = model.encode_image(torch.stack([eval_input(p) for p in paths]), normalize=True)
        qs = [model.encode_text(Tokenizer().tokenize(w), normalize=True)[0] for w in words]
        qs += [model.encode_image(eval_input(p)[None], normalize=True)[0] for p in images]
    q = torch.nn.functional.normalize(torch.stack(qs).mean(0), dim=0)
    scores = (lib @ q).numpy()
    return [paths[i].name for i in np.argsort(-scores, kind="stable")]


def _wait_results(qtbot, panel) -> list[str]:
    qtbot.waitUntil(lambda: bool(panel.results), timeout=60000)
    return [Path(r.path).name for r in panel.results]


def _type_and_enter(qtbot, field, words: str, shift: bool = False) -> None:
    field.setFocus()
    qtbot.keyClicks(field, words)
    mod = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    qtbot.keyClick(field, Qt.Key.Key_Return, mod)


def test_words_search_ranks_by_dinotxt_and_combines_with_a_dropped_photo(qtbot, family, dinotxt) -> None:
    photos, settings = family
    _index_with_dinotxt(dinotxt, photos)
    settings.setValue("text/source", str(dinotxt))
    win = _window(qtbot, settings)
    panel = win.search_panel
    win.tabs.setCurrentWidget(panel)
    panel.stack_box.setChecked(False)  # a random tiny model stacks look-alikes; the ranking is what is checked

    _type_and_enter(qtbot, panel.field, "a cat on a sofa")
    assert panel.field.text() == ""  # the words moved into a chip
    assert panel.chips.count() == 1 and panel.chips.chip(0).caption.text() == "“a cat on a sofa”"
    got = _wait_results(qtbot, panel)
    assert got == _expected(dinotxt, photos, ["a cat on a sofa"])

    # A photo dropped from the file manager joins the words (the query is the mean of both)
    extra = photos.parent / "outside.jpg"
    from PIL import Image

    Image.open(next(photos.rglob("coffee.jpg"))).rotate(90, expand=True).save(extra)
    panel.results = []
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(extra))])
    pos = QPointF(win.width() / 2, win.height() / 2)
    QApplication.sendEvent(win, QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                                Qt.KeyboardModifier.NoModifier))
    QApplication.sendEvent(win, QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier))
    assert [c.caption.text() for c in panel.chips.chips] == ["“a cat on a sofa”", "outside.jpg"]
    got = _wait_results(qtbot, panel)
    assert got == _expected(dinotxt, photos, ["a cat on a sofa"], [extra])

    # Enter replaces the words and keeps the photo; Shift+Enter adds more words
    panel.results = []
    _type_and_enter(qtbot, panel.field, "a rocket")
    assert [c.caption.text() for c in panel.chips.chips] == ["outside.jpg", "“a rocket”"]
    assert _wait_results(qtbot, panel) == _expected(dinotxt, photos, ["a rocket"], [extra])
    panel.results = []
    _type_and_enter(qtbot, panel.field, "a mug", shift=True)
    assert len(panel.chips.chips) == 3
    assert _wait_results(qtbot, panel) == _expected(dinotxt, photos, ["a rocket", "a mug"], [extra])

    # The chip's × removes the photo: words alone again
    panel.results = []
    panel.chips.chip(0).remove_button.click()
    assert [c.caption.text() for c in panel.chips.chips] == ["“a rocket”", "“a mug”"]
    from app.gui.widgets.query_chips import QueryChip

    stale = [c for c in panel.chips.widget().findChildren(QueryChip) if c not in panel.chips.chips]
    assert all(c.isHidden() for c in stale)  # earlier chips go at once, not drawn under the new ones until later
    assert _wait_results(qtbot, panel) == _expected(dinotxt, photos, ["a rocket", "a mug"])
    # Delete on a focused chip removes it too
    panel.results = []
    qtbot.keyClick(panel.chips.chip(1), Qt.Key.Key_Delete)
    assert _wait_results(qtbot, panel) == _expected(dinotxt, photos, ["a rocket"])
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=30000)


def test_words_without_dinotxt_vectors_offer_indexing_which_runs_in_the_background(qtbot, family, dinotxt) -> None:
    photos, settings = family
    settings.setValue("text/source", str(dinotxt))
    win = _window(qtbot, settings)
    panel = win.search_panel
    _type_and_enter(qtbot, panel.field, "a rocket")
    qtbot.waitUntil(lambda: win.text_actions.offer is not None, timeout=5000)
    box = win.text_actions.offer
    assert "needs its photos indexed with dino.txt" in box.text() and "over 5 photos" in box.text()
    assert "GB" not in box.text()  # a local folder: nothing to download
    assert panel.results == []
    start = next(b for b in box.buttons() if b.text() == "Index for text search")
    start.click()
    task = win.text_actions.task
    assert task is not None and win.task_bar.isVisible() and win.task_bar.cancel_button.isVisible()
    # The words that asked for the index are searched once it ends
    got = _wait_results(qtbot, panel)
    assert task.outcome == "finished"
    assert sorted(got) == sorted(p.name for p in photos.rglob("*.jpg")) or len(got) < 5
    assert not win.text.pending_for(str(win.libraries.library.root))
    lib = win.libraries.library
    record = win.text.record(lib)
    assert lib.counts()["per_model"][record.id] == 5
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=30000)


def _hold_at_start(win, monkeypatch) -> threading.Event:
    """The indexing task's first step (stopping the folder watcher, in the worker) waits for the returned event,
    so that a quit or a Cancel lands while the run is going, whatever the machine's speed."""
    gate = threading.Event()
    stop = win.watcher.stop

    def held(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            gate.wait(20)
        return stop(*args, **kwargs)

    monkeypatch.setattr(win.watcher, "stop", held)
    return gate


def test_text_indexing_resumes_after_a_restart_but_not_after_cancel(qtbot, family, dinotxt, monkeypatch) -> None:
    _photos, settings = family
    settings.setValue("text/source", str(dinotxt))
    win = _window(qtbot, settings)
    root = str(win.libraries.library.root)
    gate = _hold_at_start(win, monkeypatch)
    task = win.text_actions.index_library()
    assert win.text.pending_for(root)
    win.close()  # quitting mid-run (closeEvent cancels running tasks) is not a Cancel
    gate.set()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    assert task.outcome == "cancelled"
    assert win.text.pending_for(root)
    from engine.store import Library

    with Library.open("family") as lib:
        assert len(lib.counts()["per_model"]) == 1  # only the photo model's vectors: no dino.txt ones yet

    again = _window(qtbot, settings)
    qtbot.waitUntil(lambda: again.text_actions.task is not None, timeout=10000)  # right after the first paint
    resumed = again.text_actions.task
    qtbot.waitUntil(lambda: resumed.outcome is not None, timeout=60000)
    assert resumed.outcome == "finished"
    lib = again.libraries.library
    assert lib.counts()["per_model"][again.text.record(lib).id] == 5
    qtbot.waitUntil(lambda: not again.text.pending_for(root), timeout=5000)  # cleared when the run ends

    # A Cancel by the user is a choice: nothing resumes at the next start
    gate = _hold_at_start(again, monkeypatch)
    third = again.text_actions.index_library()
    assert again.text.pending_for(root)
    again.task_bar.cancel_button.click()
    gate.set()
    qtbot.waitUntil(lambda: third.outcome is not None, timeout=30000)
    assert third.outcome == "cancelled"
    qtbot.waitUntil(lambda: not again.text.pending_for(root), timeout=5000)
    qtbot.waitUntil(lambda: not again.task_bar.isVisible(), timeout=30000)


def test_viewer_finds_words_in_the_photo(qtbot, family, dinotxt, skimage_data_dir) -> None:
    from engine.imageio import load_rgb
    from engine.text.heatmap import text_heatmap

    photos, settings = family
    settings.setValue("text/source", str(dinotxt))
    win = _window(qtbot, settings)
    photo = next(photos.rglob("rocket.jpg"))
    win.open_photo(str(photo))
    viewer = win.viewer
    messages: list[str] = []
    viewer.status.connect(messages.append)
    viewer.words_field.setFocus()
    qtbot.keyClicks(viewer.words_field, "a rocket")
    qtbot.keyClick(viewer.words_field, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: any("best match" in m for m in messages), timeout=60000)
    want = text_heatmap(load_dinotxt(dinotxt), load_rgb(photo), "a rocket")
    assert f"cosine {want.best_score:.3f}" in messages[-1]
    assert not viewer.view.overlay.pixmap().isNull()
    viewer.words_field.clear()  # the clear button: back to the plain photo
    assert viewer.words is None and viewer.view.overlay.pixmap().isNull()


def test_viewer_words_without_dinotxt_say_where_to_get_it(qtbot, family) -> None:
    photos, settings = family
    win = _window(qtbot, settings)
    win.open_photo(str(next(photos.rglob("rocket.jpg"))))
    messages: list[str] = []
    win.viewer.status.connect(messages.append)
    win.viewer.show_words("a rocket")
    qtbot.waitUntil(lambda: any("failed" in m for m in messages), timeout=30000)
    assert "not downloaded" in messages[-1] and "Models" in messages[-1]


def test_models_dialog_downloads_dinotxt_and_offers_to_index(qtbot, zoo_mirror: Path, dinotxt) -> None:
    from app.gui.widgets.model_manager import ModelManager
    from app.gui.workers import TaskRunner
    from engine.models import zoo

    site = zoo_mirror / "dinov2_vitl14"
    site.mkdir(parents=True, exist_ok=True)
    for f in dinotxt.iterdir():
        (site / f.name).write_bytes(f.read_bytes())
    runner = TaskRunner()
    dlg = ModelManager(runner, "dinov2_vits14", text_source=zoo.DINOTXT)
    qtbot.addWidget(dlg)
    row = dlg.names().index(zoo.DINOTXT)
    assert dlg.table.item(row, 0).text() == f"{zoo.DINOTXT}\n(search by words)"
    assert dlg.table.item(row, 2).text() == f"{zoo.text_entry(zoo.DINOTXT).approx_bytes / 1e9:.1f} GB" == "3.5 GB"
    assert dlg.table.item(row, 3).text() == "not downloaded"
    button = dlg.table.cellWidget(row, 4)
    assert button.text() == "Download"
    button.click()
    task = dlg.tasks[zoo.DINOTXT]
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    assert task.outcome == "finished" and zoo.text_model_status(zoo.DINOTXT) == "downloaded"
    qtbot.waitUntil(lambda: dlg.table.item(row, 3).text() == "downloaded", timeout=5000)
    button = dlg.table.cellWidget(row, 4)
    assert button.text() == "Index library"
    with qtbot.waitSignal(dlg.text_index_requested, timeout=2000):
        button.click()
    runner.wait()


def test_models_dialog_checks_a_dinotxt_folder(qtbot, tmp_path: Path, dinotxt, monkeypatch) -> None:
    from app.gui.widgets.model_manager import ModelManager
    from app.gui.workers import TaskRunner

    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _p, title, msg: warnings.append(f"{title}: {msg}"))
    runner = TaskRunner()
    dlg = ModelManager(runner, "dinov2_vits14")
    qtbot.addWidget(dlg)
    with qtbot.waitSignal(dlg.text_source_chosen, timeout=20000) as chosen:
        dlg.load_dinotxt(str(dinotxt))
    assert chosen.args == [str(dinotxt)]
    broken = tmp_path / "broken"
    broken.mkdir()
    backbone = "dinov2_vitl14_reg4_pretrain.pth"
    (broken / backbone).write_bytes((dinotxt / backbone).read_bytes())
    dlg.load_dinotxt(str(broken))
    qtbot.waitUntil(lambda: bool(warnings), timeout=20000)
    assert "needs three files" in warnings[0] and "vision_head" in warnings[0]
    runner.wait()


def test_words_say_when_they_reach_only_part_of_the_library(qtbot, family, dinotxt, tiny_checkpoint) -> None:
    """Photos added after the dino.txt run are indexed with the photo model only: a words search says so."""
    from PIL import Image

    from engine.store import Library
    from engine.store.indexer import index_library

    photos, settings = family
    _index_with_dinotxt(dinotxt, photos)
    Image.open(next(photos.rglob("coffee.jpg"))).rotate(180).save(photos / "things" / "new.jpg")
    with Library.open("family") as lib:
        index_library(lib, str(tiny_checkpoint), device="cpu")
        assert lib.counts()["ok"] == 6
    settings.setValue("text/source", str(dinotxt))
    win = _window(qtbot, settings)
    messages: list[str] = []
    win.search_panel.status.connect(messages.append)
    _type_and_enter(qtbot, win.search_panel.field, "a mug")
    _wait_results(qtbot, win.search_panel)
    qtbot.waitUntil(lambda: any("results for" in m for m in messages), timeout=10000)
    assert "words reach 5 of 6 photos so far" in next(m for m in messages if "results for" in m)
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=30000)


def test_a_failed_text_indexing_says_why_and_is_tried_again_next_start(qtbot, family, tmp_path) -> None:
    """A dropped connection or a broken folder: the error is shown, and the run stays pending (a restart retries);
    only a Cancel drops it."""
    _photos, settings = family
    broken = save_tiny_dinotxt(tmp_path / "broken")
    (broken / "dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth").unlink()
    settings.setValue("text/source", str(broken))
    win = _window(qtbot, settings)
    root = str(win.libraries.library.root)
    task = win.text_actions.index_library()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    assert task.outcome == "failed" and "vision_head" in task.error
    qtbot.waitUntil(lambda: getattr(win, "last_error", None) is not None, timeout=5000)
    assert "vision_head" in win.last_error.text()
    assert win.text.pending_for(root)
