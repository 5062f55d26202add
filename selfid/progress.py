"""Progress for long stages, on a terminal and off it.

On a terminal this is rich's live progress bar. Where the output is not a terminal (a log file, CI, `nohup`), rich
draws nothing until a stage ends, so a 10-minute demo wrote nothing for 10 minutes; there, `Progress` prints one
plain line per task every `every_s` seconds instead (what it is, done/total, rate, time left, and its fields such as
the loss), and one when the display stops.
"""

from __future__ import annotations

import time
from typing import Callable

import rich.progress
import rich.text
from rich.console import Console

EVERY_S = 30.0  # seconds between two plain lines of one task


class Progress(rich.progress.Progress):
    """rich's Progress, which writes plain lines every `every_s` seconds where its console is not a terminal."""

    def __init__(self, *columns, label: str = "", unit: str = "", every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, disable: bool = False, console: Console | None = None,
                 **kw):
        """`label` names the stage in plain lines (before each task's description), `unit` what is counted."""
        console = console or Console(stderr=True, highlight=False)
        self.plain = not disable and not console.is_terminal
        super().__init__(*columns, console=console, disable=disable or self.plain, **kw)
        self.label, self.unit, self.clock = label, unit, clock
        self.every_s = EVERY_S if every_s is None else every_s
        self._plain: dict[int, dict] = {}  # task -> when it started, its completed count then, when it last printed

    # --- the hooks: every change of a task may print its line --------------------------------------------------
    def add_task(self, description: str, *args, **kw) -> rich.progress.TaskID:
        task = super().add_task(description, *args, **kw)
        if self.plain:
            now = self.clock()
            self._plain[task] = {"t0": now, "done0": self._tasks[task].completed, "said": now, "ended": False}
        return task

    def advance(self, task_id: rich.progress.TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tick(task_id)

    def update(self, task_id: rich.progress.TaskID, **kw) -> None:
        super().update(task_id, **kw)
        self._tick(task_id)

    def stop(self) -> None:
        for task_id, state in self._plain.items():
            if not state["ended"]:
                self._say(task_id, final=True)
        super().stop()

    # --- the plain lines ---------------------------------------------------------------------------------------
    def _tick(self, task_id) -> None:
        state = self._plain.get(task_id)
        if state is None or state["ended"]:
            return
        task = self._tasks[task_id]
        finished = task.total is not None and task.completed >= task.total  # its last line comes when the display stops
        if not finished and self.clock() - state["said"] >= self.every_s:
            self._say(task_id)

    def _say(self, task_id, final: bool = False) -> None:
        self.console.print(self.line(task_id, final), markup=False, highlight=False, soft_wrap=True)
        state = self._plain[task_id]
        state["said"], state["ended"] = self.clock(), final

    def line(self, task_id, final: bool = False) -> str:
        """One task's plain line: 'train: 12/48 (25%), 0.4/s, 1m30s left, loss 1.23' (fields after the counts)."""
        task, state = self._tasks[task_id], self._plain[task_id]
        elapsed = max(self.clock() - state["t0"], 1e-9)
        done = task.completed
        rate = (done - state["done0"]) / elapsed
        unit = f" {self.unit}" if self.unit else ""
        count = f"{_num(done)}/{_num(task.total)}{unit}" if task.total is not None else f"{_num(done)}{unit}"
        if task.total:
            count += f" ({done / task.total:.0%})"
        parts = [count, f"{rate:.3g}{unit}/s"]
        if task.total is None and not done:  # a phase with nothing to count (a spinner): only its time
            parts = []
        if final:
            parts.append(f"took {_duration(elapsed)}")
        elif task.total is not None and rate > 0:
            parts.append(f"{_duration((task.total - done) / rate)} left")
        else:
            parts.append(f"{_duration(elapsed)} so far")
        parts += [f"{k} {v}" for k, v in task.fields.items() if v not in (None, "", "-")]
        name = " ".join(x for x in (self.label, rich.text.Text.from_markup(task.description).plain) if x)
        return f"{name or 'progress'}: " + ", ".join(parts)


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
