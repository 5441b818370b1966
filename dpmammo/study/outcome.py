"""What happened to one run of a study (a classifier or a generator run), and the shared way of
turning a run's exception into a recorded failure, so one failing run never stops a study."""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from dpmammo.errors import DpMammoError


@dataclass
class Outcome:
    """What happened to one run in this invocation (plain data: it crosses Ray's wire)."""

    run_id: str
    status: Literal["done", "cached", "failed", "skipped"]
    error: str = ""
    privacy: str = ""  # the run's chain total, e.g. "ε=5.99/patient" or "no guarantee"
    wall_s: float = 0.0


def failed(run_id: str, e: Exception, t0: float) -> Outcome:
    """The failed Outcome of an exception: its first line; for a bug (not a DpMammoError) also
    where it was raised, since the full traceback is one re-run away."""
    msg = str(e).splitlines()[0] if str(e) else ""
    if not isinstance(e, DpMammoError):
        where = traceback.extract_tb(e.__traceback__)[-1]
        msg += f" (at {Path(where.filename).name}:{where.lineno})"
    return Outcome(run_id, "failed", error=f"{type(e).__name__}: {msg}"[:500], wall_s=time.time() - t0)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch threads for one run (its CPU budget; a fixed count also fixes the reduction order)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
