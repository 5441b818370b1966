"""A training stage's life in its run directory, the same for every kind of training (classifier,
GAN, DP-MERF, procedural pretraining), so that a kind writes only its own steps and epochs.

The stage holds the run directory (dpmammo.runs.RunDir.training), opens log.txt (closed however
training ends), resolves the device, keeps the epoch bookkeeping (epoch count, history rows, wall
time across resumes), checkpoints, and writes metrics.json last with the fields every run records
(privacy total, wall time, device, version). A kind of training reads:

    with Stage.open(run, cfg, force, device=cfg.train.device, opening=f"{run.path} dpmammo {v}",
                    epochs=epochs, checkpoint_every_s=cfg.train.checkpoint_every_s) as stage:
        state = stage.begin(parts, dp, gen)  # fresh, or restored from the checkpoint
        for epoch in range(stage.epoch, epochs):
            ...  # its steps
            stage.end_epoch(row)
            stage.say(f"epoch {epoch + 1} ...")
            stage.checkpoint_if_due()
        ...  # its outputs: weights, privacy.json
        return stage.finish(metrics, privacy, "done ...")

On a rank other than 0 of a training over several processes (dpmammo.distributed) a stage
touches nothing on disk: it neither holds the directory nor opens the log, and its checkpoints
and finish do nothing; it still restores a resumed run's checkpoint, which rank 0 wrote.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from pydantic import BaseModel

from dpmammo import __version__, distributed
from dpmammo.device import resolve_device
from dpmammo.privacy.ledger import PrivacyRecord
from dpmammo.runs import RunDir

if TYPE_CHECKING:  # annotations only: a stage without DP never loads Opacus
    from dpmammo.privacy.engine import DPSetup
    from dpmammo.privacy.nonprivate import NonPrivate


class Stage:
    """One training stage in run directory `run`; made by `Stage.open`."""

    def __init__(self, run: RunDir, resuming: bool, say: Callable[[str], None], device: torch.device,
                 ranks: distributed.Ranks, record_processes: bool, checkpoint_every_s: float | None, epochs: int):
        self.run, self.resuming, self.say, self.device, self.ranks = run, resuming, say, device, ranks
        self.record_processes = record_processes
        self.checkpoint_every_s, self.epochs = checkpoint_every_s, epochs
        self.state: dict[str, Any] = {"epoch": 0, "history": [], "wall_s": 0.0}
        self._since = time.time()  # wall time since the start or the resume (earlier time: state["wall_s"])
        self._last_checkpoint = time.time()
        self._parts: dict = {}
        self._dp: DPSetup | NonPrivate | None = None  # its checkpoint_state() is what a checkpoint keeps of the privacy
        self._gen: torch.Generator | None = None

    @classmethod
    @contextmanager
    def open(cls, run: RunDir, cfg: BaseModel, force: bool, *, device: str, opening: str, epochs: int,
             checkpoint_every_s: float | None = None, ranks: distributed.Ranks | None = None) -> Iterator["Stage"]:
        """Hold `run` for training `cfg` and open its log with "start|resume <opening>".

        checkpoint_every_s: None checkpoints after every epoch; a number, at an epoch's end once that
        long has passed since the last checkpoint, and not after the last epoch (the outputs follow
        at once). ranks: the processes of a training over several; a stage given them records
        their number in its metrics ("processes")."""
        on = ranks or distributed.SINGLE
        if not on.is_main:  # rank 0 holds the directory and writes; this rank only learns whether it resumes
            yield cls(run, on.share_flag(None), lambda line: None, on.device(resolve_device(device)), on,
                      ranks is not None, checkpoint_every_s, epochs)
            return
        with run.training(cfg, force) as resuming:  # a refused start leaves the directory as it was
            on.share_flag(resuming)
            with run.log_writer(f"{'resume' if resuming else 'start'} {opening}") as say:
                yield cls(run, resuming, say, on.device(resolve_device(device)), on, ranks is not None,
                          checkpoint_every_s, epochs)

    @property
    def is_main(self) -> bool:
        """Whether this process writes (rank 0, or the only one)."""
        return self.ranks.is_main

    @property
    def epoch(self) -> int:
        """Epochs completed (restored ones included)."""
        return self.state["epoch"]

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state["history"]

    @property
    def wall_s(self) -> float:
        """Training time so far, the time before any interruption included."""
        return self.state["wall_s"] + (time.time() - self._since)

    def begin(self, parts: dict, dp: DPSetup | NonPrivate | None, gen: torch.Generator, *, resumed_note: str = "",
              **fresh: Any) -> dict[str, Any]:
        """The loop state: fresh (epoch 0, no history, plus the kind's own `fresh` entries), or, when
        resuming, restored with `parts` (models, optimisers), `dp` and `gen` from the checkpoint. The
        stage checkpoints these same objects later; of `dp`, a DP stage's accounting and draw counts
        (a non-private stage has none)."""
        self._parts, self._gen = parts, gen
        self._dp = dp
        self.state.update(fresh)
        if self.resuming:
            self.state = self.run.load_training_state(parts, self._dp, gen)
            self._since = time.time()  # the time before the interruption is in state["wall_s"]
            self.say(f"resumed after epoch {self.epoch}{resumed_note}")
        self._last_checkpoint = time.time()
        return self.state

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record a finished epoch: its history row, the epoch count, the wall time."""
        self.state["history"].append(row)
        self.state["epoch"] += 1
        now = time.time()
        self.state["wall_s"] += now - self._since
        self._since = now

    def checkpoint_if_due(self) -> None:
        """Checkpoint at an epoch's end as `checkpoint_every_s` says. A resume replays the epochs
        since, with the same random streams, to the same result."""
        if self.checkpoint_every_s is not None and (
                self.epoch >= self.epochs or time.time() - self._last_checkpoint < self.checkpoint_every_s):
            return
        self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """checkpoint.pt now (dpmammo.runs.RunDir.save_training_state); rank 0 only."""
        if not self.is_main:
            return
        self.run.save_training_state(self._parts, self._dp, self._gen, self.state)
        self._last_checkpoint = time.time()

    def finish(self, metrics: dict[str, Any], privacy: PrivacyRecord, done: str) -> dict[str, Any]:
        """Write metrics.json (the kind's `metrics`, then the privacy total, wall time, device and
        version), which marks the run finished, and log `done`; returns the metrics ({} on a rank
        other than 0, which writes nothing)."""
        if not self.is_main:
            return {}
        metrics = {**metrics, "privacy_total": privacy.total.model_dump(mode="json"), "wall_time_s": self.wall_s,
                   "device": str(self.device),
                   **({"processes": self.ranks.world} if self.record_processes else {}),
                   "dpmammo_version": __version__}
        self.run.finish(metrics)
        self.say(done)
        return metrics
