"""A run directory's life: new → training (checkpoint.pt) → finished (metrics.json written last).

A finished run is never overwritten without `force`; an interrupted one resumes from its
checkpoint, but only with the same resolved config.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch
import yaml
from pydantic import BaseModel

from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic

CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT = (
    "config.yaml", "metrics.json", "privacy.json", "model.safetensors", "log.txt", "checkpoint.pt")
RUN_FILES = (CONFIG, METRICS, PRIVACY, WEIGHTS, LOG, CHECKPOINT)


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / METRICS).is_file()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise DpMammoError(f"missing {path.name} in {path.parent}: not a finished dpmammo run")
    return json.loads(path.read_text())


def save_training_state(run_dir: Path, parts: dict, dp, gen: torch.Generator, secret: Optional[torch.Generator],
                        state: dict) -> None:
    """checkpoint.pt: every part's state_dict (models, optimisers), the accountant's history, the
    seeded generator, the secret DP generator and torch's RNG. Privacy state included: a resume
    never re-spends or forgets ε. The secret generator's state exists only here, and `finish`
    deletes this file."""
    ckpt = {
        "state": state,
        "parts": {name: part.state_dict() for name, part in parts.items()},
        "accountant_history": list(dp.accountant.history) if dp else None,
        "gen": gen.get_state(),
        "secret_gen": secret.get_state() if secret is not None else None,
        "torch_rng": torch.get_rng_state(),
    }
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(run_dir / CHECKPOINT)


def load_training_state(run_dir: Path, parts: dict, dp, gen: torch.Generator, secret: Optional[torch.Generator]) -> dict:
    """Restore what save_training_state wrote into `parts`, `dp` and the generators; returns the loop state."""
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    for name, part in parts.items():
        part.load_state_dict(ckpt["parts"][name])
    if dp is not None:
        dp.accountant.history = [tuple(h) for h in ckpt["accountant_history"]]
    gen.set_state(ckpt["gen"])
    if secret is not None:
        secret.set_state(ckpt["secret_gen"])
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt["state"]


def finish(run_dir: Path, metrics: dict) -> None:
    """Mark a run finished: metrics.json is written last (atomically), then the checkpoint goes."""
    write_json_atomic(run_dir / METRICS, metrics)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)


@contextmanager
def start(run_dir: str | Path, cfg: BaseModel, force: bool) -> Iterator[tuple[Path, bool]]:
    """Make `run_dir` ready for `cfg` for the set-up phase of a run; yields (path, resuming).

    Refuses a finished run unless `force`, and refuses to resume a checkpoint written under a
    different config (that would mix two recipes in one run). If the set-up refuses to start
    (a DpMammoError inside the block) a fresh run leaves nothing behind, so the corrected command
    is not taken for "an unfinished run with another config".
    """
    run_dir = Path(run_dir)
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    if run_dir.exists() and not run_dir.is_dir():
        raise DpMammoError(f"run directory {run_dir} is a file")
    if is_finished(run_dir):
        if not force:
            raise DpMammoError(f"{run_dir} already holds a finished run; choose another --out or pass --force")
        clear(run_dir)
    elif (run_dir / CONFIG).is_file() and (run_dir / CONFIG).read_text() != resolved:
        if not force:
            raise DpMammoError(f"{run_dir} holds an unfinished run with another config; "
                               "choose another --out or pass --force to discard it")
        clear(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = (run_dir / CHECKPOINT).is_file()
    (run_dir / CONFIG).write_text(resolved)
    try:
        yield run_dir, resuming
    except DpMammoError:
        if not resuming:
            clear(run_dir)
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def clear(run_dir: Path) -> None:
    """Remove dpmammo's own files from a run directory (and its eval/), nothing else."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "eval", ignore_errors=True)
