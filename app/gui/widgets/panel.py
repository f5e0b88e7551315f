"""The small interface the main window uses to talk to its panels: three signals, wired in one place.

A panel reports a status line, an error (title, message) and the long tasks it starts (for the window's task bar
with progress and Cancel); the window never calls a panel's private methods.
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import SignalInstance


class Panel(Protocol):
    status: SignalInstance  # (message)
    error: SignalInstance  # (title, message)


class TaskPanel(Panel, Protocol):
    task_started: SignalInstance  # (Task, title)


__all__ = ["Panel", "TaskPanel"]
