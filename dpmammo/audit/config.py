"""The `audit:` settings: which attack, how many reference models or canaries, the audit's seed."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from dpmammo.config import Seed, StrictModel
from dpmammo.privacy.config import Unit

# The methods' one table: name → what it does. The settings, the audit record, `dpmammo audit
# --method`'s help and `audit.run.METHOD_PRIMARY` (the attack each reports as its measurement) read it.
METHOD_WORDS: dict[str, str] = {
    "lira": "LiRA (Carlini et al. 2022) with K reference models; loss-threshold baseline",
    "rmia": "RMIA (Zarifzadeh et al. 2024) with K reference models; loss-threshold baseline",
    "one-run": "one training run with mislabelled canaries (Steinke, Nasr & Jagielski 2023)",
    "gradient-canary": "white-box: one DP training run with gradient canaries, every noisy update seen (Nasr et al. "
                       "2023; bounds of Steinke et al. 2023 and, f-DP, Mahloujifar et al. 2025; Andrew et al. 2024 "
                       "estimate)",
}
AUTO_WORDS = ("LiRA for head-only recipes (reference models train on cached features), one-run otherwise (with "
              "canary_kind's canaries)")
AuditMethod = Literal[tuple(METHOD_WORDS)]  # type: ignore[valid-type]  # what an audit ran
Method = Literal[(*METHOD_WORDS, "auto")]  # type: ignore[valid-type]  # what a user asks for


def method_help() -> str:
    """Every method and `auto`, one clause each (the CLI help and the settings' description)."""
    return "; ".join(f"{k}: {v}" for k, v in {**METHOD_WORDS, "auto": AUTO_WORDS}.items())


class AuditSettings(StrictModel):
    """How to audit a recipe. Reference-model attacks train K + 1 models of the recipe; the
    one-run audit trains one."""

    method: Method = Field("auto", description=method_help())
    models: int = Field(16, ge=4, le=1024, description="reference models K (lira, rmia); even, so every unit is "
                                                       "in exactly half of them")
    canaries: int = Field(200, ge=8, description="one-run: m mislabelled canaries (at most the private units); "
                                                 "gradient-canary: m canary units added to the private set; each "
                                                 "trained on with probability 1/2")
    canary_kind: Literal["mislabelled", "phantom", "procedural"] = Field(
        "mislabelled", description="one-run: canaries are private units trained with the other label (mislabelled, "
                                   "in distribution), or extra patients of one generated image each with a random "
                                   "label, out of distribution and built to be memorised, every private unit trains: "
                                   "a phantom patch (phantom) or a procedural image, dead leaves, spectral noise or a "
                                   "random generator's (procedural); several canary_patches copies each are what a "
                                   "non-private recipe memorises; with method auto, used where auto picks one-run")
    directions: Literal["dirac", "gaussian"] = Field(
        "dirac", description="gradient-canary: a canary's gradient is one trainable coordinate (dirac) or a random "
                             "unit vector (gaussian, an (m, parameters) matrix in memory)")
    canary_patches: int = Field(1, ge=1, le=64, description="gradient-canary: records of one canary patient, each "
                                                            "with a gradient of norm C (unit patch: 1); one-run with "
                                                            "phantom or procedural canaries: copies of a canary's "
                                                            "image")
    seed: Seed = Field(0, description="the audit's own randomness (member split, canaries, bootstrap); not DP noise")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the ε lower bounds and the intervals")
    unit: Optional[Unit] = Field(None, description="non-private recipes: the unit to split the pool by (default "
                                                   "patient); a DP recipe always splits by its privacy unit")

    @field_validator("models")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (each unit is in exactly half of the reference models), got {v}")
        return v
