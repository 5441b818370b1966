"""A run directory, and the one place that knows its files.

Life of a run: new → training (config.yaml, log.txt, checkpoint.pt) → finished (model.safetensors,
privacy.json, then metrics.json, written last: it *is* the finished mark; the checkpoint is
deleted then) → evaluated (eval/<dataset>_<split>.json + ROC PNG).

Every package (train, gan, evaluate, study, report, cli) reaches a run's files through `RunDir`:
names, atomic writes, typed reads of the privacy record, "finished", and a lock so that two
processes never train into one directory. A finished run is never overwritten without `force`;
an interrupted one resumes from its checkpoint, but only with the same resolved config. A run
directory carries a marker (`.dpmammo-run`): run-file names in a folder without it are the user's,
and no command replaces them, even with `force`.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import yaml
from pydantic import BaseModel

from dpmammo import __version__
from dpmammo.config import read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path, check_writable, user_os_errors, write_json_atomic, write_text_atomic
from dpmammo.privacy.ledger import PrivacyRecord, read_privacy

M = TypeVar("M", bound=BaseModel)

CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT, EVAL, SAMPLES = (
    "config.yaml", "metrics.json", "privacy.json", "model.safetensors", "log.txt", "checkpoint.pt", "eval", "samples")
RUN_FILES = (CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT)
OWN_NAMES = (*RUN_FILES, EVAL, SAMPLES)  # everything a run writes: the names --force may replace
MARKER = ".dpmammo-run"  # written first into a run directory: dpmammo replaces only what holds it
REPLACED = ".dpmammo-replaced"  # a run replaced with --force waits here until the new run can resume


def run_kind(config: dict[str, Any]) -> str:
    """What made a run, from its config.yaml: `generator` (every generator config names its
    generator), `pretrain` (a pretrain config names its objective) or `classifier`. Used to word
    errors (e.g. evaluating a generator run) without importing the stages that write them."""
    if "generator" in config:
        return "generator"
    return "pretrain" if "objective" in config else "classifier"


def config_text(cfg: BaseModel) -> str:
    """The resolved config as config.yaml holds it (every default spelled out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_input(config: str | Path, out: str | Path) -> list[tuple[str, Path]]:
    """The config file as an input that --out must not overlap, except a run's own config.yaml
    given back to resume it (read whole before anything is written; dpmammo wrote it)."""
    run = RunDir(Path(out).expanduser())
    if Path(config).expanduser().resolve() == run.config.resolve() and run.path.is_dir() and run.is_ours():
        return []
    return [("the config file", Path(config))]


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
    marker = property(lambda self: self.path / MARKER)

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

    def read_val_auroc(self, metrics: dict | None = None) -> float:
        """The validation AUROC of a finished classifier run's released model (`val.auroc` in
        metrics.json, written by dpmammo.train.loop; `metrics`: that file as already read); other
        runs (generators, pretraining) have none."""
        val = (metrics if metrics is not None else self.read_metrics()).get("val", {})
        if "auroc" not in val:
            raise DpMammoError(f"{self.path} has no validation AUROC in {METRICS}: it is a "
                               f"{run_kind(self.read_config())} run, not a classifier run")
        return float(val["auroc"])

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

    def write_eval(self, test_set: str, metrics: dict[str, Any], roc: Callable[[Path], None]) -> Path:
        """The ROC figure (`roc(path)` draws it to a temporary file) and then the metrics, each
        atomically: the JSON marks the set evaluated, so it is written last."""
        with user_os_errors(self.path / EVAL):
            self.eval_json(test_set).parent.mkdir(exist_ok=True)
        with atomic_path(self.eval_roc(test_set)) as tmp:
            roc(tmp)
        write_json_atomic(self.eval_json(test_set), metrics)
        return self.eval_json(test_set)

    def finish(self, metrics: dict[str, Any]) -> None:
        """Mark the run finished: metrics.json is written last (atomically), then the checkpoint goes."""
        write_json_atomic(self.metrics, metrics)
        self.checkpoint.unlink(missing_ok=True)

    def save_training_state(self, parts: dict, dp, gen: torch.Generator, state: dict) -> None:
        """checkpoint.pt: every part's state_dict (models, optimisers), the accountant's history and
        the DP stage's draw counts and released unit count, the seeded (public) generator and
        torch's RNG. Privacy state included: a resume never re-spends or forgets ε. No secret is in
        it: a DP stage's key exists only in memory, and a resumed stage draws a fresh one
        (dpmammo.privacy.secret)."""
        privacy = dp.checkpoint_state() if dp is not None else None
        ckpt = {
            "state": state,
            "parts": {name: part.state_dict() for name, part in parts.items()},
            "accountant_history": privacy.accountant_history if privacy is not None else None,
            "dp_draws": privacy.draws if privacy is not None else None,
            "rate_units": privacy.rate_units if privacy is not None else None,
            "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        # Serialised in memory, then written by Python: a full disk is an OSError that atomic_path
        # turns into one line (torch.save's own writer reports it as a RuntimeError).
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        with atomic_path(self.checkpoint) as tmp:
            tmp.write_bytes(buffer.getbuffer())

    def _read_checkpoint(self) -> dict:
        try:
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            ckpt["parts"], ckpt["state"]
        except Exception as e:  # noqa: BLE001 — truncated or corrupt: torch raises several kinds
            raise DpMammoError(f"cannot resume from {self.checkpoint}: it is truncated or corrupt ({type(e).__name__}); "
                               "delete it to start the run over") from None
        return ckpt

    def released_rate_units(self) -> float | None:
        """The noisy unit count an interrupted DP stage set its sample rate from (None: no
        checkpoint, or not DP): a resume reuses it instead of releasing the count again."""
        if not self.checkpoint.is_file():
            return None
        return self._read_checkpoint().get("rate_units")

    def read_training_state(self) -> dict:
        """The loop state saved in checkpoint.pt (epoch, history, the files it trained on), nothing restored."""
        return self._read_checkpoint()["state"]

    def load_training_state(self, parts: dict, dp, gen: torch.Generator) -> dict:
        """Restore what save_training_state wrote into `parts`, `dp` and the generator; returns the loop state."""
        ckpt = self._read_checkpoint()
        for name, part in parts.items():
            part.load_state_dict(ckpt["parts"][name])
        if dp is not None:
            dp.restore_checkpoint_state(accountant_history=ckpt["accountant_history"], draws=ckpt["dp_draws"])
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
        mix two recipes in one run), a directory another process is training into, and run-file
        names (config.yaml, eval/, ...) that dpmammo did not write there (no marker), even with
        `force`. A run replaced with `force` is moved aside, not deleted, until the new run has made
        something resumable. If this process stops before writing a checkpoint or finishing (a
        refused start, an error, Ctrl-C), the directory is put back exactly as it was: what this
        start wrote is removed, log.txt cut back, a replaced run restored, a new directory removed.
        """
        resolved = config_text(cfg)
        path = check_writable(self.path)
        new_dirs = [p for p in (path, *path.parents) if not p.exists()]
        with user_os_errors(self.path):
            path.mkdir(parents=True, exist_ok=True)
        try:
            with _exclusive(path):
                self._recover_replaced()
                if not self.is_ours():
                    foreign = [n for n in OWN_NAMES if (path / n).exists()]
                    if foreign:
                        raise DpMammoError(f"{self.path} holds {', '.join(foreign)} that dpmammo did not write there "
                                           f"(no {MARKER}); dpmammo replaces only its own runs, even with --force: "
                                           "choose another --out")
                replace = False
                if self.is_finished:
                    if not force:
                        raise DpMammoError(f"{self.path} already holds a finished run; choose another --out or "
                                           "pass --force")
                    replace = True
                elif self.config.is_file() and self.config.read_text() != resolved:
                    if not force:
                        raise DpMammoError(f"{self.path} holds an unfinished run with another config; "
                                           "choose another --out or pass --force to discard it")
                    replace = True
                with _Undo(self, replace) as undo:
                    with user_os_errors(self.path):
                        if not self.marker.is_file():
                            write_json_atomic(self.marker, {"dpmammo": __version__, "kind": "run"})
                        write_text_atomic(self.config, resolved)
                    resuming = self.checkpoint.is_file()
                    yield resuming
                    undo.keep()
        finally:
            for p in new_dirs:  # a refused start leaves no directory it made
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()

    def is_ours(self) -> bool:
        """Whether dpmammo wrote this run directory: its marker, or (runs made before the marker)
        a log.txt opened by dpmammo's training."""
        if self.marker.is_file():
            return True
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                first = f.readline()
        except OSError:
            return False
        return bool(_LOG_OPENING.match(first))

    def _recover_replaced(self) -> None:
        """A run replaced with --force by a process killed before the new run made a checkpoint:
        put it back; once the new run has one (or finished), the old one is gone for good."""
        aside = self.path / REPLACED
        if not aside.is_dir():
            return
        if self.checkpoint.is_file() or self.is_finished:
            shutil.rmtree(aside)
            return
        for name in OWN_NAMES:
            _remove(self.path / name)
        for p in aside.iterdir():
            p.rename(self.path / p.name)
        aside.rmdir()

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


_LOG_OPENING = re.compile(r"^(start|resume) .* dpmammo \S+")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _stat(p: Path) -> Optional[tuple[int, int, int]]:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class _Undo:
    """What one training start changed in a run directory, to put back if it ends before anything
    resumable exists: the run-file names present before (and log.txt's length), and a run being
    replaced (moved aside into REPLACED until the new run writes its first checkpoint)."""

    def __init__(self, run: RunDir, replace: bool):
        self.run, self.replace, self.kept = run, replace, False
        self.before = {n: _stat(run.path / n) for n in (*OWN_NAMES, MARKER)}
        self.config_text = run.config.read_bytes() if run.config.is_file() else None

    def __enter__(self) -> "_Undo":
        if self.replace:
            aside = self.run.path / REPLACED
            aside.mkdir()
            for name in OWN_NAMES:
                if (self.run.path / name).exists():
                    (self.run.path / name).rename(aside / name)
        return self

    def keep(self) -> None:
        self.kept = True

    def progressed(self) -> bool:
        """A checkpoint written by this process, or a finished run."""
        ckpt = _stat(self.run.checkpoint)
        return self.run.is_finished or (ckpt is not None and ckpt != self.before[CHECKPOINT])

    def __exit__(self, kind, value, tb) -> None:
        aside = self.run.path / REPLACED
        if self.kept or self.progressed():
            shutil.rmtree(aside, ignore_errors=True)
            return
        path = self.run.path
        if self.replace:
            for name in OWN_NAMES:
                _remove(path / name)
            for p in aside.iterdir():
                p.rename(path / p.name)
            aside.rmdir()
        else:
            for name in (*OWN_NAMES, MARKER):
                if self.before[name] is None:
                    _remove(path / name)
            if self.before[LOG] is not None and self.run.log.is_file():
                os.truncate(self.run.log, self.before[LOG][2])
            if self.config_text is not None and self.run.config.read_bytes() != self.config_text:
                self.run.config.write_bytes(self.config_text)
        if self.before[MARKER] is None:
            self.run.marker.unlink(missing_ok=True)
