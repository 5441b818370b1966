"""DP-SGD set-up, noise calibration, accounting, and the ledger that composes stages."""

from dpmammo.privacy.accounting import calibrate_noise, check_delta, epsilon_of, steps_for
from dpmammo.privacy.config import DEFAULT_DELTA, PrivacyConfig
from dpmammo.privacy.engine import DPSetup, make_private
from dpmammo.privacy.ledger import (UNIT, StageSpend, compose, describe, read_chain, stage_spend,
                                    write_privacy_json)

__all__ = ["calibrate_noise", "check_delta", "epsilon_of", "steps_for", "DEFAULT_DELTA", "PrivacyConfig",
           "DPSetup", "make_private", "UNIT", "StageSpend", "compose", "describe", "read_chain", "stage_spend",
           "write_privacy_json"]
