"""A task's progress, forwarded to luigi's scheduler hooks (the status bar and message in
luigid's UI): the ``ProgressCallback`` (sampler.progress) a task hands to plain modules.

The hooks are ``None`` when ``run()`` is called outside a worker (e.g. in a test), so every
call is guarded.  Reports are best-effort: luigid unreachable for a moment (restarted, say)
makes the hook raise, and a progress bar is never worth failing a download for.
"""

from __future__ import annotations

import logging
import time

from sampler.progress import ProgressCallback

log = logging.getLogger("luigi-interface")

# After a failed report, the next ones are skipped for this long: each failed call costs
# luigi's RPC retries (seconds), which the fetch should not spend waiting on luigid.
QUIET_AFTER_FAILURE = 30.0


def task_progress(task: object, min_interval: float = 0.5) -> ProgressCallback:
    """Forward progress to a luigi task's scheduler hooks, at most every ``min_interval`` s.

    The final 100 % report is always sent so the UI never shows a finished
    task stuck below 100.
    """
    last = [0.0]
    failed_at: list[float] = []

    def report(percent: float, message: str) -> None:
        now = time.monotonic()
        if percent < 100 and now - last[0] < min_interval:
            return
        if failed_at and now - failed_at[-1] < QUIET_AFTER_FAILURE:
            return
        last[0] = now
        set_percentage = getattr(task, "set_progress_percentage", None)
        set_message = getattr(task, "set_status_message", None)
        try:
            if callable(set_percentage):
                set_percentage(max(0, min(100, int(percent))))
            if callable(set_message):
                set_message(message)
        except Exception as error:  # any: whatever the scheduler's client raises
            if not failed_at:
                log.warning("progress not reported to the scheduler (%s); the task goes on", error)
            failed_at.append(now)

    return report
