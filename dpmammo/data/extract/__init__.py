"""Bring your own mammograms: DICOM/PNG/TIFF + lesion annotations → a patient-disjoint patch set.

`extract(cfg, out)` writes OUT in the published layout (`OUT/<dataset>/<split>/is_benign_*/`),
so `dpmammo data index`, `train` and `study` read it unchanged. Sources: CBIS-DDSM as downloaded
from TCIA (`cbis_ddsm`), or a generic annotation table (`table`). One job per module:

- config:    the typed config (source, patch recipe, split, workers)
- pixels:    reading DICOM/PNG/TIFF into 8-bit display values (Modality/VOI LUT, MONOCHROME1)
- lesions:   mask → components → boxes → square crops → patches
- jobs:      one mammogram and its annotations, run in a worker process
- cbis_ddsm: the TCIA collection's CSVs and folder tree (and its traps) → jobs
- table:     a generic annotation CSV → jobs
- splits:    patient-disjoint, label-stratified splits
- run:       the pool, progress, OUT written atomically, manifest, skipped.csv, extract.json
"""

from dpmammo.data.extract.config import CbisDdsmSource, ExtractConfig, PatchRecipe, SplitConfig, TableSource
from dpmammo.data.extract.run import extract

__all__ = ["CbisDdsmSource", "ExtractConfig", "PatchRecipe", "SplitConfig", "TableSource", "extract"]
