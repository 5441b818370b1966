"""The report's "promised ε vs measured ε lower bound" section: a plot and a table.

For each condition × target ε the study audited (dpmammo.study.audits), the ε its DP stage
promised per unit, the composed chain total, and the ε lower bound the audit's primary attack
proved at 95%, with its AUC and TPR at 1% FPR. Non-private conditions have no promise: they are
drawn at the right end of the plot, so their leakage is the contrast to the DP ones. A point
above the diagonal would be a broken promise.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpmammo.audit import AUDIT_JSON, AuditRecord, read_audit  # noqa: E402
from dpmammo.privacy.config import UNIT_WORDS  # noqa: E402
from dpmammo.privacy.ledger import describe  # noqa: E402
from dpmammo.study.audits import read_audits  # noqa: E402
from dpmammo.study.config import StudyConfig  # noqa: E402
from dpmammo.files import save_figure  # noqa: E402

PLOT_AUDIT = "audit_epsilon.png"


def _audited(study_dir: Path) -> list[tuple[object, Optional[AuditRecord]]]:
    audits = read_audits(study_dir)
    if audits is None:
        return []
    return [(a, read_audit(study_dir / a.folder / AUDIT_JSON) if a.status in ("done", "cached") else None)
            for a in audits.audits]


def promised_x(r: AuditRecord) -> Optional[float]:
    """Where an audited recipe sits on the promise axis: its chain total, else its DP stage's ε."""
    return r.promised.epsilon if r.promised.guarantee == "dp" else r.stage_epsilon


def promised_vs_measured_plot(cfg: StudyConfig, audited, path: Path) -> Optional[Path]:
    points = [(a, r) for a, r in audited if r is not None]
    if not points:
        return None
    finite = [promised_x(r) for _, r in points if promised_x(r) is not None]
    top = max(finite + [r.measured_epsilon for _, r in points] + [1.0])
    x_np = top * 2.0  # the non-private slot
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=100)
    for i, cond in enumerate(cfg.conditions):
        mine = [(a, r) for a, r in points if a.condition == cond]
        if not mine:
            continue
        # A point sits at the chain total ε; where the chain has no guarantee (e.g. the shipped
        # c-dcgan set behind synthetic→real) it is hollow, at the DP stage's ε that the audit tested.
        for solid in (True, False):
            sel = [r for _, r in mine if (r.promised.guarantee == "dp") == solid]
            if sel:
                xs = [promised_x(r) if promised_x(r) is not None else x_np for r in sel]
                ax.plot(xs, [r.measured_epsilon for r in sel], "o", color=f"C{i}", mfc=None if solid else "white",
                        label=cond if solid or len(sel) == len(mine) else None)
    ax.plot([0, top], [0, top], "--", color="grey", lw=0.8, label="measured = promised")
    ticks = sorted({round(e, 2) for e in finite})
    ax.set_xticks([*ticks, x_np], [*(f"{t:g}" for t in ticks), "non-\nprivate"])
    ax.set(xlim=(0, x_np * 1.1), ylim=(0, top * 1.1),
           xlabel=f"promised ε, chain total ({UNIT_WORDS[cfg.privacy.unit].split(' (')[0]}); "
                  "hollow: no chain guarantee, at the stage's ε",
           ylabel="measured ε lower bound (95%)", title="promised vs measured privacy leakage")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def audit_table(audited) -> str:
    head = ("condition", "target ε", "promised (chain total)", "DP stage ε", "audit", "threat model",
            "measured ε lower bound (95%)", "ε Gaussian-pair bound (95%, premise: Gaussian scores)",
            "ε estimate (GDP, not a bound)", "attack AUC [95% CI]", "TPR at 1% FPR",
            "status")
    rows = []
    for a, r in audited:
        if r is None:
            rows.append([a.condition, a.epsilon, *[""] * (len(head) - 3), a.status + (f": {a.error}" if a.error else "")])
            continue
        p = next(x for x in r.attacks if x.attack == r.primary)
        tpr = next(t for t in p.tpr_at_fpr if math.isclose(t.fpr, 0.01))
        method = f"{r.method} ({r.primary}" + (f", K={r.reference_models})" if r.reference_models else ")")
        rows.append([a.condition, a.epsilon, describe(r.promised),
                     "non-private" if r.stage_epsilon is None else f"{r.stage_epsilon:.2f}/{r.unit}", method,
                     p.threat_model, f"{r.measured_epsilon:.2f}/{r.unit}" + (
                         f" (Steinke {p.bound.epsilon:.2f}, f-DP {p.fdp_bound.epsilon:.2f})" if p.fdp_bound else ""),
                     "" if r.gaussian_epsilon is None else f"{r.gaussian_epsilon:.2f}/{r.unit} ({_gaussian_attack(r)})",
                     "" if r.estimated_epsilon is None else f"{r.estimated_epsilon:.2f}/{r.unit} ({r.estimate_attack})",
                     f"{p.auc.value:.3f} [{p.auc.ci_low:.3f}, {p.auc.ci_high:.3f}]", f"{tpr.tpr.value:.3f}", a.status])
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="audit"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _gaussian_attack(r: AuditRecord) -> str:
    """The attack whose scores the record's Gaussian-pair bound was fitted to."""
    return next(a.attack for a in r.attacks if a.gaussian_bound is not None)


def audit_section(cfg: StudyConfig, study_dir: Path, embed) -> str:
    """The HTML section (empty when the study ran no audit). `embed(path, alt)` inlines a PNG."""
    audited = _audited(Path(study_dir))
    if not audited:
        return ""
    plot = promised_vs_measured_plot(cfg, audited, Path(study_dir) / PLOT_AUDIT)
    return (f"<h2>Promised ε vs measured ε lower bound (membership-inference audit)</h2>"
            f"<p>Each audit trains its own target and reference models of the recipe on known halves of the private "
            f"pool ({html.escape(cfg.privacy.unit)}s) and reports the ε lower bound its primary attack proves with 95% "
            f"confidence (a gradient-canary audit instead trains the recipe once with canary units whose gradients "
            f"the adversary sees in every noisy update, takes the larger of Steinke et al.'s bound and the f-DP bound of "
            f"Mahloujifar et al., whose premise is a Gaussian trade-off curve, each at half the significance, and adds "
            f"the Gaussian-pair bound of Agrawal et al., whose premise is Gaussian canary scores, and a Gaussian-DP "
            f"estimate). A measured bound is a floor "
            f"on the real leakage, not an estimate of it; one above the promise would be a bug. An estimate is "
            f"neither: it may exceed a tight promise.</p>{embed(plot, 'promised vs measured ε')}{audit_table(audited)}")
