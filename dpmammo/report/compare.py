"""Several finished studies side by side: `dpmammo compare STUDY_DIR ... --out DIR`.

A study has one synthetic source (a fixed set, or a generator it trains, DP or not) besides the
procedural prior, so "no guarantee" (the shipped GAN set), "DP generator" and "free prior" live
in different study directories. This module reads each study's results.csv and study.yaml and
writes comparison.md and a self-contained comparison.html into --out: per shared test set, one
row per (study, condition) with the source it trained on, one column per study ε (the union, each
ε with its unit), cells = mean test AUROC ± std over seeds with the chain total that the cell's
runs actually carry (from results.csv, never assumed from the source); then, at each ε, the cell
chosen on validation among those with a full guarantee (a DP chain total within the column's ε:
`guaranteed_within`, the gap table's test at finite ε; unlike the gap table, the non-private column
also asks for a DP total), by the gap table's rule (`chosen_on_validation`: the highest mean
validation AUROC), shown with its test AUROC.

Nothing here trains or evaluates; the inputs are only read.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dpmammo.config import parse_config, read_yaml
from dpmammo.data.sets import is_folder_set, load_set, resolve_root
from dpmammo.errors import DpMammoError
from dpmammo.files import check_out, check_replaceable, exclusive, user_os_errors, write_text_atomic
from dpmammo.privacy.budget import format_epsilon, parse_epsilon
from dpmammo.privacy.config import UNIT_WORDS
from dpmammo.report.html import html_table, page
from dpmammo.report.tables import chosen_on_validation, eps_columns, guaranteed_within, markdown_table
from dpmammo.study.conditions import PRIOR_CONDITIONS, SYNTHETIC_CONDITIONS
from dpmammo.study.config import STUDY_FILE, StudyConfig, SyntheticFromGenerator
from dpmammo.study.results import RESULTS_CSV, aggregate, read_results, rerun_hint

COMPARISON_MD, COMPARISON_HTML = "comparison.md", "comparison.html"
COMMAND = "dpmammo compare"


@dataclass(frozen=True)
class Column:
    """One ε column: the study ε and its unit of privacy (None for ∞, non-private, which needs none)."""

    epsilon: float
    unit: Optional[str]

    @property
    def header(self) -> str:
        return "non-private" if self.unit is None else f"ε={format_epsilon(self.epsilon)} per {self.unit}"


@dataclass(frozen=True)
class StudyResults:
    """A finished study as the comparison reads it: its label in the tables, config and result rows."""

    label: str
    path: Path
    cfg: StudyConfig
    rows: list[dict]

    @property
    def columns(self) -> list[Column]:
        return [Column(e, None if math.isinf(e) else self.cfg.privacy.unit) for e in eps_columns(self.cfg)]


def read_study(study_dir: str | Path) -> StudyResults:
    """The config and results of a finished study; refuses a folder that is not one (one line each)."""
    path = Path(study_dir)
    if not (path / STUDY_FILE).is_file():
        raise DpMammoError(f"{study_dir} is not a study directory (no {STUDY_FILE}); give a folder written by "
                           "`dpmammo study`")
    if not (path / RESULTS_CSV).is_file():
        raise DpMammoError(f"{study_dir} is not finished (no {RESULTS_CSV}); finish it, then compare: "
                           f"{rerun_hint(study_dir)}")
    cfg = parse_config(StudyConfig, read_yaml(path / STUDY_FILE), str(path / STUDY_FILE))
    return StudyResults(cfg.name, path, cfg, read_results(path))


def with_unique_labels(studies: list[StudyResults]) -> list[StudyResults]:
    """Studies named alike (the same config in two folders) are told apart by their folder."""
    names = [s.label for s in studies]
    return [s if names.count(s.label) == 1 else StudyResults(f"{s.label} ({s.path})", s.path, s.cfg, s.rows)
            for s in studies]


# --- what each row trained on -----------------------------------------------------------------

def fixed_set_guarantee(cfg: StudyConfig) -> str:
    """What the fixed synthetic set's origin guarantees, from its provenance (a folder without
    one, such as the shipped GAN set, has no guarantee); said as unknown where the set is not here."""
    from dpmammo.study.quality import set_guarantee

    try:
        root = Path() if is_folder_set(cfg.synthetic) else resolve_root(cfg.data_root)
        return set_guarantee(load_set(root, cfg.synthetic))
    except DpMammoError as e:
        return f"guarantee not read: {e}"


def synthetic_source(cfg: StudyConfig) -> str:
    """The study's `synthetic:` in words: a fixed set with its guarantee, or the generator it trains."""
    syn = cfg.synthetic
    if isinstance(syn, SyntheticFromGenerator):
        name = syn.config_at(math.inf, None).generator
        if syn.is_private:
            return f"DP generator {name} trained by the study at {syn.generator_share:g}·ε (non-private at ε = ∞)"
        return f"generator {name} trained by the study without DP"
    return f"fixed set {syn} ({fixed_set_guarantee(cfg)})"


def prior_source(cfg: StudyConfig) -> str:
    """The study's procedural prior in words: its processes (public: no ε)."""
    data = cfg.prior.config_for(cfg.seeds[0]).data
    kinds = [*data.kinds, *(Path(f).name for f in data.folders)]
    return f"procedural prior ({', '.join(kinds)}; public, no ε)"


def condition_source(cfg: StudyConfig, condition: str) -> str:
    if condition in SYNTHETIC_CONDITIONS:
        return synthetic_source(cfg)
    if condition in PRIOR_CONDITIONS:
        return prior_source(cfg)
    return "none (the private set only)"


# --- the tables -------------------------------------------------------------------------------

def shared_test_sets(studies: list[StudyResults]) -> tuple[list[str], list[str]]:
    """The test sets every study has (in the first study's order) and a note per set left out."""
    shared = [t for t in studies[0].cfg.test_sets if all(t in s.cfg.test_sets for s in studies)]
    notes = [f"`{t}` is left out: only {', '.join(s.label for s in studies if t in s.cfg.test_sets)} evaluated on it."
             for t in dict.fromkeys(t for s in studies for t in s.cfg.test_sets) if t not in shared]
    if not shared:
        raise DpMammoError("the studies share no test set (" + "; ".join(
            f"{s.label}: {', '.join(s.cfg.test_sets)}" for s in studies) + "); compare studies evaluated on a common one")
    return shared, notes


def all_columns(studies: list[StudyResults]) -> list[Column]:
    """The union of the studies' ε columns: finite ones by unit then ε, non-private last."""
    cols = {c for s in studies for c in s.columns}
    return sorted(cols, key=lambda c: (c.unit is None, c.unit or "", c.epsilon))


@dataclass(frozen=True)
class Cell:
    study: str
    condition: str
    stats: dict  # one cell of dpmammo.study.results.aggregate
    units: frozenset[str]  # the units of the DP chain totals of its runs


def cells(study: StudyResults, test_set: str) -> dict[tuple[str, Column], Cell]:
    """(condition, column) → the study's cell there, for one test set."""
    units: dict[tuple, set[str]] = defaultdict(set)
    for r in study.rows:
        if r["status"] == "ok" and r["guarantee_total"] == "dp":
            units[(r["condition"], parse_epsilon(r["epsilon_target"]), r["test_set"])].add(r["unit"])
    by_eps = {c.epsilon: c for c in study.columns}
    return {(cond, by_eps[eps]): Cell(study.label, cond, stats, frozenset(units[(cond, eps, t)]))
            for (cond, eps, t), stats in aggregate(study.rows, "auroc").items() if t == test_set and eps in by_eps}


def cell_text(cell: Optional[Cell]) -> str:
    """`0.612 ± 0.010 (ε≤0.99/patient)`; one seed: its mean only; no runs: empty."""
    if cell is None:
        return ""
    s = cell.stats
    if s["mean"] is None:
        return f"failed ({s['missing']})"
    text = f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["n"] > 1 else "")
    if s["missing"]:
        text += f" ({s['missing']} failed)"
    return f"{text} ({s['total']})"


def is_guaranteed(cell: Cell, column: Column) -> bool:
    """A full guarantee at the column's ε: every run has a DP chain total within it, in the
    column's unit (a per-patient total also holds per patch); ∞ asks only for a DP total."""
    eps = math.inf if column.unit is None else column.epsilon
    in_unit = column.unit is None or cell.units <= ({"patient", "patch"} if column.unit == "patch" else {"patient"})
    return cell.stats["mean"] is not None and guaranteed_within(cell.stats, eps) and in_unit


def row_sources(studies: list[StudyResults]) -> dict[tuple[str, str], str]:
    """(study label, condition) → what the condition trained on, each read once (a fixed set's
    guarantee comes from its provenance file)."""
    return {(s.label, cond): condition_source(s.cfg, cond) for s in studies for cond in s.cfg.conditions}


def comparison_grid(studies: list[StudyResults], test_set: str, columns: list[Column],
                    sources: Optional[dict[tuple[str, str], str]] = None) -> list[list[str]]:
    """Rows (study, condition, source, one cell per column) for one test set."""
    sources = sources if sources is not None else row_sources(studies)
    out = []
    for study in studies:
        grid = cells(study, test_set)
        for cond in study.cfg.conditions:
            out.append([study.label, cond, sources[(study.label, cond)],
                        *(cell_text(grid.get((cond, c))) for c in columns)])
    return out


def best_guaranteed(studies: list[StudyResults], test_set: str, columns: list[Column]) -> list[str]:
    """Per column: of the cells with a full guarantee there (`is_guaranteed`), the one chosen on
    validation (`chosen_on_validation`; equals: the first study given, then its condition order)
    with its mean validation AUROC and its test cell; or that no cell has a guarantee. AUROCs on
    different validation sets are not compared: when the studies' sets differ, each study's own
    choice is given."""
    found = [(study, cells(study, test_set)) for study in studies]
    groups = [found] if len({s.cfg.val_set for s in studies}) == 1 else [[f] for f in found]
    out = []
    for column in columns:
        chosen = []
        for group in groups:
            ok = [grid[(cond, column)] for study, grid in group for cond in study.cfg.conditions
                  if (cond, column) in grid and is_guaranteed(grid[(cond, column)], column)]
            best = chosen_on_validation(ok, lambda c: c.stats)
            if best is not None:
                chosen.append(f"{best.study} / {best.condition} (validation AUROC {best.stats['val_mean']:.3f}), "
                              f"test {cell_text(best)}")
        if not chosen:
            out.append(f"{column.header}: no cell has a DP chain total" + ("" if column.unit is None else " within it"))
            continue
        out.append(f"{column.header}: " + "; ".join(chosen))
    return out


def unit_note(studies: list[StudyResults]) -> list[str]:
    units = {s.cfg.privacy.unit for s in studies}
    if len(units) == 1:
        return [f"Unit of privacy of every study: {UNIT_WORDS[units.pop()]}."]
    return ["The studies use different units of privacy (" + "; ".join(
        f"{s.label}: {UNIT_WORDS[s.cfg.privacy.unit]}" for s in studies) + "): their ε are in separate columns, each "
        "named with its unit. An ε per patch is a weaker promise than the same ε per patient."]


def val_sets(studies: list[StudyResults]) -> str:
    """The validation sets the choice is made on: one, or each study's own."""
    sets = {s.cfg.val_set for s in studies}
    if len(sets) == 1:
        return f"validation set {sets.pop()}"
    return ("each study's own validation set, so each study's choice is given: "
            + "; ".join(f"{s.label}: {s.cfg.val_set}" for s in studies))


def intro(studies: list[StudyResults]) -> list[str]:
    return [
        "Test AUROC (malignant positive), mean ± population std over seeds (one seed: its value). In brackets: "
        "the guarantee the cell's runs actually carry, the chain total over every stage (generator, pretraining, "
        "fine-tuning) read from each study's results, or `no guarantee` when any stage has none.",
        "Columns: each study's target ε with its unit (a DP generator shares the study ε with the classifier, so "
        "that the chain total is the column's ε). Best with a full guarantee: among the cells whose every run has a "
        "DP chain total within the column's ε in its unit, the one with the highest mean validation AUROC ("
        + val_sets(studies) + "), never chosen on a test set, shown with its test AUROC; a cell without a guarantee "
        "never counts. A run's validation AUROC is its released model's: the best epoch's where the recipe selects "
        "on validation (higher than a last epoch's alike), the last epoch's under `select: last`; this use of the "
        "validation set is not DP-accounted.",
        *unit_note(studies)]


@dataclass(frozen=True)
class TestSetTable:
    test_set: str
    rows: list[list[str]]  # comparison_grid
    best: list[str]  # best_guaranteed, one line per column


@dataclass(frozen=True)
class Comparison:
    """Everything both pages show, computed once."""

    studies: list[StudyResults]
    head: list[str]
    notes: list[str]  # test sets left out
    tables: list[TestSetTable]


def tabulate(studies: list[StudyResults]) -> Comparison:
    shared, notes = shared_test_sets(studies)
    columns = all_columns(studies)
    sources = row_sources(studies)
    tables = [TestSetTable(t, comparison_grid(studies, t, columns, sources), best_guaranteed(studies, t, columns))
              for t in shared]
    return Comparison(studies, ["study", "condition", "source", *(c.header for c in columns)], notes, tables)


def markdown(studies: list[StudyResults], comparison: Optional[Comparison] = None) -> str:
    c = comparison or tabulate(studies)
    lines = ["# Comparison of studies: " + ", ".join(f"`{s.label}`" for s in studies)]
    for paragraph in intro(studies):
        lines += ["", paragraph]
    lines += ["", "Studies:", *(f"- `{s.label}`: {s.path}, seeds {', '.join(map(str, s.cfg.seeds))}" for s in studies)]
    if c.notes:
        lines += ["", *c.notes]
    for table in c.tables:
        lines += ["", f"## {table.test_set}", "", *markdown_table(c.head, table.rows)]
        lines += ["", "Best with a full guarantee: " + "; ".join(table.best) + "."]
    return "\n".join(lines) + "\n"


def render_html(studies: list[StudyResults], comparison: Optional[Comparison] = None) -> str:
    c = comparison or tabulate(studies)
    title = "Comparison of studies: " + ", ".join(s.label for s in studies)
    body = "".join(f"<p>{html.escape(p)}</p>" for p in [*intro(studies), *c.notes])
    body += "<ul>" + "".join(f"<li><code>{html.escape(s.label)}</code>: {html.escape(str(s.path))}</li>"
                             for s in studies) + "</ul>"
    for i, table in enumerate(c.tables):
        best = "".join(f"<li>{html.escape(b)}</li>" for b in table.best)
        body += (f"<h2>{html.escape(table.test_set)}</h2>" + html_table(c.head, table.rows, f"comparison-{i}")
                 + f"<p>Best with a full guarantee:</p><ul>{best}</ul>")
    return page(title, f"<h1>{html.escape(title)}</h1>{body}")


def compare_studies(study_dirs: list[str | Path], out: str | Path, *, force: bool = False) -> Path:
    """Write comparison.md and comparison.html for finished studies into `out`; return comparison.md.

    `out` must not be, hold or lie inside a study directory; a non-empty `out` is replaced only
    with `force` and only if this command wrote it (it holds comparison.md).

    Example:
        >>> compare_studies(["runs/gan-set", "runs/dp-merf", "runs/prior"], "runs/compare")  # doctest: +SKIP
    """
    if not study_dirs:
        raise DpMammoError("give at least one study directory to compare")
    out = check_out(out, [("the study directory", d) for d in study_dirs])
    studies = with_unique_labels([read_study(d) for d in study_dirs])
    comparison = tabulate(studies)  # every refusal before anything is written
    md, html_page = markdown(studies, comparison), render_html(studies, comparison)
    replaceable = dict(marker=COMPARISON_MD, command=COMMAND)
    check_replaceable(out, force, **replaceable)
    made = not out.exists()
    with user_os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive(out, "writing a comparison into"):
            check_replaceable(out, force, **replaceable)  # again, now that no other process can be writing it
            # The marker first: a folder left by a killed run holds it, so --force may replace that folder.
            write_text_atomic(out / COMPARISON_MD, md)
            write_text_atomic(out / COMPARISON_HTML, html_page)
    except DpMammoError:
        if made and not any(out.iterdir()):  # a refused start leaves no folder it made
            out.rmdir()
        raise
    return out / COMPARISON_MD


__all__ = ["compare_studies", "read_study"]
