"""DP-SGD set-up, the Gaussian release, secret sampling and noise, typed privacy events, calibration,
accounting, and the ledger that composes stages.

Exports load on first use (dpmammo.lazy), so `PrivacyConfig` is read without torch or opacus.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.privacy.accounting": ["calibrate_noise", "check_delta", "epsilon_of", "steps_for"],
    "dpmammo.privacy.budget": ["Epsilon", "epsilon_tag", "format_epsilon", "parse_epsilon"],
    "dpmammo.privacy.config": ["DEFAULT_DELTA", "UNIT_WORDS", "PrivacyConfig", "PrivacySettings",
                                "ReleasePrivacyConfig", "Unit"],
    "dpmammo.privacy.engine": ["DPSetup", "make_private"],
    "dpmammo.privacy.events": ["DpSgdEvent", "GaussianRelease", "PrivacyEvent"],
    "dpmammo.privacy.ledger": ["ChainTotal", "PrivacyRecord", "StageSpend", "check_planned_total", "compose",
                               "describe", "dp_stage", "non_dp_stage", "prior_history", "provenance_stages",
                               "read_privacy", "release_stage", "short", "synthetic_chain", "weights_stage",
                               "write_privacy"],
    "dpmammo.privacy.mechanisms": ["gaussian_release"],
    "dpmammo.privacy.sampling": ["Batch", "PoissonUnits", "ShuffledBatches", "secret_key", "unit_ids"],
    "dpmammo.privacy.secret": ["SecretKey"],
})
