"""A run directory, and the one place that knows its files.

Life of a run: new → training (config.yaml, log.txt, checkpoint.pt) → finished (model.safetensors,
privacy.json, then metrics.json, written last: it *is* the finished mark; the checkpoint is
deleted then) → evaluated (eval/<dataset>_<split>.json + ROC PNG).

Every package (train, gan, evaluate, study, report, cli) reaches a run's files through `RunDir`:
names, atomic writes, typed reads of the privacy record, "finished", and a lock so that two
processes never train into one directory. A finished run is never overwritten without `force`;
an interrupted one resumes from its checkpoint, but only with the same resolved config.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import yaml
from pydantic import BaseModel

from dpmammo.config import read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path, write_json_atomic, write_text_atomic
from dpmammo.privacy.ledger import PrivacyRecord, read_privacy

M = TypeVar("M", bound=BaseModel)

CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT, EVAL = (
    "config.yaml", "metrics.json", "privacy.json", "model.safetensors", "log.txt", "checkpoint.pt", "eval")
RUN_FILES = (CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT)


def config_text(cfg: BaseModel) -> str:
    """The resolved config as config.yaml holds it (every default spelled out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


class RunDir:
    """The files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    privacy = property(lambda self: self.path / PRIVACY)
    weights = property(lambda self: self.path / WEIGHTS)
    log = property(lambda self: self.path / LOG)
    checkpoint = property(lambda self: self.path / CHECKPOINT)

    def eval_json(self, test_set: str) -> Path:
        return self.path / EVAL / f"{test_set.replace('/', '_')}.json"

    def eval_roc(self, test_set: str) -> Path:
        return self.path / EVAL / f"{test_set.replace('/', '_')}_roc.png"

    @property
    def is_finished(self) -> bool:
        return self.metrics.is_file()

    def is_evaluated(self, test_sets: list[str]) -> bool:
        return self.is_finished and all(self.eval_json(s).is_file() for s in test_sets)

    # --- typed reads ------------------------------------------------------------------------

    def require_finished(self, what: str = "run") -> None:
        if not self.is_finished:
            raise DpMammoError(f"{self.path} is not a finished {what} (no {METRICS})")

    def read_metrics(self) -> dict[str, Any]:
        self.require_finished()
        return json.loads(self.metrics.read_text())

    def read_privacy(self) -> PrivacyRecord:
        return read_privacy(self.privacy)

    def has_config(self, cfg: BaseModel) -> bool:
        return self.config.is_file() and self.config.read_text() == config_text(cfg)

    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise DpMammoError(f"{self.path} has no {CONFIG}: not a dpmammo run")
        return read_yaml(self.config)

    def read_config_as(self, parse: Callable[[dict[str, Any], str], M], kind: str, *,
                       is_other: Callable[[dict[str, Any]], bool], other_kind: str, hint: str) -> M:
        """The run's config.yaml, read by `parse(data, source)` (a `kind` run). A run of the other
        kind (`is_other(data)`) is named as such, instead of a line of unknown keys; `hint` says
        what to do instead."""
        data = self.read_config()
        try:
            return parse(data, str(self.config))
        except DpMammoError:
            if is_other(data):
                raise DpMammoError(f"{self.path} is not a {kind} run (its config.yaml is a {other_kind} config); "
                                   f"{hint}") from None
            raise

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """Every evaluation of the run, by set name (eval/*.json)."""
        found = {}
        for path in sorted((self.path / EVAL).glob("*.json")):
            metrics = json.loads(path.read_text())
            found[metrics["set"]] = metrics
        return found

    def read_eval(self, test_set: str) -> dict[str, Any]:
        path = self.eval_json(test_set)
        if not path.is_file():
            raise DpMammoError(f"{self.path} is not evaluated on {test_set} (no {path.relative_to(self.path)})")
        return json.loads(path.read_text())

    # --- writes -----------------------------------------------------------------------------

    def write_eval(self, test_set: str, metrics: dict[str, Any]) -> Path:
        self.eval_json(test_set).parent.mkdir(exist_ok=True)
        write_json_atomic(self.eval_json(test_set), metrics)
        return self.eval_json(test_set)

    def finish(self, metrics: dict[str, Any]) -> None:
        """Mark the run finished: metrics.json is written last (atomically), then the checkpoint goes."""
        write_json_atomic(self.metrics, metrics)
        self.checkpoint.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove dpmammo's own files from the directory (and its eval/), nothing else."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / EVAL, ignore_errors=True)

    def save_training_state(self, parts: dict, dp, gen: torch.Generator, state: dict) -> None:
        """checkpoint.pt: every part's state_dict (models, optimisers), the accountant's history and
        the DP stage's draw counts and released unit count, the seeded (public) generator and
        torch's RNG. Privacy state
        included: a resume never re-spends or forgets ε. No secret is in it: a DP stage's key exists
        only in memory, and a resumed stage draws a fresh one (dpmammo.privacy.secret)."""
        ckpt = {
            "state": state,
            "parts": {name: part.state_dict() for name, part in parts.items()},
            "accountant_history": list(dp.accountant.history) if dp else None,
            "dp_draws": dp.draws if dp else None,
            "rate_units": dp.sampler.rate_units if dp else None,
            "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(ckpt, tmp)

    def released_rate_units(self) -> float | None:
        """The noisy unit count an interrupted DP stage set its sample rate from (None: no
        checkpoint, or not DP): a resume reuses it instead of releasing the count again."""
        if not self.checkpoint.is_file():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=False).get("rate_units")

    def read_training_state(self) -> dict:
        """The loop state saved in checkpoint.pt (epoch, history, the files it trained on), nothing restored."""
        return torch.load(self.checkpoint, map_location="cpu", weights_only=False)["state"]

    def load_training_state(self, parts: dict, dp, gen: torch.Generator) -> dict:
        """Restore what save_training_state wrote into `parts`, `dp` and the generator; returns the loop state."""
        ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        for name, part in parts.items():
            part.load_state_dict(ckpt["parts"][name])
        if dp is not None:
            dp.accountant.history = [tuple(h) for h in ckpt["accountant_history"]]
            dp.restore_draws(ckpt["dp_draws"])
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        return ckpt["state"]

    @contextmanager
    def log_writer(self, opening: str) -> Iterator[Callable[[str], None]]:
        """`say(line)` appends to log.txt, flushed per line, the file closed however training ends."""
        with open(self.log, "a") as f:
            def say(line: str) -> None:
                f.write(line + "\n")
                f.flush()

            say(opening)
            yield say

    # --- a training process's hold on the directory -----------------------------------------

    @contextmanager
    def training(self, cfg: BaseModel, force: bool) -> Iterator[bool]:
        """Hold the directory for one training process; yields `resuming`.

        Refuses a finished run unless `force`, a checkpoint written under another config (that would
        mix two recipes in one run), and a directory another process is training into. If the run
        stops with a DpMammoError before anything resumable exists, it leaves nothing behind, so the
        corrected command is not refused as "an unfinished run with another config".
        """
        resolved = config_text(cfg)
        if self.path.exists() and not self.path.is_dir():
            raise DpMammoError(f"run directory {self.path} is a file")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.path):
            try:
                if self.is_finished:
                    if not force:
                        raise DpMammoError(f"{self.path} already holds a finished run; choose another --out or "
                                           "pass --force")
                    self.clear()
                elif self.config.is_file() and self.config.read_text() != resolved:
                    if not force:
                        raise DpMammoError(f"{self.path} holds an unfinished run with another config; "
                                           "choose another --out or pass --force to discard it")
                    self.clear()
                resuming = self.checkpoint.is_file()
                write_text_atomic(self.config, resolved)
                yield resuming
            except DpMammoError:
                if not self.checkpoint.is_file() and not self.is_finished:
                    self.clear()
                    if created and not any(self.path.iterdir()):
                        self.path.rmdir()
                raise


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock on the directory itself (flock on its descriptor): released by the kernel
    when the process dies, so a killed run never leaves a stale lock behind."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DpMammoError(f"another dpmammo process is training into {path}; wait for it or choose "
                               "another --out") from None
        yield
    finally:
        os.close(fd)
