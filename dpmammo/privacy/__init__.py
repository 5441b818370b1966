"""DP-SGD set-up, secret sampling and noise, calibration, accounting, and the ledger that composes stages."""

from dpmammo.privacy.accounting import calibrate_noise, check_delta, epsilon_of, steps_for
from dpmammo.privacy.config import DEFAULT_DELTA, UNIT_WORDS, PrivacyConfig, PrivacySettings, Unit
from dpmammo.privacy.engine import DPSetup, make_private
from dpmammo.privacy.ledger import (ChainTotal, PrivacyRecord, StageSpend, compose, describe, dp_stage, non_dp_stage,
                                    read_privacy, short, weights_stage, write_privacy)
from dpmammo.privacy.sampling import Batch, PoissonUnits, ShuffledBatches, noise_generator, unit_ids

__all__ = ["calibrate_noise", "check_delta", "epsilon_of", "steps_for", "DEFAULT_DELTA", "UNIT_WORDS", "PrivacyConfig", "PrivacySettings",
           "Unit", "DPSetup", "make_private", "ChainTotal", "PrivacyRecord", "StageSpend", "compose", "describe",
           "dp_stage", "non_dp_stage", "read_privacy", "short", "weights_stage", "write_privacy", "Batch",
           "PoissonUnits", "ShuffledBatches", "noise_generator", "unit_ids"]
