"""Strict weight files: every key present, every shape equal, or a one-line error.

A backbone that silently keeps its random initialisation invalidates a privacy-utility curve,
so there is no partial load here (unlike timm's custom loader or the reference study's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DpMammoError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: name it, do not guess
        raise DpMammoError(f"cannot read weight file {path}: {e.__class__.__name__}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise DpMammoError(f"weight file {path} does not hold a state dict")
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`; any missing, unexpected or mis-shaped key is an error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        problems.append(f"{len(mismatched)} with another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                        f"model {tuple(own[k].shape)})")
    if problems:
        raise DpMammoError(f"weights in {source} do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_weights(module: nn.Module, path: str | Path) -> None:
    load_state_dict_strict(module, read_state_dict(path), str(path))


def load_init_weights(model: nn.Module, path: str | Path, parts: str) -> None:
    """A parent run's weights into `model` (a Classifier), strictly: `all` loads every weight;
    `backbone` loads every backbone weight and leaves the head as initialised (the file's head,
    trained for other classes, is not used: the choice is the config's, never a fallback)."""
    state = read_state_dict(path)
    if parts == "backbone":
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise DpMammoError(f"{path} holds no backbone weights (no key starts with 'backbone.')")
        load_state_dict_strict(model.backbone, backbone, f"{path} (its backbone)")
        return
    shapes = lambda d: {k: tuple(v.shape) for k, v in d.items() if k.startswith("head.")}  # noqa: E731
    mine, theirs = shapes(model.state_dict()), shapes(state)
    if mine != theirs:
        raise DpMammoError(f"the head in {path} is another one ({theirs} against this model's {mine}): it was "
                           "trained for other classes or as a projection; set init_weights: backbone to load the "
                           "backbone only (the head starts fresh)")
    load_state_dict_strict(model, state, str(path))


def save_weights(module: nn.Module, path: str | Path) -> None:
    """safetensors, written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
