"""Do gradient-canary audits scatter as the Gaussian-pair bound's standard error says?

Reads finished `dpmammo audit --method gradient-canary` folders and prints, per audit, the sum
score's μ̂ ± standard error beside `ideal_mu`, the shift the audited σ, q and T give the ideal
mechanism (audit.json's `mechanism`), and z = (μ̂ − ideal_mu) / standard error. Then, over the
audits: the mean z, its root mean square, and the χ² p-value of "every z is a standard normal draw"
(the premise under which the bound's 95 % holds; a spread above 1 would make it weaker).

    python benchmarks/whitebox_dispersion.py demo/wb/s*
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audits", nargs="+", type=Path, help="audit folders (each with audit.json)")
    args = ap.parse_args()

    from dpmammo.audit.record import AUDIT_JSON, read_audit

    zs = []
    print("audit  promised ε  σ       q       T    ideal μ  μ̂ ± s.e.        z      bound ε")
    for folder in args.audits:
        rec = read_audit(folder / AUDIT_JSON)
        if rec.mechanism is None:
            print(f"{folder.name}: no mechanism recorded (an audit before it was kept, or not gradient-canary)")
            continue
        g = next((a.gaussian_bound for a in rec.attacks if a.gaussian_bound is not None), None)
        if g is None or g.mu_hat is None:
            print(f"{folder.name}: no Gaussian-pair bound with μ̂ (fewer than 8 canaries on a side?)")
            continue
        m = rec.mechanism
        z = (g.mu_hat - m.ideal_mu) / g.standard_error
        zs.append(z)
        print(f"{folder.name:6s} {rec.stage_epsilon or float('nan'):9.2f}  {m.noise_multiplier:.3f}  {m.sample_rate:.4f}  {m.steps:3d}  "
              f"{m.ideal_mu:.3f}    {g.mu_hat:.3f} ± {g.standard_error:.3f}  {z:+5.2f}  {g.epsilon:.2f}")
    if len(zs) > 1:
        z = np.asarray(zs)
        chi2 = float((z ** 2).sum())
        print(f"{len(z)} audits: mean z {z.mean():+.2f} (its s.e. {1 / math.sqrt(len(z)):.2f}), root mean square "
              f"{math.sqrt(chi2 / len(z)):.2f}, χ² {chi2:.1f} on {len(z)} d.f.: p = {stats.chi2.sf(chi2, len(z)):.3f}; "
              f"about their mean: std {z.std(ddof=1):.2f}, p = {stats.chi2.sf(z.var(ddof=1) * (len(z) - 1), len(z) - 1):.3f}")


if __name__ == "__main__":
    main()
