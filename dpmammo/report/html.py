"""report.html: one self-contained file (images inlined as base64) with the study's tables,
plots, the privacy spend of every run, failures and caveats."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional

from dpmammo.privacy.budget import format_epsilon
from dpmammo.privacy.config import UNIT_WORDS
from dpmammo.report.reference import CITATION
from dpmammo.report.tables import (aim_gap, aim_head, aim_note, budget_split, gap_head, gap_note, html_tables,
                                    prior_note, published_gap)
from dpmammo.study.config import StudyConfig
from dpmammo.study.recipes import expand
from dpmammo.runs import RunDir

def caveats(cfg: StudyConfig) -> tuple[str, ...]:
    return budget_split(cfg) + prior_note(cfg) + (
        f"Unit of privacy of the DP stages: {UNIT_WORDS[cfg.privacy.unit]}.",
        "Every ε shown is the total of the run's chain (generator, pretraining, fine-tuning, weights it started "
        "from), composed by the ledger; \"target ε\" labels the grid only.",
        "A chain with a stage that saw private data without DP (e.g. the shipped c-dcgan set, whose GAN was "
        "trained on CBIS-DDSM without DP) has no guarantee, whatever its DP stage spent.",
        "DP noise and Poisson sampling come from ChaCha20 keyed with 256 bits of OS entropy, never from the recorded "
        "seed; the key is never written to disk. The number of private units is released only as a noisy count "
        "(accounted in each stage's ε), from which the sample rate q is set.",
        "Model selection uses the validation set (best validation AUROC by default); that use is not DP-accounted. "
        "No value of any preset was chosen on a test set.",
        "AUPRC and sensitivity/specificity are malignant-positive; the threshold is chosen on validation (Youden's J).",
    )


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;font-size:14px}
th{background:#eee}img{max-width:100%}code{background:#f4f4f4}.fail{color:#a00}"""


def embed_png(path: Optional[Path], alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p><em>{html.escape(alt)}: no data to plot.</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v, spec=".3g") -> str:
    return "" if v is None else (f"{v:{spec}}" if isinstance(v, float) else str(v))


def privacy_table(cfg: StudyConfig, study_dir: Path) -> str:
    """Every run of the study: its own stage's spend and the composed guarantee of its chain."""
    head = ("run", "stage", "stage guarantee", "unit", "stage ε", "δ", "σ", "q", "steps", "chain total")
    rows = []
    plan = expand(cfg, study_dir.resolve())
    for run_id in [*plan.upstream, *plan.runs]:
        run = RunDir(study_dir / run_id)
        if not run.privacy.is_file():
            rows.append([run_id, "", "not finished", *[""] * 8])
            continue
        rec = run.read_privacy()
        own = rec.own
        # A Gaussian release has no sample rate and is one release, not steps of DP-SGD.
        release = own.mechanism == "gaussian-release"
        rows.append([run_id, own.stage, own.guarantee + (f" ({own.reason})" if own.reason else ""), own.unit or "",
                     _fmt(own.epsilon, ".3f"), _fmt(own.delta, ".0e"),
                     _fmt(own.noise_multiplier, ".3f") + "".join(f"; {r.what} {r.noise_multiplier:g}" for r in own.releases),
                     _fmt(own.sample_rate, ".4f"), "one Gaussian release" if release else _fmt(own.steps),
                     rec.describe()])
    return html_table(head, rows, "privacy")


def release_section(cfg: StudyConfig, study_dir: Path) -> str:
    """Which of the study's files may leave the data owner: a study folder is a research record."""
    plan = expand(cfg, study_dir.resolve())
    releasable = []
    for run_id in plan.runs:
        run = RunDir(study_dir / run_id)
        if run.privacy.is_file() and run.read_privacy().total.guarantee in ("dp", "public"):
            releasable.append(run_id)
    items = "".join(f"<li><code>dpmammo release {html.escape(str(study_dir / r))} --out DIR</code></li>"
                    for r in releasable) or "<li>none: no finished run of this study has a guarantee</li>"
    return f"""<p>This folder is a research record, not a release. Each run with a DP guarantee can be shared
on its own with <code>dpmammo release</code>, which packages its weights, ledger, privacy statement and model card
(and nothing from its log or metrics). Releasing several runs trained on the same patients spends all of their
budgets: the ε of the runs compose (they add up at worst). Not releasable: every other file here (logs, metrics,
results computed without DP on the validation and test sets), runs without a guarantee, the non-private judge and
audit models (<code>quality/</code>, <code>audit/</code>), and the feature caches of private images in the user
cache (<code>~/.cache/dpmammo</code>). This report draws no private pixels: sample grids show only sets whose
pixels carry a guarantee.</p><p>Runs that can be released one at a time ({len(releasable)}):</p><ul>{items}</ul>"""


def html_table(head, rows, table_id: str) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def gap_section(cfg: StudyConfig, rows: list[dict]) -> str:
    """Our guaranteed cell chosen on validation against the best published one at each ε (with `compare_with`)."""
    gap = published_gap(cfg, rows)
    if not gap:
        return ""
    return (f"<h2>Against the published study</h2><p>{html.escape(CITATION[cfg.compare_with])}. "
            f"{html.escape(gap_note(cfg))}</p>" + html_table(gap_head(cfg), gap, "published-gap"))


def aim_section(cfg: StudyConfig, rows: list[dict]) -> str:
    """Our guaranteed cell chosen on validation against each of the study's aims (`targets`)."""
    gap = aim_gap(cfg, rows)
    if not gap:
        return ""
    return (f"<h2>Against the study's aims</h2><p>{html.escape(aim_note(cfg))}</p>"
            + html_table(aim_head(cfg), gap, "aim-gap"))


def failures(summary: dict) -> str:
    bad = {rid: r for rid, r in summary.get("runs", {}).items() if r["status"] in ("failed", "skipped")}
    if not bad:
        return "<p>All runs finished.</p>"
    items = "".join(f'<li class="fail"><code>{html.escape(rid)}</code>: {html.escape(r["status"])}: '
                    f'{html.escape(r["error"])}</li>' for rid, r in bad.items())
    return f"<ul>{items}</ul>"


def page(title: str, body: str) -> str:
    """A self-contained HTML page (the style inline) around `body`."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def render(cfg: StudyConfig, rows: list[dict], study_dir: Path, plots: dict[str, Optional[Path]],
           summary: dict, extra_sections: str = "") -> str:
    eps = ", ".join(format_epsilon(e) for e in cfg.epsilons)
    ref = (f"<p>(ref …) cells: published AUROC, {html.escape(CITATION[cfg.compare_with])}.</p>"
           if cfg.same_setup_as_published else "")
    caveat_items = "".join(f"<li>{html.escape(c)}</li>" for c in caveats(cfg))
    return page(f"dpmammo study {cfg.name}", f"""<h1>Privacy-utility study <code>{html.escape(cfg.name)}</code></h1>
<p>Conditions: {html.escape(', '.join(cfg.conditions))}. ε: {eps}. Seeds: {', '.join(map(str, cfg.seeds))}.
Models: {html.escape(', '.join(cfg.model_names))}. Test sets: {html.escape(', '.join(cfg.test_sets))}.</p>
<h2>AUROC, mean ± std over seeds (one seed: 95% bootstrap CI), with each cell's total guarantee</h2>{ref}
{html_tables(cfg, rows)}
{gap_section(cfg, rows)}
{aim_section(cfg, rows)}
<h2>Privacy-utility curve</h2>{embed_png(plots.get('privacy_utility'), 'privacy-utility curve')}
<h2>ROC curves</h2>{embed_png(plots.get('roc'), 'ROC curves')}
<h2>Privacy spend of every run</h2>{privacy_table(cfg, study_dir)}
<h2>Run status</h2>{failures(summary)}
{extra_sections}
<h2>What may be released</h2>{release_section(cfg, study_dir)}
<h2>Caveats</h2><ul>{caveat_items}</ul>
<p>Per-run metrics (AUPRC, accuracy, sensitivity, specificity, CI, wall time): <code>results.csv</code>.</p>
""")
