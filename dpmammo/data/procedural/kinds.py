"""The table of procedural image kinds: the CLI's help, config validation and `generate` read it.

Each kind is a random process with fixed parameter ranges (recorded in every provenance.json and
pretrain run as they are) and a label that the process itself draws (`classes`), for supervised
pretraining. The generator function is named as "module:function" and imported on use (torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from dpmammo.errors import DpMammoError


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    classes: tuple[str, ...]  # label i of an image is classes[i], drawn by the process
    params: dict[str, Any] = field(default_factory=dict)  # the process's fixed parameter ranges
    make: str = ""  # "module:function": f(gen: torch.Generator, n, size, params) -> (float (n,S,S) in [0,1], labels)

    def function(self) -> Callable:
        module, name = self.make.split(":")
        return getattr(importlib.import_module(module), name)


_GEN = "dpmammo.data.procedural.generators"

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("dead-leaves",
         "occluding shapes of random grey, radii ~ r^-sigma (Baradad et al. 2021, after Lee et al. 2001)",
         ("round", "square", "mixed"),
         {"leaves": 128, "sigma": 3.0, "r_min": 0.03, "r_max": 1.0, "square_aspect": [0.3, 1.0]},
         f"{_GEN}:dead_leaves"),
    Kind("spectral",
         "1/f^beta noise, random beta, orientation, anisotropy, contrast and tone curve; label: beta bin",
         ("beta<1.25", "beta<2", "beta<2.75", "beta>=2.75"),
         {"beta": [0.5, 3.5], "anisotropy": [1.0, 2.5], "std": [0.05, 0.3], "mean": [0.25, 0.75],
          "tone_gain": [0.5, 6.0]},
         f"{_GEN}:spectral"),
    Kind("random-generator",
         "a StyleGAN-like conv generator with weights drawn per image (per-channel styles, noise injection); "
         "label: its activation",
         ("leaky-relu", "sine"),
         {"channels": 16, "upsamplings": 4, "weight_gain": [0.6, 1.6], "noise": [0.0, 0.2],
          "leaky_slope": [0.0, 0.3], "sine_freq": [0.5, 1.5], "out_gain": [0.8, 3.0]},
         f"{_GEN}:random_generator"),
    Kind("mammo-phantom",
         "a mass on 1/f^beta tissue: random margins, spiculation, calcification-like specks, contrast, blur; "
         "label: round/smooth vs spiculated/irregular",
         ("round-smooth", "spiculated-irregular"),
         {"tissue_beta": [1.5, 3.2], "tissue_amp": [0.03, 0.12], "radius_px_at_128": [8, 26],
          "contrast": [0.08, 0.45], "ellipticity": [0.0, 0.35], "lobulation_smooth": [0.0, 0.03],
          "lobulation_irregular": [0.02, 0.1], "edge_px_smooth": [0.6, 1.6], "edge_px_irregular": [1.2, 3.0],
          "spicules": [8, 20], "subtle_spicules": [2, 6], "subtle_fraction": 0.3, "specks": [0, 12],
          "blur_px": [0.0, 1.5], "noise": [0.01, 0.04]},
         f"{_GEN}:mammo_phantom"),
)}


def check_kind(name: str) -> Kind:
    if name not in KINDS:
        raise DpMammoError(f"unknown procedural kind {name!r}; registered kinds: {', '.join(KINDS)}")
    return KINDS[name]


def check_kind_list(kinds: list[str], *, what: str = "kind") -> list[str]:
    """A config's list of kinds: each registered, none twice (ValueError, for pydantic validators)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; registered kinds: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError("a kind is listed twice")
    return kinds


def kind_help() -> str:
    return "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())
