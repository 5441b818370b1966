"""DP-SGD set-up, noise calibration, accounting, and the ledger that composes stages.

Exports load on first use (dpmammo.lazy), so `PrivacyConfig` is read without torch or opacus.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.privacy.accounting": ["calibrate_noise", "check_delta", "epsilon_of", "steps_for"],
    "dpmammo.privacy.config": ["DEFAULT_DELTA", "PrivacyConfig"],
    "dpmammo.privacy.engine": ["DPSetup", "make_private"],
    "dpmammo.privacy.ledger": ["UNIT", "StageSpend", "compose", "describe", "read_chain", "stage_spend",
                               "write_privacy_json"],
})
