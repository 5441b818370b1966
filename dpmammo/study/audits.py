"""Membership-inference audits of a study: one per condition × target ε (first seed), after the runs.

Each audit trains its own target and reference models of the condition's recipe on known member
splits (dpmammo.audit) under `<study>/audit/<run id>/`; the study's own runs are not scored,
since no one knows which half of the pool they did not see. A condition that trains on no private
patch (synthetic only) has nothing to audit. audits.json records every audit's status; like runs,
a failed audit is recorded and the others go on, and a finished one is never recomputed.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict
from rich.console import Console

from dpmammo.audit import AUDIT_JSON, audit_recipe
from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic
from dpmammo.privacy.budget import format_epsilon
from dpmammo.study.config import StudyConfig
from dpmammo.study.recipes import Plan
from dpmammo.runs import RunDir

AUDITS_JSON, AUDIT_DIR = "audits.json", "audit"


class StudyAudit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: str
    epsilon: str  # the target ε label: 1, 6, ∞
    run_id: str  # the study run whose recipe is audited
    folder: str  # relative to the study directory
    status: Literal["done", "cached", "failed", "skipped", "no private data"]
    error: str = ""
    wall_s: float = 0.0


class StudyAudits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audits: list[StudyAudit]


def audit_folder(run_id: str) -> str:
    return f"{AUDIT_DIR}/{run_id}"


def run_audits(cfg: StudyConfig, plan: Plan, study_dir: Path, *, progress: bool = False,
               console: Optional[Console] = None) -> StudyAudits:
    """Audit every (condition, ε) of the first seed; write audits.json; return it."""
    import torch

    seed, records = cfg.seeds[0], []
    # Non-private conditions are split by the study's unit too, so every row measures the same unit.
    settings = cfg.audit if cfg.audit.unit is not None else cfg.audit.model_copy(update={"unit": cfg.privacy.unit})
    for key in plan.results:
        spec = plan.runs[key.run_id]
        if spec.seed != seed:
            continue
        entry = dict(condition=key.condition, epsilon=format_epsilon(spec.epsilon), run_id=key.run_id,
                     folder=audit_folder(key.run_id))
        folder, t0 = study_dir / entry["folder"], time.time()
        if cfg.train_set not in spec.config.data.train:
            records.append(StudyAudit(**entry, status="no private data"))
        elif settings.method == "gradient-canary" and spec.config.privacy is None:
            records.append(StudyAudit(**entry, status="skipped", error="white-box gradient canaries audit a DP "
                                                                       "mechanism; this recipe has none"))
        elif (folder / AUDIT_JSON).is_file():
            records.append(StudyAudit(**entry, status="cached"))
        elif spec.parent is not None and not RunDir(study_dir / spec.parent).is_finished:
            records.append(StudyAudit(**entry, status="skipped", error=f"parent run {spec.parent} did not finish"))
        else:
            cfg_run = spec.config
            if spec.parent is not None:
                cfg_run = cfg_run.model_copy(update={"init_from": (study_dir / spec.parent).resolve()})
            threads = torch.get_num_threads()
            torch.set_num_threads(cfg.resources.num_cpus)
            try:
                audit_recipe(cfg_run, folder, settings, progress="bar" if progress else "off")
                records.append(StudyAudit(**entry, status="done", wall_s=round(time.time() - t0, 1)))
            except Exception as e:  # noqa: BLE001 — one audit's failure must not stop the others
                msg = str(e).splitlines()[0] if str(e) else ""
                if not isinstance(e, DpMammoError):
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    msg += f" (at {Path(where.filename).name}:{where.lineno})"
                records.append(StudyAudit(**entry, status="failed", error=f"{type(e).__name__}: {msg}"[:500],
                                          wall_s=round(time.time() - t0, 1)))
            finally:
                torch.set_num_threads(threads)
        if console is not None and progress:
            console.print(f"audit {key.run_id}: {records[-1].status}")
    result = StudyAudits(audits=records)
    write_json_atomic(study_dir / AUDITS_JSON, result.model_dump(mode="json"))
    return result


def read_audits(study_dir: Path) -> Optional[StudyAudits]:
    path = Path(study_dir) / AUDITS_JSON
    if not path.is_file():
        return None
    return StudyAudits.model_validate_json(path.read_text())
