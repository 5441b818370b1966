"""The `privacy:` block shared by every DP stage (classifier and GAN)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dpmammo.config import StrictModel

DEFAULT_DELTA = 1e-4


class PrivacyConfig(StrictModel):
    target_epsilon: float = Field(..., gt=0, description="privacy budget ε for this stage")
    delta: float = Field(DEFAULT_DELTA, gt=0, lt=1, description="δ; must be < 1/N for N private patches")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample clipping norm C")
    accountant: Literal["rdp", "prv"] = "rdp"
    grad_sample_mode: Literal["auto", "hooks", "functorch", "ghost"] = Field(
        "auto", description="how per-sample gradients are clipped: hooks/functorch instantiate them, ghost "
                            "(fast gradient clipping) computes only their norms; auto picks the fastest for the model")
