"""Ansible callback `bench_timer`: wall time of every task, written as JSON when the run ends.

ansible-core ships no profile_tasks (that one is in the ansible.posix collection, which is not
installed here). A task's time runs from its start to the start of the next task (or the end of
the play), across all hosts, as profile_tasks counts it. Enabled by the benchmarks only:

    ANSIBLE_CALLBACK_PLUGINS=<repo>/bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=bench_timer
    BENCH_TIMER_FILE=/path/tasks.json ansible-playbook site.yml
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: per-task wall time as JSON (file named by BENCH_TIMER_FILE)
description: Records each task's name, module, role and wall time for the benchmarks.
requirements: [enable in callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    """Times tasks and handlers; writes [{name, role, action, seconds, changed}, ...]."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._started = time.monotonic()

    def _close_current(self) -> None:
        if self._current is not None:
            self._current["seconds"] = time.monotonic() - self._current.pop("_t0")
            self._tasks.append(self._current)
            self._current = None

    def _start(self, task: Any, handler: bool) -> None:
        self._close_current()
        role = task._role.get_name() if getattr(task, "_role", None) else ""
        self._current = {
            "name": task.get_name(),
            "role": role,
            "action": task.action,
            "handler": handler,
            "changed": 0,
            "_t0": time.monotonic(),
        }

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._start(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._start(task, handler=True)

    def v2_runner_on_ok(self, result: Any) -> None:
        if self._current is not None and result._result.get("changed", False):
            self._current["changed"] += 1

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close_current()
        path = os.environ.get("BENCH_TIMER_FILE")
        if path:
            report = {"total_seconds": time.monotonic() - self._started, "tasks": self._tasks}
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=1)
