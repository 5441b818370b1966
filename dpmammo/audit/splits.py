"""Who trains on what: the member splits of an audit's models, drawn from the audit's seed.

- Target (the audited model of LiRA and RMIA): a uniformly random half of the pool's units.
  Exactly half, like every reference model: the number of members sets the number of steps
  (non-private) or the sampling rate (DP), and a target trained on more units than its
  references has systematically larger margins on *every* record, which online LiRA reads as
  membership (seen on phantoms: target 36 units, references 32, online LiRA AUC 0.66 vs 0.81
  for the loss attack).
- Reference models: in pairs, a random half and its complement (ML Privacy Meter's paired
  models), so every model holds half the pool and every unit is in exactly half of the models
  (Carlini et al.'s balanced in/out statistics per unit). Drawn independently of the target's
  half: knowing the reference models' members tells the attacker nothing about the target's.
  Equal sizes also give every model the same sampling rate and noise (one calibration).
- One-run (Steinke et al. 2023): m units become canaries; each is included with probability ½
  and, when included, trained on with the *other* label. The other units are always members.
  A mislabelled patch is the most memorable thing a classifier can see in this data: it has to
  be learnt against every similar patch, so its inclusion moves the model's output far more than
  a typical patch's (Steinke et al. and Nasr et al. 2021 found mislabelled input-space canaries
  among the strongest black-box ones). Real patches stay in-distribution, so the canaries audit
  the recipe as it runs, and the patient-level unit is kept (a canary is a whole patient).
- One-run with phantom canaries (`canary_kind: phantom`): m extra patients, each one phantom patch
  (dpmammo.data.phantoms, a random process: out of distribution for real patches) with a label
  drawn independently of how it looks, each added to the training set with probability ½. Every
  private unit is always a member. No rule links a canary's look to its label, so a model fits a
  canary it has seen only by memorising it, and one it has not seen it can only guess: the
  canaries built to be memorised of Steinke et al. and of Nasr et al. 2023 (mislabelled and out
  of distribution), here without removing anything from the recipe's data.
- Procedural canaries (`canary_kind: procedural`): the same, with images of the public random
  processes (dpmammo.data.procedural: dead leaves, spectral noise and random generators in turn,
  from a seed of the audit's own), a second out-of-distribution family that differs from
  mammograms more than phantoms do. For either kind, a canary patient of several copies of its
  image is seen that many times an epoch, and duplication is what gets training data memorised
  (Carlini et al. 2023); which kind a recipe's release shows more of varied from run to run
  (benchmarks/README.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from dpmammo.data.manifest import PUBLISHED_FOLDER, published_name
from dpmammo.data.phantoms import make_patch
from dpmammo.errors import DpMammoError
from dpmammo.privacy.config import Unit
from dpmammo.train.members import AuditSplit

_STREAM = 0xA0D1  # keeps the audit's stream apart from other uses of the same seed
# The data set name of extra canaries: the one-run scorer tells them from private units by it.
CANARY_DATASET = "audit-canary"
CANARY_MANIFEST = "canaries.json"  # beside the images of write_extra_canaries: what made them
ExtraKind = Literal["phantom", "procedural"]  # canaries that are extra patients of generated images
# The procedural kinds of procedural canaries, canary i of kind i mod 3 (mammo-phantom is left out:
# it is close to the phantom canaries, the other kind).
PROCEDURAL_CANARY_KINDS = ("dead-leaves", "spectral", "random-generator")


def reference_splits(units: list[str], n_refs: int, *, seed: int, unit: Unit) -> list[AuditSplit]:
    """The target's split, then the K reference models' (roles target, reference-00, ...)."""
    if len(units) < 8:
        raise DpMammoError(f"the private pool has {len(units)} {unit}s; an audit needs at least 8")
    rng = np.random.default_rng([seed, _STREAM, 0])
    target = np.zeros(len(units), dtype=bool)
    target[rng.permutation(len(units))[:len(units) // 2]] = True
    refs = np.zeros((n_refs, len(units)), dtype=bool)
    for pair in range(n_refs // 2):
        refs[2 * pair, rng.permutation(len(units))[:len(units) // 2]] = True
        refs[2 * pair + 1] = ~refs[2 * pair]
    masks = [("target", target)] + [(f"reference-{k:02d}", refs[k]) for k in range(n_refs)]
    return [AuditSplit(unit=unit, members=[u for u, keep in zip(units, mask) if keep], seed=seed, role=role)
            for role, mask in masks]


def canary_split(units: list[str], m: int, *, seed: int, unit: Unit) -> tuple[AuditSplit, list[str], np.ndarray]:
    """The one-run target's split, the canary ids and which of them were included."""
    if m > len(units):
        raise DpMammoError(f"audit.canaries={m} exceeds the {len(units)} {unit}s of the private pool; "
                           "use fewer canaries")
    rng = np.random.default_rng([seed, _STREAM, 1])
    chosen = rng.choice(len(units), size=m, replace=False)
    included = rng.random(m) < 0.5
    canaries = [units[i] for i in chosen]
    is_canary = np.zeros(len(units), dtype=bool)
    is_canary[chosen] = True
    members = [u for u, c in zip(units, is_canary) if not c] + [c for c, inc in zip(canaries, included) if inc]
    mislabelled = [c for c, inc in zip(canaries, included) if inc]
    split = AuditSplit(unit=unit, members=members, mislabelled=mislabelled, seed=seed, role="target")
    return split, canaries, included


class ExtraCanaries(BaseModel):
    """What made a folder of extra canaries (its manifest, CANARY_MANIFEST): the same values make
    the same files, byte for byte."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ExtraKind = "phantom"
    count: int
    patches_per_canary: int
    size: int
    seed: int


def write_extra_canaries(folder: Path, m: int, *, seed: int, size: int, patches: int = 1,
                         kind: ExtraKind = "phantom") -> Path:
    """m canaries as a training set in the published layout, `folder`/audit-canary/train: canary i
    is patient `canary<i>` with `patches` copies of one `size`-pixel image (a patient with several
    patches weighs that many records in non-private training; under DP its sum is clipped once)
    and a label drawn at random, independently of its image: a phantom patch (`kind` phantom; its
    mass drawn benign- or malignant-looking) or an image of procedural kind
    PROCEDURAL_CANARY_KINDS[i mod 3] (`kind` procedural). `folder`/CANARY_MANIFEST says what made
    them. Returns the set's folder (a data.train entry). A folder already there is kept when its
    manifest is this audit's and it holds exactly these files (a resumed audit), refused otherwise:
    the audit has no --force."""
    if m < 8:
        raise DpMammoError(f"audit.canaries={m}: a one-run audit with {kind} canaries needs at least 8")
    wanted = ExtraCanaries(kind=kind, count=m, patches_per_canary=patches, size=size, seed=seed)
    rng = np.random.default_rng([seed, _STREAM, 2])
    labels, looks = rng.integers(0, 2, m), rng.integers(0, 2, m)
    images = {Path(CANARY_DATASET, "train", PUBLISHED_FOLDER[int(y)],
                   published_name(f"canary{i}", f"{i}c{j}", "0", int(y))): i
              for i, y in enumerate(labels) for j in range(patches)}
    files = set(images) | {Path(CANARY_MANIFEST)}
    folder = Path(folder)
    if folder.exists():
        _check_made_alike(folder, wanted)
        found = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
        if found != files:
            raise DpMammoError(f"{folder} holds other files than this audit's {m} {kind} canaries (seed {seed}) and "
                               f"their {CANARY_MANIFEST}; choose another --out")
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():  # left by an interrupted audit: removed only if it holds nothing but canary files
        left = {p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file()}
        if not left <= files:
            raise DpMammoError(f"{tmp} holds files this audit did not write; move them away or choose another --out")
        shutil.rmtree(tmp)
    drawn = _procedural_images(m, seed=seed, size=size) if kind == "procedural" else None
    for rel, i in images.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = (drawn[i] if drawn is not None
                  else make_patch(np.random.default_rng([seed, _STREAM, 3, i]), bool(looks[i]), size))
        Image.fromarray(pixels).save(tmp / rel)
    (tmp / CANARY_MANIFEST).write_text(wanted.model_dump_json(indent=2) + "\n")
    tmp.rename(folder)
    return folder


def _procedural_images(m: int, *, seed: int, size: int) -> list[np.ndarray]:
    """Image i: the (i // 3)-th image of procedural kind i mod 3, from a seed derived from the audit's
    (its own stream: no canary is an image of a public prior made with the same seed)."""
    from dpmammo.data.procedural.store import generate

    own = int(np.random.default_rng([seed, _STREAM, 5]).integers(2 ** 31))
    n = len(PROCEDURAL_CANARY_KINDS)
    made = [generate(k, seed=own, start=0, stop=len(range(j, m, n)), size=size)[0][:, 0].numpy()
            for j, k in enumerate(PROCEDURAL_CANARY_KINDS)]
    return [made[i % n][i // n] for i in range(m)]


def _check_made_alike(folder: Path, wanted: ExtraCanaries) -> None:
    """Refuse canaries in `folder` whose manifest says they were made otherwise than `wanted` (a folder
    without a manifest is left to the check of its files)."""
    path = folder / CANARY_MANIFEST
    if not path.is_file():
        return
    try:
        found = ExtraCanaries.model_validate_json(path.read_text())
    except (ValidationError, UnicodeDecodeError) as e:
        raise DpMammoError(f"{path} is not a canary manifest ({e.__class__.__name__}); "
                           "choose another --out") from None
    if found != wanted:
        differ = ", ".join(f"{name} {getattr(found, name)} (this audit: {getattr(wanted, name)})"
                           for name in ExtraCanaries.model_fields if getattr(found, name) != getattr(wanted, name))
        raise DpMammoError(f"{folder} holds canaries made with other settings: {differ}; the audit does not "
                           f"replace them: choose another --out, or move {folder} away to make them anew")


def extra_canary_split(units: list[str], canary_units: list[str], *, seed: int,
                         unit: Unit) -> tuple[AuditSplit, np.ndarray]:
    """The one-run target's split with extra canaries: every private unit, and each canary unit
    with probability ½ (returned: which of `canary_units` were included)."""
    included = np.random.default_rng([seed, _STREAM, 4]).random(len(canary_units)) < 0.5
    canaries = set(canary_units)
    members = [u for u in units if u not in canaries] + [c for c, inc in zip(canary_units, included) if inc]
    return AuditSplit(unit=unit, members=members, seed=seed, role="target"), included
