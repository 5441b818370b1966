"""A toy membership-inference attack, as docs/extending.md adds one: a score function of the
signals (here the audited model's margin against the reference models' mean margin, averaged over
flip views) in its own file, and one `register_attack` line (tests/test_audit.py)."""

import numpy as np

from dpmammo.audit.attacks import Signals


def margin_gap(s: Signals) -> np.ndarray:
    """Higher when the audited model is surer of the record's label than its reference models are."""
    return (s.target - s.refs.mean(0)).mean(1)
