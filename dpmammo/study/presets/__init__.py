"""Packaged study presets: `quick` (CPU, minutes), `quick-audit` (quick plus a membership-inference audit of
every condition × ε), `quick-e2e` (quick with a DP-MERF generator trained by the study, budget split), `utility` (the
validation winners over 3 seeds at ε ∈ {1, 3, 6, ∞}) and `paper` (the published setup, for a GPU)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

from dpmammo.config import apply_overrides, parse_config, read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.study.config import StudyConfig

PRESETS = ("quick", "quick-audit", "quick-e2e", "utility", "paper")
# The generator of quick-e2e: DP-MERF (dpmammo.gan.merf) on the private training set at the quick
# study's resolution, accounted like the study's DP stages (per patient, δ = 1e-4, PRV); the study
# sets privacy.target_epsilon to generator_share × each ε. Its other settings are DP-MERF's defaults.
# Its generator is half DP-MERF's default width and trains 5 epochs of 100 steps: at the defaults
# (width 64, 20 epochs) one generator takes several times the rest of the study on a CPU, and its
# loss had stopped falling after 2 epochs (at ε = 0.5 the release's noise, not the fit, sets the floor).
E2E_GENERATOR = ("{generator: dp-merf, data: {train: [cbis-ddsm/train]}, model: {image_size: 64, g_width: 32}, "
                 "optim: {epochs: 5}, privacy: {delta: 1.0e-4, unit: patient, accountant: prv}}")
# A preset that is another one plus overrides (one source of truth: no copy to drift apart).
# quick-audit: head-only fine-tuning audited with LiRA and 16 reference models (cheap on cached
# features), full-model conditions with one training run and 500 procedural canaries of 8 copies
# each (extra patients built to be memorised: 200 mislabelled private patients proved nothing, even
# of a non-private model; docs/audits.md).
# quick-e2e: the whole chain on CPU: a DP generator trained at half of each ε, then the DP fine-tune on
# its synthetic pretraining calibrated so that the chain's total is ε, beside real-only DP at ε.
# `synthetic` comes free (it is the pretrain run). No ε = ∞ column, to keep it minutes on a small CPU
# (--set "epsilons=[1, 6, inf]" adds a non-private generator and its runs); benchmarks/README.md has its time.
DERIVED = {
    "quick-audit": ("quick", ["name=quick-audit", "audit={method: auto, models: 16, canaries: 500, "
                                                  "canary_kind: procedural, canary_patches: 8, seed: 0}"]),
    "quick-e2e": ("quick", ["name=quick-e2e", "conditions=[real, synthetic, synthetic→real]", "epsilons=[1, 6]",
                            f"synthetic={{generator: {E2E_GENERATOR}, n: 3000, balance: 0.5, generator_share: 0.5}}"]),
}


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise DpMammoError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return Path(str(resources.files(__package__) / f"{DERIVED.get(name, (name,))[0]}.yaml"))


def load_study(config: Optional[str | Path] = None, *, preset: Optional[str] = None,
               overrides: Optional[list[str]] = None) -> StudyConfig:
    """A study from a YAML file or a preset (exactly one), with `--set key=value` overrides."""
    if (config is None) == (preset is None):
        raise DpMammoError(f"give a study config file or --preset {'|'.join(PRESETS)} (exactly one)")
    path = Path(config) if config is not None else preset_path(preset)
    derived = DERIVED[preset][1] if preset in DERIVED else []
    data = apply_overrides(read_yaml(path), derived + (overrides or []))
    return parse_config(StudyConfig, data, f"preset {preset}" if preset else str(path))
