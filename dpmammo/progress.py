"""Progress that shows on a terminal and in a log file: a rich bar on a TTY, plain lines otherwise.

Callers use one object, with the part of `rich.progress.Progress` they need (`with`, `add_task`,
`advance`, `update`), and never branch on where the output goes. A live bar redirected to a file
(a log, a cluster job) prints nothing until the end, so without a terminal each task prints plain
lines instead: one when it starts, then one each time another `every` fraction of its total is
done (10% by default), with its latest description, its count and the elapsed time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn)

DEFAULT_COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


@dataclass
class _PlainState:
    mark: int = -1  # how many `every` fractions of the total were done at the last line
    due_at: Optional[float] = None  # the completed count when a line became due (None: none due)
    described: bool = False  # the caller updates the description (an epoch's results): wait for it
    printed: str = ""  # the description in the last line


class StepProgress:
    """A progress display for loops of known length; see the module docstring.

    Args:
        columns: rich columns of the bar on a terminal.
        enabled: False shows nothing at all (library use, nested loops).
        console: where to write (default: rich's console, i.e. stdout).
        every: fraction of a task's total between plain lines; 0 prints a line at every
            description change (for a few long items, such as the runs of a study).
        unit: what the count counts, in plain lines ("steps", "runs", "images").
    """

    def __init__(self, *columns: ProgressColumn, enabled: bool = True, console: Optional[Console] = None,
                 every: float = 0.1, unit: str = "steps"):
        self.console = console or Console()
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.every, self.unit = every, unit
        # The rich Progress keeps the tasks' counts and clocks in both modes; it draws only when live.
        self._bar = Progress(*(columns or DEFAULT_COLUMNS), console=self.console, disable=not self.live,
                             transient=False)
        self._plain: dict[TaskID, _PlainState] = {}

    @property
    def plain(self) -> bool:
        return self.enabled and not self.live

    def __enter__(self) -> "StepProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        for task_id, state in self._plain.items():  # the last results, unless already printed
            if exc[0] is None and (state.due_at is not None or self._task(task_id).description != state.printed):
                self._line(task_id)
        self._bar.stop()

    def add_task(self, description: str, total: Optional[float] = None, completed: float = 0) -> TaskID:
        task_id = self._bar.add_task(description, total=total, completed=completed)
        if self.plain:
            self._plain[task_id] = state = _PlainState()
            self._mark(task_id, state)
            state.due_at = None  # the start line below says where it starts
            self._line(task_id)
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: TaskID, *, description: Optional[str] = None, advance: Optional[float] = None,
               completed: Optional[float] = None, total: Optional[float] = None) -> None:
        self._bar.update(task_id, description=description, advance=advance, completed=completed, total=total)
        if not self.plain:
            return
        state = self._plain[task_id]
        state.described |= description is not None
        self._mark(task_id, state)
        if state.due_at is None:
            return
        # A due line waits for the caller's next description (an epoch's results, usually right
        # after the step that crossed the mark); within a long stretch without one, it goes out
        # half a mark later with the description it has.
        task = self._task(task_id)
        waited = task.completed - state.due_at
        if (description is not None or not state.described
                or (self.every > 0 and task.total and waited >= max(1.0, task.total * self.every / 2))):
            self._line(task_id)

    def _mark(self, task_id: TaskID, state: _PlainState) -> None:
        task = self._task(task_id)
        if self.every <= 0:
            state.due_at = task.completed
            return
        if not task.total:
            return
        mark = math.floor(task.completed / task.total / self.every + 1e-9)
        if mark > state.mark:
            state.mark = mark
            if state.due_at is None:
                state.due_at = task.completed

    def _line(self, task_id: TaskID) -> None:
        task = self._task(task_id)
        total = f"/{task.total:g}" if task.total is not None else ""
        elapsed = timedelta(seconds=int(task.elapsed or 0))
        # print, not the rich console: no markup, no wrapping, flushed at once into a log file
        print(f"{task.description} [{task.completed:g}{total} {self.unit}, {elapsed}]", file=self.console.file,
              flush=True)
        self._plain[task_id].due_at = None
        self._plain[task_id].printed = task.description

    def _task(self, task_id: TaskID) -> Task:
        return next(t for t in self._bar.tasks if t.id == task_id)
