"""Published AUROC values to show beside ours when a study uses the paper's setup.

Source: Osuala et al., "Enhancing the Utility of Privacy-Preserving Cancer Classification using
Synthetic Data", MICCAI 2024 Deep Breath workshop, arXiv 2407.12669; per-seed values from the
authors' public experiment sheet, mean ± population std over seeds 42/43/44 (as transcribed in
shared/reference/paper_results.md). Swin-T (ImageNet), frozen backbone, 224×224, AdamW lr 1e-5,
300 epochs, DP-SGD with RDP, δ = 1e-4, C = 1.0. Compare on AUROC only: their AUPRC is
benign-positive.
"""

from __future__ import annotations

import math

INF = math.inf
TEST_SETS = ("cbis-ddsm/test", "bcdr/test")

# condition → ε → (AUROC on cbis-ddsm/test, AUROC on bcdr/test)
OSUALA2024: dict[str, dict[float, tuple[float, float]]] = {
    "real": {1: (.525, .487), 6: (.572, .532), 12: (.596, .559), 20: (.611, .581), 60: (.622, .605),
             INF: (.778, .695)},
    "real+synthetic": {1: (.553, .521), 6: (.617, .609), 12: (.624, .625), 20: (.630, .641), 60: (.629, .650),
                       INF: (.774, .709)},
    "synthetic": {INF: (.639, .622)},
    "synthetic→real": {1: (.661, .637), 6: (.677, .647), 12: (.688, .654), 20: (.697, .659), 60: (.712, .671)},
}

REFERENCES = {"osuala2024": OSUALA2024}
CITATION = {"osuala2024": "Osuala et al., MICCAI 2024 Deep Breath workshop, arXiv 2407.12669"}


# The published conditions whose models carry no end-to-end guarantee: their synthetic data came
# from a generator trained on the private patients without DP.
NO_GUARANTEE = {"osuala2024": ("real+synthetic", "synthetic", "synthetic→real")}


def best_published(name: str, eps: float, test_set: str) -> tuple[str, float] | None:
    """The published condition with the highest AUROC at `eps` on `test_set`, or None."""
    if test_set not in TEST_SETS:
        return None
    cells = [(pair[TEST_SETS.index(test_set)], cond) for cond, row in REFERENCES[name].items()
             for e, pair in row.items() if e == eps]
    if not cells:
        return None
    auroc, cond = max(cells)
    return cond, auroc


def reference_auroc(name: str | None, condition: str, eps: float, test_set: str) -> float | None:
    """The published AUROC for a cell, or None where the paper has no number."""
    if name is None or test_set not in TEST_SETS:
        return None
    pair = REFERENCES[name].get(condition, {}).get(eps)
    return None if pair is None else pair[TEST_SETS.index(test_set)]
