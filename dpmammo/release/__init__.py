"""Release one trained model: its weights, its ledger, a privacy statement and a model card.

A run directory is a research record, not a release: its log.txt and metrics.json hold numbers
computed from private data without noise (training-set sizes, per-epoch validation AUROC), and a
study folder holds many models of the same patients. `release_run` copies out only what the
run's guarantee covers:

- `model.safetensors`: the selected weights (DP-SGD output; the chosen epoch is the one caveat);
- `model.json`: the architecture, to rebuild the model (no data paths, no seeds);
- `privacy.json`: the run's ledger (every stage of its chain and the composed total; no exact
  count of private units is in it, see dpmammo.privacy.sampling);
- `PRIVACY.md`: the statement: unit, ε, δ, accountant, chain, and what is *not* accounted;
- `MODEL_CARD.md`: what the model is, what it was trained on, and its evaluations;
- `release.json`: this folder's own marker (what it holds, which run it came from, and whether the
  model predicts from the mean logit over its 4 flips, `test_flips`; null for a generator).

A run without a guarantee (private data used without DP, seeded noise, inputs of unknown origin)
is refused unless `allow_no_guarantee`; its statement then says so in its first line.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from dpmammo import __version__
from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic, write_text_atomic
from dpmammo.models.config import flip_invariant
from dpmammo.privacy.config import UNIT_WORDS
from dpmammo.privacy.ledger import PrivacyRecord, describe
from dpmammo.runs import RunDir

MARKER = "release.json"
RELEASE_FILES = ("model.safetensors", "model.json", "privacy.json", "PRIVACY.md", "MODEL_CARD.md", MARKER)

NOT_ACCOUNTED = (
    "Model selection: the released weights are those of the epoch with the best validation AUROC (or the last "
    "epoch, if so configured). The choice depends on the validation patients without DP; it reveals nothing "
    "about the training patients beyond the stated ε, but a little about the validation set.",
    "Evaluation numbers in the model card are computed on the named test sets without DP: they describe those "
    "sets, not the training patients.",
    "Hyper-parameters (learning rate, epochs, clipping norm, batch size) are public choices made before "
    "training, on validation data, phantoms or public data; the ε covers one training run with them.",
    "Composition: every model released from the same patients spends budget. Releasing k models of one data "
    "set is (Σε, Σδ)-DP at worst (tighter by composing their ledgers' events); a study folder's grid of runs "
    "is not one release.",
    "Not released and not covered: the run's log.txt and metrics.json (exact data-set sizes, per-epoch "
    "validation AUROC), feature caches of private images (~/.cache/dpmammo), and any non-DP model of a study "
    "(quality judges, audit models).",
)


class ReleaseRecord(BaseModel):
    """release.json: what the folder holds (its own marker: `release` replaces only such a folder)."""

    source_run: str
    guarantee: str
    test_flips: Optional[bool] = Field(None, description="predict from the mean logit over the patch's 4 flips, as "
                                                         "the run's evaluations did (train.test_flips); false: the "
                                                         "patch alone; null: a generator (no predictions), or a "
                                                         "release made before this was recorded")
    files: list[str]
    dpmammo_version: str


def release_run(run_dir: str | Path, out: str | Path, *, allow_no_guarantee: bool = False,
                force: bool = False) -> ReleaseRecord:
    """Package the finished run in `run_dir` into `out` (see the module docstring).

    Example:
        >>> release_run("runs/cnn-eps6", "release/cnn-eps6")  # doctest: +SKIP
    """
    run = RunDir(Path(run_dir).expanduser().resolve())
    out = Path(out).expanduser().resolve()
    if out == run.path or out.is_relative_to(run.path) or run.path.is_relative_to(out):
        raise DpMammoError(f"--out {out} is, holds or lies inside the run {run.path}; choose a folder outside it")
    run.require_finished()
    record = run.read_privacy()
    if record.total.guarantee == "none" and not allow_no_guarantee:
        raise DpMammoError(f"{run.path} has no privacy guarantee ({describe(record.total)}); releasing it exposes "
                           "its training patients. Pass --no-guarantee-ok to package it anyway, with that statement")
    model_cfg, test_flips = _model_config(run)
    _prepare(out, force)
    shutil.copyfile(run.weights, out / "model.safetensors")
    write_json_atomic(out / "model.json", model_cfg.model_dump(mode="json"))
    write_json_atomic(out / "privacy.json", record.model_dump(mode="json"))
    write_text_atomic(out / "PRIVACY.md", privacy_statement(record, run.name))
    write_text_atomic(out / "MODEL_CARD.md", model_card(run, model_cfg, record, test_flips=test_flips))
    rel = ReleaseRecord(source_run=run.name, guarantee=describe(record.total), test_flips=test_flips,
                        files=list(RELEASE_FILES), dpmammo_version=__version__)
    write_json_atomic(out / MARKER, rel.model_dump(mode="json"))
    return rel


def _model_config(run: RunDir) -> tuple[BaseModel, Optional[bool]]:
    """The run's model block (classifier or generator), typed, weight-file sources dropped; and
    whether the run predicts from the mean logit over the 4 flips (train.test_flips; None for a
    generator, which predicts nothing)."""
    from dpmammo.config import parse_config
    from dpmammo.gan.registry import is_generator_config, parse_generator_config
    from dpmammo.train import TrainConfig

    data = run.read_config()
    if is_generator_config(data):
        return parse_generator_config(data, str(run.config)).model, None
    cfg = parse_config(TrainConfig, data, str(run.config))
    sources = {"weights": None, "backbone_weights": None, "pretrained": False}
    model = cfg.model.model_copy(update={k: v for k, v in sources.items() if k in type(cfg.model).model_fields})
    return model, cfg.train.test_flips


def _prepare(out: Path, force: bool) -> None:
    """A new or empty folder; an earlier release (its marker present) is replaced only with `force`,
    and only its own files; any other non-empty folder is refused."""
    if out.exists() and not out.is_dir():
        raise DpMammoError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DpMammoError(f"--out {out} is not empty and holds no dpmammo release; choose a new folder")
        if not force:
            raise DpMammoError(f"--out {out} holds a release already; pass --force to replace it")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RELEASE_FILES)
        if foreign:
            raise DpMammoError(f"--out {out} holds files a release did not write ({', '.join(foreign[:3])}); "
                               "choose a new folder")
        for name in RELEASE_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def privacy_statement(record: PrivacyRecord, run_name: str) -> str:
    total = record.total
    lines = [f"# Privacy statement: {run_name}", ""]
    if total.guarantee == "dp":
        lines += [f"This model is **({total.epsilon:.2f}, {total.delta:.0e})-differentially private "
                  f"{UNIT_WORDS[total.unit]}**: for any one {total.unit}, the distribution of everything in this "
                  f"folder changes by at most a factor e^{total.epsilon:.2f} (plus δ = {total.delta:.0e}) whether "
                  f"or not that {total.unit}'s data was used.", "",
                  f"- Unit of privacy: the {total.unit} (all of a {total.unit}'s patches together)."
                  if total.unit == "patient" else f"- Unit of privacy: the {total.unit}.",
                  "- Adjacency: add or remove one unit; the number of units is not released (the sample rate "
                  "was set from a noisy count, accounted).",
                  f"- Composition over the chain: {total.method}.",
                  "- Noise and sampling: ChaCha20 keyed with 256 bits of OS entropy, never written down."]
    elif total.guarantee == "public":
        lines += ["No private data entered this model or any stage behind it: there is no privacy budget to state."]
    else:
        lines += [f"**This model carries no privacy guarantee: {describe(total)}.** It was packaged with "
                  "--no-guarantee-ok; do not share it outside the data owner's control."]
    lines += ["", "## Stages of its chain", "", "| stage | run | data | guarantee | unit | ε | δ | accountant |",
              "|---|---|---|---|---|---|---|---|"]
    for s in record.stages:
        eps = "" if s.epsilon is None else f"{s.epsilon:.3f}"
        dlt = "" if s.delta is None else f"{s.delta:.0e}"
        lines.append(f"| {s.stage} | {s.run} | {', '.join(s.data)} | {s.guarantee}"
                     f"{f' ({s.reason})' if s.reason else ''} | {s.unit or ''} | {eps} | {dlt} | {s.accountant or ''} |")
    lines += ["", "## Not accounted by the ε above", ""] + [f"- {n}" for n in NOT_ACCOUNTED]
    return "\n".join(lines) + "\n"


def model_card(run: RunDir, model_cfg: BaseModel, record: PrivacyRecord, *,
               test_flips: Optional[bool] = None) -> str:
    generator = getattr(model_cfg, "name", None) is None  # generator shapes have no registry name
    task = ("a conditional generator of mammography patches (condition 1 = malignant, 0 = benign)" if generator
            else "breast-mass malignancy from a mammography patch; output: P(malignant) (class 1)")
    lines = [f"# Model card: {run.name}", "",
             f"- Model: `{getattr(model_cfg, 'name', type(model_cfg).__name__)}`; architecture in `model.json`.",
             f"- Task: {task}.",
             *(["- Prediction: the mean logit over the patch's 4 flips (horizontal, vertical, both, none), as its "
                "evaluations were computed (`train.test_flips`)."] if test_flips else []),
             *(["- Prediction: the same for the patch in each of its 8 flips and transposes: its features are "
                "averaged over them (`model.symmetrize`)."] if flip_invariant(model_cfg) else []),
             f"- Training data: {', '.join(record.own.data)}.",
             f"- Privacy: {describe(record.total)} (see PRIVACY.md).",
             "- Intended use: research on privacy-preserving mammography models; not a medical device.",
             "", "## Evaluations", ""]
    evaluations = run.evaluations()
    if not evaluations:
        lines.append("Not evaluated (`dpmammo evaluate RUN --on SET` before releasing adds them here).")
    for name, metrics in evaluations.items():
        lines.append(f"- {name}: AUROC {metrics['auroc']:.3f} (computed without DP on that test set).")
    return "\n".join(lines) + "\n"


def release_files(out: str | Path) -> Optional[ReleaseRecord]:
    """A release folder's marker, typed; None when `out` is not a release."""
    path = Path(out) / MARKER
    return ReleaseRecord.model_validate_json(path.read_text()) if path.is_file() else None
