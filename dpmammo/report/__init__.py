"""Study reports: results.md, the privacy-utility and ROC plots, and a self-contained report.html.

Entry point: `build_report(study_dir)` after `dpmammo.study.run_study`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpmammo.config import parse_config, read_yaml
from dpmammo.report import html as report_html
from dpmammo.report import plots
from dpmammo.report.audit import audit_section
from dpmammo.report.quality import quality_section
from dpmammo.report.tables import markdown
from dpmammo.files import write_text_atomic
from dpmammo.study.config import STUDY_FILE, StudyConfig
from dpmammo.study.results import SUMMARY_JSON, read_results

REPORT_HTML, RESULTS_MD = "report.html", "results.md"
PLOT_CURVE, PLOT_ROC = "privacy_utility.png", "roc.png"


def build_report(study_dir: str | Path) -> Path:
    """Write results.md, the plots and report.html for a study directory; return report.html."""
    study_dir = Path(study_dir)
    cfg = parse_config(StudyConfig, read_yaml(study_dir / STUDY_FILE), str(study_dir / STUDY_FILE))
    rows = read_results(study_dir)
    summary_path = study_dir / SUMMARY_JSON
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    write_text_atomic(study_dir / RESULTS_MD, markdown(cfg, rows))
    figs = {"privacy_utility": plots.privacy_utility(cfg, rows, study_dir / PLOT_CURVE),
            "roc": plots.roc_curves(cfg, rows, study_dir, study_dir / PLOT_ROC)}
    quality = quality_section(study_dir, report_html.embed_png)  # "" when the study scored no quality
    audit = audit_section(cfg, study_dir, report_html.embed_png)  # "" when the study ran no audit
    write_text_atomic(study_dir / REPORT_HTML,
                      report_html.render(cfg, rows, study_dir, figs, summary, quality + audit))
    return study_dir / REPORT_HTML


__all__ = ["build_report"]
