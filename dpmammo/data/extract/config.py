"""The extraction config: where the annotations are, how a patch is cut, how the set is split.

Every value that shapes the output is here and is written, resolved, to OUT/extract.json.
Defaults follow the reference study's patch recipe (Osuala et al., code RichardObi/mammo_dp:
margin 60 px, crops at least 128 px, 128 px patches, area-averaged down-sizing, masks closed
with a 9×9 element at quarter resolution before their components are counted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Union

from pydantic import Field, field_validator
from typing_extensions import Annotated

from dpmammo.config import Seed, StrictModel

SPLITS = ("train", "val", "test")


class PatchRecipe(StrictModel):
    """From a lesion's mask or box to a square patch."""

    size: int = Field(128, ge=16, le=1024, description="side in px of the written patch")
    margin: int = Field(60, ge=0, description="px of context added on each side of the lesion's bounding box")
    min_side: int = Field(128, ge=8, description="a crop spans at least this many image px (small lesions keep context)")
    closing_radius: int = Field(
        18, ge=0, description="px; a mask is closed with a (2r+1)-px square so a lesion's fragments count as one "
                              "component (the reference: 9×9 at quarter scale); 0 = no closing")
    min_lesion_pixels: int = Field(16, ge=1, description="a component with fewer mask pixels is a speck, not a lesion")
    jitter: float = Field(0.0, ge=0.0, le=0.5,
                          description="random shift of the crop centre, as a fraction of its side; 0 = off")
    mask_size_tolerance: float = Field(
        0.1, ge=0.0, le=1.0, description="a mask whose height or width differs from its image's by at most this "
                                         "fraction is resized to the image (nearest neighbour); more skips the lesion")


class SplitConfig(StrictModel):
    """Patient-disjoint splits, stratified by label."""

    mode: Literal["fractions", "source"] = Field(
        "fractions", description="fractions: draw train/val/test by patient; source: keep the source's own "
                                 "train/test and draw val from train by patient")
    fractions: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="train, val, test (mode fractions)")
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0,
                                description="share of the source's training patients drawn into val (mode source)")
    seed: Seed = 0

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"expected three fractions ≥ 0 for train, val, test that sum to 1, got {v}")
        if v[0] <= 0:
            raise ValueError(f"the train fraction must be > 0, got {v}")
        return v


class CbisDdsmSource(StrictModel):
    """CBIS-DDSM as downloaded from TCIA: description CSVs + the DICOM folder tree."""

    kind: Literal["cbis-ddsm"] = "cbis-ddsm"
    csv: list[Path] = Field(min_length=1, description="case description CSVs (e.g. mass_case_description_train_set.csv)")
    dicom_root: Path = Field(description="folder holding the series folders (or a CBIS-DDSM folder holding them)")
    abnormality_types: list[Literal["mass", "calcification"]] = Field(
        ["mass"], min_length=1, description="rows of other abnormality types are left out (and counted)")


class TableSource(StrictModel):
    """A CSV with one row per lesion: image, patient, label, and a mask path or a box."""

    kind: Literal["csv"] = "csv"
    table: Path


Source = Annotated[Union[CbisDdsmSource, TableSource], Field(discriminator="kind")]


class ExtractConfig(StrictModel):
    source: Source
    dataset: str = Field(description="the data set's folder name in OUT (the `cbis-ddsm` of `cbis-ddsm/train`)",
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    recipe: PatchRecipe = PatchRecipe()
    split: SplitConfig = SplitConfig()
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                         description="decoding processes; 1 = in this process")
