"""Progress reporting: plain modules take a ``ProgressCallback`` (percent, message).

Tasks pass ``tasks.progress.task_progress(self)``, which forwards to luigi's hooks.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]


def no_progress(percent: float, message: str) -> None:
    """A callback that ignores progress."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"
