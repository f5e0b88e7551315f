"""The task bar follows every running task: a short task started during a long one (a search during indexing)
shows while it runs, and then the long one comes back with its progress and its Cancel button."""

from __future__ import annotations

import threading

from app.gui.widgets.task_bar import TaskBar
from app.gui.workers import Task, TaskRunner
from engine.progress import Cancelled


def _long(report, cancelled, release: threading.Event):
    report(3, 10, "Indexing 3/10")
    while not cancelled():
        if release.wait(0.01):
            return "done"
    raise Cancelled()


def _short(report, cancelled, go: threading.Event):
    go.wait(10)
    return "results"


def test_the_long_task_keeps_its_bar_and_cancel_after_a_short_one(qtbot) -> None:
    bar = TaskBar()
    qtbot.addWidget(bar)
    runner = TaskRunner()
    release, go = threading.Event(), threading.Event()
    indexing = Task(_long, release, name="index")
    bar.follow(indexing, "Indexing photos")
    runner.start(indexing)
    qtbot.waitUntil(lambda: bar.bar.maximum() == 10 and bar.bar.value() == 3, timeout=5000)

    search = Task(_short, go, name="search")
    bar.follow(search, "Searching")
    runner.start(search)
    assert bar.task is search and bar.label.text() == "Searching" and not bar.isHidden()
    go.set()
    qtbot.waitUntil(lambda: search.outcome == "finished", timeout=5000)
    qtbot.waitUntil(lambda: bar.task is indexing, timeout=5000)
    assert bar.label.text() == "Indexing 3/10" and bar.bar.value() == 3 and bar.cancel_button.isEnabled()

    bar.cancel_button.click()
    qtbot.waitUntil(lambda: indexing.outcome == "cancelled", timeout=5000)
    qtbot.waitUntil(lambda: bar.isHidden(), timeout=5000)
    assert bar.task is None
    runner.wait(5000)


def _download(report, cancelled, release: threading.Event):
    report(3_000_000_000, 4_000_000_000, "Downloading dino.txt 3.00 / 4.0 GB")  # bytes past 2**31
    release.wait(10)
    return "done"


def test_progress_past_two_gigabytes_reaches_the_bar(qtbot) -> None:
    """A 3.5 GB download reports byte counts over 2**31: they cross the thread boundary and fill the bar."""
    bar = TaskBar()
    qtbot.addWidget(bar)
    runner = TaskRunner()
    release = threading.Event()
    task = Task(_download, release, name="download")
    bar.follow(task, "Downloading")
    runner.start(task)
    qtbot.waitUntil(lambda: bar.bar.maximum() > 0, timeout=5000)
    assert bar.bar.value() / bar.bar.maximum() == 0.75
    assert bar.label.text() == "Downloading dino.txt 3.00 / 4.0 GB"
    release.set()
    qtbot.waitUntil(lambda: task.outcome == "finished", timeout=5000)
    runner.wait()
