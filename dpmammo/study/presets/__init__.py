"""Packaged study presets: `quick` (CPU, minutes), `quick-audit` (quick plus a membership-inference audit of
every condition × ε) and `paper` (the published setup, for a GPU)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

from dpmammo.config import apply_overrides, parse_config, read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.study.config import StudyConfig

PRESETS = ("quick", "quick-audit", "paper")
# A preset that is another one plus overrides (one source of truth: no copy to drift apart).
# quick-audit: head-only fine-tuning audited with LiRA and 16 reference models (cheap on cached
# features), full-model conditions with one training run and 200 mislabelled canaries.
DERIVED = {"quick-audit": ("quick", ["name=quick-audit", "audit={method: auto, models: 16, canaries: 200, seed: 0}"])}


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
