"""The study tables: AUROC per condition × target ε (mean ± std over seeds, or one seed's 95%
bootstrap CI), each cell with the guarantee its runs actually have (the chain total), one table
per test set; and the gap to the published study and to the study's own aims (`targets`), our condition at
each ε chosen on validation (`chosen_on_validation`, shared with dpmammo.report.compare) and reported
with its test AUROC."""

from __future__ import annotations

import html
import math
from typing import Callable, Iterable, Optional, TypeVar

from dpmammo.errors import DpMammoError
from dpmammo.privacy.config import UNIT_WORDS
from dpmammo.report.reference import CITATION, NO_GUARANTEE, best_published, reference_auroc
from dpmammo.privacy.budget import format_epsilon
from dpmammo.study.config import StudyConfig
from dpmammo.study.results import aggregate

T = TypeVar("T")


def budget_split(cfg: StudyConfig) -> tuple[str, ...]:
    """The sentence on how a DP generator shares each study ε (none without one)."""
    gen = cfg.generator
    if gen is None or not gen.is_private:
        return ()
    s = gen.generator_share
    return (f"The synthetic sets come from a DP generator trained by the study at {s:g}·ε for each study ε; "
            "every DP classifier stage that uses its samples (directly or through pretrained weights) is "
            "calibrated to what the generator left, so that the composed total of such a condition is the "
            "study ε (its column). At ε = ∞ the generator is non-private.",)


def prior_note(cfg: StudyConfig) -> tuple[str, ...]:
    """The sentence on what a procedural prior costs (none without `prior:`)."""
    if cfg.prior is None:
        return ()
    notes = ("prior→real starts from a backbone pretrained on procedural images (made by public random processes "
             "from a seed; run prior/pretrain/seed<s>): that pretraining touches no private data, so it is a public "
             f"stage (ε = 0 for it) and the chain total of the DP fine-tune is the fine-tune's own ε per "
             f"{cfg.privacy.unit}.",)
    if "prior→probe→real" in cfg.conditions:
        notes += (f"prior→probe→real trains a DP linear probe on the frozen prior at {cfg.prior.probe_share:g}·ε, then "
                  "fine-tunes the whole model with DP, its noise calibrated so that the composition of the two "
                  f"stages is the column's ε per {cfg.privacy.unit}.",)
    return notes


def column_notes(cfg: StudyConfig) -> list[str]:
    """What the columns and the bracketed guarantees of the AUROC tables mean."""
    split = budget_split(cfg)
    columns = ("Columns: the study ε, shared between the DP generator and the DP stages as said below."
               if split else "Columns: the DP stage's target ε.")
    synthetic = ("`synthetic` trains on a DP generator's samples: it is shown at the study ε whose share the "
                 "generator spent." if split else
                 "`synthetic` touches no private patch in training and is shown under non-private.")
    return [f"{columns} In brackets after each cell: the guarantee the released model actually has, the chain "
            "total over every stage behind it (generator, pretraining, fine-tuning), or `no guarantee` when any "
            f"stage (e.g. a generator trained without DP) has none. {synthetic}", *split, *prior_note(cfg)]


def eps_columns(cfg: StudyConfig) -> list[float]:
    """The study's ε values, finite ascending then ∞ (the reference table's order); ∞ is always
    a column, because ε-independent conditions (synthetic only) are reported there."""
    finite = sorted(e for e in cfg.epsilons if not math.isinf(e))
    return finite + [math.inf]


def eps_header(eps: float) -> str:
    return "non-private" if math.isinf(eps) else f"target ε={format_epsilon(eps)}"


def cell(stats: Optional[dict], ref: Optional[float]) -> str:
    if stats is None:
        ours = ""
    elif stats["mean"] is None:
        ours = f"failed ({stats['missing']})"
    else:
        if stats["ci95"] is not None:  # one seed: its bootstrap CI says more than a std of 0
            lo, hi = stats["ci95"]
            ours = f"{stats['mean']:.3f} [{lo:.3f}, {hi:.3f}]"
        else:
            ours = f"{stats['mean']:.3f} ± {stats['std']:.3f}"
        if stats["missing"]:
            ours += f" ({stats['missing']} failed)"
        ours += f" ({stats['total']})"
    if ref is not None:
        ours = f"{ours} (ref {ref:.3f})" if ours else f"(ref {ref:.3f})"
    return ours


def grid(cfg: StudyConfig, rows: list[dict], test_set: str) -> list[list[str]]:
    """Rows: conditions; columns: target ε; cells: our AUROC, the chain guarantee and, for the
    paper setup, the published AUROC."""
    agg = aggregate(rows, "auroc")
    out = []
    for cond in cfg.conditions:
        line = [cond]
        for eps in eps_columns(cfg):
            ref = reference_auroc(cfg.compare_with, cond, eps, test_set) if cfg.same_setup_as_published else None
            line.append(cell(agg.get((cond, eps, test_set)), ref))
        out.append(line)
    return out


def guaranteed_within(stats: dict, eps: float) -> bool:
    """Whether a cell of `aggregate` counts as guaranteed at ε: every run has a DP chain total of
    at most ε (a relative 1e-6 for the accountant's rounding). A cell with any run without a
    guarantee never counts."""
    return stats["total_epsilon"] is not None and stats["total_epsilon"] <= eps * (1 + 1e-6)


def chosen_on_validation(candidates: list[T], stats: Callable[[T], dict]) -> Optional[T]:
    """Of `candidates` (cells already admitted, in a fixed order), the one whose runs have the
    highest mean validation AUROC (`stats(c)["val_mean"]`, from `aggregate`); the first of equals;
    None if there are none. The reports then show its test AUROC: a choice made on the test set
    would make that number optimistic (no tuning on test sets)."""
    if any(stats(c)["val_mean"] is None for c in candidates):
        raise DpMammoError("a cell to choose from has no validation AUROC (rows without `val_auroc`, from a "
                           "results.csv of an older dpmammo): collect it again by running `dpmammo study` into the "
                           "study's folder with a copy of its study.yaml (finished runs are reused)")
    return max(candidates, key=lambda c: stats(c)["val_mean"], default=None)


def chosen_cell(cfg: StudyConfig, agg: dict, eps: float, test_set: str) -> Optional[tuple[str, dict]]:
    """Our cell at ε on a test set: among the conditions whose every run has a DP chain total
    within ε (any at ε = ∞), the one chosen on validation (`chosen_on_validation`), with its
    `aggregate` stats; None if no condition qualifies."""
    here = [(cond, agg.get((cond, eps, test_set))) for cond in cfg.conditions]
    admitted = [(cond, stats) for cond, stats in here if stats is not None and stats["mean"] is not None
                and (math.isinf(eps) or guaranteed_within(stats, eps))]
    return chosen_on_validation(admitted, lambda c: c[1])


def ours_head(cfg: StudyConfig) -> list[str]:
    """The columns of our chosen cell, shared by the gap tables."""
    return ["ours: chosen on validation (DP within ε; any at ∞)", f"ours: {cfg.val_set} AUROC", "ours: test AUROC"]


def ours_note(cfg: StudyConfig) -> str:
    """How our cell of a gap table is chosen (`chosen_cell`)."""
    return (f"Ours: among the conditions whose every run has a DP chain total within the row's ε per "
            f"{cfg.privacy.unit} (any at ε = ∞), the one with the highest mean AUROC on the validation set "
            f"{cfg.val_set}, never chosen on a test set, with its test AUROC (a run's validation AUROC is its released "
            "model's: the best epoch's where the recipe selects on validation, the last epoch's under `select: last`; "
            "this use of the validation set is not DP-accounted)")


def aim_head(cfg: StudyConfig) -> list[str]:
    return ["test set", "ε", "aimed test AUROC", *ours_head(cfg), "ours − aim", "reached"]


def aim_gap(cfg: StudyConfig, rows: list[dict]) -> list[list[str]]:
    """Per aim of the study (`targets`): our cell (`chosen_cell`), its test AUROC (mean over the
    seeds that finished; how many failed, if any), the gap and whether that mean reaches the aim.
    An aim without such a cell (no run within its ε, or every run failed) is not reached; one outside
    the study's test sets or ε (a narrowed preset) is not run."""
    agg = aggregate(rows, "auroc")
    out = []
    for t in cfg.targets:
        head = [t.test_set, eps_header(t.epsilon), f"{t.auroc:.3f}"]
        if t.test_set not in cfg.test_sets or t.epsilon not in cfg.epsilons:
            out.append(head + ["not run in this study", "", "", "", "not run"])
            continue
        chosen = chosen_cell(cfg, agg, t.epsilon, t.test_set)
        if chosen is None:
            none = "no finished cell" if math.isinf(t.epsilon) else "none with a guarantee within ε"
            out.append(head + [none, "", "", "", "no"])
            continue
        cond, stats = chosen
        failed = f" ({stats['missing']} failed)" if stats["missing"] else ""
        out.append(head + [cond, f"{stats['val_mean']:.3f}", f"{stats['mean']:.3f}{failed}",
                           f"{stats['mean'] - t.auroc:+.3f}", "yes" if stats["mean"] >= t.auroc else "no"])
    return out


def aim_note(cfg: StudyConfig) -> str:
    """What the aims table's rows are."""
    return (f"Each aim is a test AUROC (mean over seeds) the study states for that ε per {cfg.privacy.unit} "
            f"(`targets`). {ours_note(cfg)}.")


def gap_head(cfg: StudyConfig) -> list[str]:
    return ["test set", "ε", *ours_head(cfg), "published: best condition", "AUROC", "ours − published"]


def gap_note(cfg: StudyConfig) -> str:
    """What the gap table's two sides are."""
    return (f"{ours_note(cfg)}; published: the best published cell on that test set, whatever its guarantee (a "
            "choice on the test set, which favours it).")


def published_gap(cfg: StudyConfig, rows: list[dict]) -> list[list[str]]:
    """Per test set and ε of the published study: our condition chosen on validation
    (`chosen_on_validation`) among the cells whose every run carries a DP chain total of at most
    that ε (any cell at ε = ∞), with its test AUROC, against the best published cell there,
    whatever its guarantee (the published synthetic rows have none). Empty without `compare_with`."""
    if cfg.compare_with is None:
        return []
    agg = aggregate(rows, "auroc")
    out = []
    for test_set in cfg.test_sets:
        for eps in eps_columns(cfg):
            theirs = best_published(cfg.compare_with, eps, test_set)
            chosen = chosen_cell(cfg, agg, eps, test_set)
            if theirs is None or chosen is None:
                continue
            cond, stats = chosen
            their_cond, their_auroc = theirs
            note = " (no guarantee)" if their_cond in NO_GUARANTEE[cfg.compare_with] else ""
            out.append([test_set, eps_header(eps), cond, f"{stats['val_mean']:.3f}", f"{stats['mean']:.3f}",
                        their_cond + note, f"{their_auroc:.3f}", f"{stats['mean'] - their_auroc:+.3f}"])
    return out


def markdown_table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    """The lines of a markdown table: its header, the rule under it, then one line per row."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(cfg: StudyConfig, rows: list[dict]) -> str:
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines = [f"# Study `{cfg.name}`: AUROC (malignant positive)", "",
             f"Mean ± population std over seeds {seeds} (one seed: its 95% bootstrap CI). Models {', '.join(cfg.model_names)}; "
             f"unit of privacy of the DP stages: {UNIT_WORDS[cfg.privacy.unit]}.",
             *column_notes(cfg)]
    if cfg.same_setup_as_published:
        lines.append(f"(ref …): published AUROC, {CITATION[cfg.compare_with]}.")
    for test_set in cfg.test_sets:
        header = ["condition", *(eps_header(e) for e in eps_columns(cfg))]
        lines += ["", f"## {test_set}", "", *markdown_table(header, grid(cfg, rows, test_set))]
    gap = published_gap(cfg, rows)
    if gap:
        lines += ["", f"## Against the published study ({CITATION[cfg.compare_with]})", "", gap_note(cfg), "",
                  *markdown_table(gap_head(cfg), gap)]
    aims = aim_gap(cfg, rows)
    if aims:
        lines += ["", "## Against the study's aims", "", aim_note(cfg), "", *markdown_table(aim_head(cfg), aims)]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "## Runs without results", ""]
        seen = set()
        for r in failed:
            if r["run_id"] not in seen:
                seen.add(r["run_id"])
                lines.append(f"- `{r['run_id']}`: {r['status']}: {r['error']}")
    return "\n".join(lines) + "\n"


def html_tables(cfg: StudyConfig, rows: list[dict]) -> str:
    parts = []
    for i, test_set in enumerate(cfg.test_sets):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["condition", *map(eps_header, eps_columns(cfg))])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in grid(cfg, rows, test_set))
        table_id = "results" if i == 0 else f"results-{i}"
        parts.append(f"<h3>{html.escape(test_set)}</h3><table id=\"{table_id}\" class=\"results\">"
                     f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(parts)
