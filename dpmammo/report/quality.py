"""The report's "quality of the synthetic sets" section: quality.csv as a table and a sample grid
per set whose pixels carry a guarantee (benign row above, malignant row below); "" when the
study scored no quality. Private patches and samples of generators that saw private data without
DP are never drawn (dpmammo.study.quality.pixels_may_be_shown)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from dpmammo.study.quality import PRIVACY_NOTE, read_quality


def _cell(v, spec: str) -> str:
    return "" if v is None else f"{v:{spec}}"


def quality_section(study_dir: Path, embed_png: Callable[[Path, str], str]) -> str:
    rows = read_quality(study_dir)
    if rows is None:
        return ""
    head = ("set", "kind", "guarantee of its origin", "n", "classifier-feature FD ↓", "class fidelity (AUROC) ↑",
            "FRD ↓")
    body = []
    for r in rows:
        if r.status != "ok":
            cells = [r.set, r.kind, r.guarantee, f"{r.status}: {r.error}", "", "", ""]
        else:
            frd = _cell(r.frd, ".2f") if r.frd is not None else r.frd_note
            cells = [r.set, r.kind, r.guarantee, str(r.n), _cell(r.classifier_fd, ".3f"),
                     _cell(r.class_fidelity, ".3f"), frd]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    ok = [r for r in rows if r.status == "ok" and r.grid]
    size, ref = rows[0].image_size, rows[0].ref
    grids = "".join(f"<figure><figcaption><code>{html.escape(r.set)}</code> ({html.escape(r.guarantee)}): benign "
                    f"above, malignant below</figcaption>{embed_png(study_dir / r.grid, r.set)}</figure>" for r in ok)
    return f"""<h2>Quality of the synthetic sets</h2>
<p>Each set against {html.escape(ref)} at {size} px (details: <code>quality.md</code>). {html.escape(PRIVACY_NOTE)}</p>
<table id="quality"><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>
<h3>Samples</h3>{grids}
<p>Samples are shown only of sets whose pixels carry a guarantee (a DP generator, or no private data); never
of the private sets, nor of a generator trained on them without DP.</p>"""
