"""Collect a study's runs into results.csv (one row per run × test set) and summary.json.

Each row carries its run's validation AUROC (`val_auroc`, the same for every test set) beside the
test metrics: the reports choose conditions on it, never on a test set. Both files are written to
a temporary name and renamed, so a crash leaves the previous complete file or none, never half of
one. Metrics come from the run directories (eval/<set>.json, metrics.json, privacy.json), so a
resumed study gives the same table as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic, write_text_atomic
from dpmammo.privacy.budget import is_private, parse_epsilon
from dpmammo.study.config import STUDY_FILE
from dpmammo.study.recipes import Plan
from dpmammo.runs import RunDir

if TYPE_CHECKING:
    from dpmammo.study.config import StudyConfig
    from dpmammo.study.outcome import Outcome

RESULTS_CSV, SUMMARY_JSON = "results.csv", "summary.json"
# ε columns: the recipe's target (a label of the grid) and the run's chain total, the guarantee
# that holds for the released model (or "none"), with its δ and unit.
COLUMNS = ("condition", "run_id", "stage", "test_set", "status", "epsilon_target", "guarantee_total",
           "epsilon_total", "delta_total", "unit", "seed", "val_auroc", "n", "auroc", "auroc_ci_low",
           "auroc_ci_high", "auprc", "accuracy", "sensitivity", "specificity", "threshold", "wall_time_s", "error")
METRICS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity")


def run_rows(condition: str, spec, run_dir: Path, test_sets: list[str], outcome: Optional["Outcome"]) -> list[dict]:
    """The rows of one run: its metrics per test set, or its status and error if it has none."""
    base = {"condition": condition, "run_id": spec.run_id, "stage": spec.stage, "seed": spec.seed,
            "epsilon_target": "inf" if not is_private(spec.epsilon) else spec.epsilon}
    status = outcome.status if outcome is not None else "not run"
    if status not in ("done", "cached"):
        return [base | {"test_set": s, "status": status, "error": outcome.error if outcome else ""} for s in test_sets]
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    val_auroc = run.read_val_auroc(metrics)
    total = run.read_privacy().total
    rows = []
    for s in test_sets:
        m = run.read_eval(s)
        t = m["at_val_threshold"]
        rows.append(base | {
            "test_set": s, "status": "ok", "guarantee_total": total.guarantee, "epsilon_total": total.epsilon,
            "delta_total": total.delta, "unit": total.unit, "val_auroc": val_auroc, "n": m["n"],
            "auroc": m["auroc"], "auroc_ci_low": m["auroc_ci95"][0], "auroc_ci_high": m["auroc_ci95"][1],
            "auprc": m["auprc"], "accuracy": t["accuracy"], "sensitivity": t["sensitivity"],
            "specificity": t["specificity"], "threshold": t["threshold"],
            "wall_time_s": round(metrics["wall_time_s"], 1), "error": "",
        })
    return rows


def collect(cfg: "StudyConfig", plan: Plan, study_dir: Path, outcomes: dict[str, "Outcome"]) -> list[dict]:
    rows = []
    for key in plan.results:
        spec = plan.runs[key.run_id]
        rows += run_rows(key.condition, spec, study_dir / key.run_id, cfg.test_sets, outcomes.get(key.run_id))
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in COLUMNS})
    return buf.getvalue()


def write_results(cfg: "StudyConfig", plan: Plan, study_dir: Path, outcomes: dict[str, "Outcome"]) -> list[dict]:
    """results.csv and summary.json (every run's status and error), both atomically."""
    rows = collect(cfg, plan, study_dir, outcomes)
    write_text_atomic(study_dir / RESULTS_CSV, to_csv(rows))
    summary = {
        "study": cfg.name,
        "runs": {rid: {"status": o.status, "error": o.error, "privacy_total": o.privacy, "wall_s": round(o.wall_s, 1)}
                 for rid, o in outcomes.items()},
        "counts": {s: sum(o.status == s for o in outcomes.values()) for s in ("done", "cached", "failed", "skipped")},
    }
    write_json_atomic(study_dir / SUMMARY_JSON, summary)
    return rows


def read_results(study_dir: str | Path) -> list[dict[str, Any]]:
    """results.csv back as dicts with numbers parsed (empty cells → None). A file collected by an
    older dpmammo (a column missing, e.g. `val_auroc`) is refused with the command that collects it
    again, rather than read with the column left empty."""
    path = Path(study_dir) / RESULTS_CSV
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DpMammoError(f"{path} was collected by an older dpmammo (no {', '.join(missing)} column; the reports "
                               f"choose conditions on the validation AUROC): collect it again: {rerun_hint(study_dir)}")
        return [{k: _num(v) for k, v in r.items()} for r in reader]


def _num(v: str):
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def total_label(rows: list[dict]) -> str:
    """The guarantee of a group of runs (seeds of one cell), conservatively: `ε≤5.99/patient`
    (the largest total over the seeds), `no guarantee` if any run has none, `public` if none
    touched private data."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return ""
    if any(r["guarantee_total"] == "none" for r in ok):
        return "no guarantee"
    dp = [r for r in ok if r["guarantee_total"] == "dp"]
    if not dp:
        return "public"
    units = {r["unit"] for r in dp}
    unit = "patient" if units == {"patient"} else "patch"
    return f"ε≤{max(float(r['epsilon_total']) for r in dp):.2f}/{unit}"


def total_epsilon(rows: list[dict]) -> Optional[float]:
    """The largest chain-total ε of a group of runs, or None if any lacks a DP guarantee."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or any(r["guarantee_total"] != "dp" for r in ok):
        return None
    return max(float(r["epsilon_total"]) for r in ok)


def aggregate(rows: list[dict], metric: str = "auroc") -> dict[tuple[str, float, str], dict]:
    """Per (condition, ε target, test set): mean ± population std over seeds (as in the reference
    table), the 95% bootstrap CI of a single seed, the chain guarantee of the cell's runs, and
    `val_mean`, the mean validation AUROC of the same runs (None if any of them lacks one).

    Rows without a result (failed runs) are counted in `missing`, never averaged in as NaN.
    """
    groups: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for r in rows:
        eps = parse_epsilon(r["epsilon_target"])
        groups[(r["condition"], eps, r["test_set"])].append(r)
    out = {}
    for key, group in groups.items():
        ok_rows = [r for r in group if r["status"] == "ok" and r.get(metric) is not None]
        ok = np.array([float(r[metric]) for r in ok_rows], dtype=float)
        ci = None
        if len(ok_rows) == 1 and metric == "auroc" and ok_rows[0].get("auroc_ci_low") is not None:
            ci = (float(ok_rows[0]["auroc_ci_low"]), float(ok_rows[0]["auroc_ci_high"]))
        out[key] = {"mean": float(ok.mean()) if ok.size else None, "std": float(ok.std()) if ok.size else None,
                    "n": int(ok.size), "missing": len(group) - int(ok.size), "ci95": ci, "val_mean": val_mean(ok_rows),
                    "total": total_label(group), "total_epsilon": total_epsilon(group)}
    return out


def val_mean(rows: list[dict]) -> Optional[float]:
    """The mean validation AUROC of runs (rows of one cell), or None if there are none or any lacks one."""
    vals = [r.get("val_auroc") for r in rows]
    if not vals or any(v is None for v in vals):
        return None
    return float(np.mean([float(v) for v in vals]))


def rerun_hint(study_dir: str | Path) -> str:
    """How to finish a study folder, or collect its results.csv again: `dpmammo study` into it with
    the config it was made with. Its own study.yaml cannot be given (an --out never holds an input of
    its command); a copy outside it records the same config."""
    d = Path(study_dir)
    return (f"run `dpmammo study` into it again with the config it was made with, e.g. a copy of its {STUDY_FILE}: "
            f"`cp {d / STUDY_FILE} study-copy.yaml && dpmammo study study-copy.yaml --out {d}` (finished runs are "
            "reused, not retrained, and results.csv is collected again from the run directories)")
