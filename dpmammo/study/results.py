"""Collect a study's runs into results.csv (one row per run × test set) and summary.json.

Both files are written to a temporary name and renamed, so a crash leaves the previous complete
file or none, never half of one. Metrics come from the run directories (eval/<set>.json,
metrics.json, privacy.json), so a resumed study gives the same table as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from dpmammo.study.recipes import Plan
from dpmammo.train import run_dir as rd

if TYPE_CHECKING:
    from dpmammo.study.config import StudyConfig
    from dpmammo.study.runner import Outcome

RESULTS_CSV, SUMMARY_JSON = "results.csv", "summary.json"
COLUMNS = ("condition", "run_id", "stage", "test_set", "status", "epsilon_target", "epsilon_spent", "delta",
           "guarantee_total", "epsilon_total", "seed", "n", "auroc", "auroc_ci_low", "auroc_ci_high", "auprc",
           "accuracy", "sensitivity", "specificity", "threshold", "wall_time_s", "error")
METRICS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_rows(condition: str, spec, run_dir: Path, test_sets: list[str], outcome: Optional["Outcome"]) -> list[dict]:
    """The rows of one run: its metrics per test set, or its status and error if it has none."""
    from dpmammo.study.runner import eval_path

    base = {"condition": condition, "run_id": spec.run_id, "stage": spec.stage, "seed": spec.seed,
            "epsilon_target": "inf" if math.isinf(spec.epsilon) else spec.epsilon}
    status = outcome.status if outcome is not None else "not run"
    if status not in ("done", "cached"):
        return [base | {"test_set": s, "status": status, "error": outcome.error if outcome else ""} for s in test_sets]
    metrics = rd.read_json(run_dir / rd.METRICS)
    privacy = rd.read_json(run_dir / rd.PRIVACY)
    total = privacy["total"]
    rows = []
    for s in test_sets:
        m = json.loads(eval_path(run_dir, s).read_text())
        t = m["at_val_threshold"]
        rows.append(base | {
            "test_set": s, "status": "ok", "epsilon_spent": privacy.get("epsilon"), "delta": privacy.get("delta"),
            "guarantee_total": total["guarantee"], "epsilon_total": total.get("epsilon"), "n": m["n"],
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
    write_atomic(study_dir / RESULTS_CSV, to_csv(rows))
    summary = {
        "study": cfg.name,
        "runs": {rid: {"status": o.status, "error": o.error, "epsilon": o.epsilon, "wall_s": round(o.wall_s, 1)}
                 for rid, o in outcomes.items()},
        "counts": {s: sum(o.status == s for o in outcomes.values()) for s in ("done", "cached", "failed", "skipped")},
    }
    write_atomic(study_dir / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False))
    return rows


def read_results(study_dir: str | Path) -> list[dict[str, Any]]:
    """results.csv back as dicts with numbers parsed (empty cells → None)."""
    with open(Path(study_dir) / RESULTS_CSV, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def aggregate(rows: list[dict], metric: str = "auroc") -> dict[tuple[str, float, str], dict]:
    """Mean ± population std (as in the reference table) over seeds per (condition, ε target, test set).

    Rows without a result (failed runs) are counted in `missing`, never averaged in as NaN.
    """
    groups: dict[tuple[str, float, str], list] = defaultdict(list)
    for r in rows:
        eps = math.inf if r["epsilon_target"] in ("inf", math.inf) else float(r["epsilon_target"])
        groups[(r["condition"], eps, r["test_set"])].append(r.get(metric) if r["status"] == "ok" else None)
    out = {}
    for key, vals in groups.items():
        ok = np.array([v for v in vals if v is not None], dtype=float)
        out[key] = {"mean": float(ok.mean()) if ok.size else None, "std": float(ok.std()) if ok.size else None,
                    "n": int(ok.size), "missing": len(vals) - int(ok.size)}
    return out
