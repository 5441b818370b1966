"""The `privacy:` blocks of DP stages: `PrivacyConfig` for DP-SGD stages (classifier, head on
cached features, GAN discriminator), `ReleasePrivacyConfig` for one Gaussian release (DP-MERF)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from dpmammo.config import StrictModel

DEFAULT_DELTA = 1e-4

Unit = Literal["patient", "patch"]
UNIT_WORDS: dict[str, str] = {"patient": "per patient (all of a patient's patches)",
                              "patch": "per lesion patch (a patient with k patches: group privacy only)"}

# The clipping modes' one table: mode → how it clips. The engine (dpmammo.privacy.engine._WRAPPERS)
# has one wrapper per mode of this table; `auto` picks one by the model's trainable layers.
GRAD_SAMPLE_MODES: dict[str, str] = {
    "hooks": "per-sample gradients instantiated by Opacus's hooks",
    "functorch": "per-sample gradients instantiated by torch.func",
    "ghost": "fast gradient clipping: only norms, in two backward passes",
    "bookkeeping": "only norms, in one backward pass (layers with an Opacus grad sampler only)",
}
GradSampleMode = Literal[("auto", *GRAD_SAMPLE_MODES)]  # type: ignore[valid-type]


Accountant = Literal["rdp", "prv"]
ACCOUNTANT_HELP = ("how ε is computed from the noise, sample rate and steps: rdp (Rényi DP; Mironov 2017) or prv "
                   "(privacy random variables; Gopi et al. 2021: an upper bound within 0.01 of the exact ε, 7-9% less "
                   "noise than rdp at the same ε), both Opacus's. A chain composes in rdp when all its DP stages used "
                   "rdp, else in prv; a stage that targets its chain's total after a prv stage must use prv")


class PrivacySettings(StrictModel):
    """Everything of a DP stage but its budget (a study varies the budget, see dpmammo.study)."""

    delta: float = Field(DEFAULT_DELTA, gt=0, lt=1, description="δ; must be < 1/N for N private units")
    unit: Unit = Field(
        "patient", description="what one unit of privacy is: `patient` (Poisson-sample patients, clip each "
                               "patient's summed gradient) or `patch` (to compare with published patch-level numbers)")
    max_grad_norm: float = Field(1.0, gt=0, description="clipping norm C of one unit's gradient")
    accountant: Accountant = Field("rdp", description=ACCOUNTANT_HELP)
    grad_sample_mode: GradSampleMode = Field(
        "auto", description="how per-unit gradients are clipped: " + "; ".join(
            f"{k}: {v}" for k, v in GRAD_SAMPLE_MODES.items()) + "; auto picks by the trainable layers")
    unit_count_noise: float = Field(
        20.0, gt=0, le=1000, allow_inf_nan=False,
        description="σ of the Gaussian noise on the number N of private units (sensitivity 1) from which the sample "
                    "rate q = batch_size/N̂ is set: the exact N is private and never released; the count's small "
                    "privacy cost is part of the stage's ε")
    seeded_noise_for_tests: bool = Field(
        False, description="TESTS ONLY: draw DP noise and Poisson sampling from train.seed, so runs repeat exactly. "
                           "Whoever knows the seed can remove the noise: such a run has no guarantee")


def _finite_epsilon(v: float) -> float:
    if math.isinf(v):
        raise ValueError("ε = inf is not a DP budget; drop the privacy block for non-private training")
    return v


class PrivacyConfig(PrivacySettings):
    """The `privacy:` block of a DP stage: its budget and settings."""

    target_epsilon: float = Field(..., gt=0, allow_inf_nan=True, description="privacy budget ε for this stage (or its chain: `target`)")
    target: Literal["stage", "total"] = Field(
        "stage", description="what target_epsilon bounds: `stage` (this stage alone) or `total` (the composition "
                             "of this stage and every DP stage that its inputs carry: a DP generator's samples, "
                             "pretrained weights); the noise is calibrated to what the earlier stages left")

    @field_validator("target_epsilon")
    @classmethod
    def _finite(cls, v: float) -> float:
        return _finite_epsilon(v)


class ReleasePrivacyConfig(StrictModel):
    """The `privacy:` block of a stage that releases one noisy sum of per-unit vectors of norm ≤ 1
    (the Gaussian mechanism, once: sample rate 1, one step). No clipping norm or per-sample
    gradient mode: nothing is clipped, each unit's vector is bounded by construction."""

    target_epsilon: float = Field(..., gt=0, allow_inf_nan=True, description="privacy budget ε of the release")
    delta: float = Field(DEFAULT_DELTA, gt=0, lt=1, description="δ; must be < 1/N for N private units")
    unit: Unit = Field(
        "patient", description="what one unit of privacy is: `patient` (a patient's patches contribute their mean "
                               "vector) or `patch` (each patch its own vector; compares with patch-level numbers)")
    accountant: Accountant = Field("rdp", description=ACCOUNTANT_HELP)
    seeded_noise_for_tests: bool = Field(
        False, description="TESTS ONLY: draw the release's noise from train.seed, so runs repeat exactly. "
                           "Whoever knows the seed can remove the noise: such a run has no guarantee")

    @field_validator("target_epsilon")
    @classmethod
    def _finite(cls, v: float) -> float:
        return _finite_epsilon(v)
