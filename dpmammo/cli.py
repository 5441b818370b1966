"""The `dpmammo` command: parse arguments, load the config, call one API function.

No logic lives here. A DpMammoError becomes `error: <message>` on stderr and exit code 2.
Each command imports what it needs after its arguments and config are read: torch, timm and
opacus take seconds to load, and a typo in a config file should not wait for them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dpmammo.audit.config import method_help
from dpmammo.data.procedural.kinds import KINDS, kind_help
from dpmammo.errors import DpMammoError
from dpmammo.gan.registry import DEFAULT_GENERATOR, list_generators
from dpmammo.study.presets import PRESETS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Differentially private breast-mass malignancy classification.")
data_app = typer.Typer(no_args_is_help=True, help="Index, fetch and generate patch data.")
app.add_typer(data_app, name="data")
console = Console()


@data_app.command("index")
def data_index(root: Path, output: Optional[Path] = typer.Option(None, "-o", "--output", help="manifest CSV to write")):
    """Index a patch folder, decode every image, and print counts per set and class."""
    from dpmammo.data.manifest import index_folder, skipped_files, summarize, write_manifest
    from dpmammo.data.pixels import check_images
    from dpmammo.files import check_out
    from dpmammo.progress import StepProgress

    if output is not None:
        check_out(output, [("the data folder", root)], "-o", folder=False)
    records = index_folder(root)
    with StepProgress(console=console, every=0.25, unit="images") as bar:
        task = bar.add_task("decoding every image", total=len(records))
        problems = check_images([r.path for r in records], on_checked=lambda n: bar.advance(task, n))
    if problems:
        shown = "; ".join(f"{path}: {reason}" for path, reason in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise DpMammoError(f"{len(problems)} of {len(records)} images under {root} cannot be used: {shown}{more}")
    table = Table("set", "patches", "malignant", "benign", "patients", "source")
    for row in summarize(records):
        table.add_row(*(str(row[k]) for k in ("set", "patches", "malignant", "benign", "patients", "source")))
    console.print(table)
    skipped = skipped_files(root)
    if skipped:
        names = ", ".join(str(p.relative_to(Path(root).expanduser())) for p in skipped[:5])
        more = f", and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        console.print(escape(f"skipped {len(skipped)} file(s) that are not .png patches: {names}{more}"),
                      soft_wrap=True)
    if output is not None:
        write_manifest(records, output)
        console.print(f"wrote {output} ({len(records)} patches)")


@data_app.command("fetch")
def data_fetch(dest: Optional[Path] = typer.Option(None, help="target folder (default: the user cache)")):
    """Download the pinned public patch archive, verify it, and extract the patch folders."""
    from dpmammo.data.fetch import fetch_dataset
    from dpmammo.files import check_writable

    if dest is not None:
        check_writable(dest, "--dest")
    path = fetch_dataset(dest)
    console.print(f"data ready at {path} (export DPMAMMO_DATA={path})")


@data_app.command("phantoms")
def data_phantoms(out: Path, n: int = typer.Option(400, "--n", help="training patches (val and test get n/2)"),
                  seed: int = typer.Option(0, "--seed"), size: int = typer.Option(128, "--size"),
                  force: bool = typer.Option(False, "--force", help="replace phantoms written here before")):
    """Write deterministic phantom patches (benign: smooth blobs; malignant: spiculated) for tests and demos."""
    from dpmammo.data.phantoms import make_phantoms
    from dpmammo.files import check_writable

    check_writable(out, "OUT")
    path = make_phantoms(out, n=n, seed=seed, size=size, force=force)
    console.print(f"wrote phantoms to {path}")


@data_app.command("procedural")
def data_procedural(out: Path,
                    kind: str = typer.Option(..., "--kind", help=f"the random process: {' | '.join(KINDS)}"),
                    n: int = typer.Option(..., "--n", help="number of images"),
                    size: int = typer.Option(64, "--size", help="side in pixels (a multiple of 16, 32-256)"),
                    seed: int = typer.Option(0, "--seed", help="the process's seed: same seed, same images"),
                    force: bool = typer.Option(False, "--force", help="replace a procedural set written in OUT before")):
    """Images from a public random process (no private data): images.npy, labels.npy, provenance.json."""
    from dpmammo.data.procedural.kinds import check_kind

    check_kind(kind)  # an unknown kind fails before torch loads
    from dpmammo.data.procedural.store import check_request, write_procedural
    from dpmammo.progress import StepProgress

    check_request(out, kind, n=n, size=size, seed=seed, force=force)  # refused before the progress bar

    with StepProgress(console=console, every=0.25, unit="images") as bar:
        task = bar.add_task(f"generating {kind}", total=n)
        prov = write_procedural(out, kind, n=n, size=size, seed=seed, force=force, on_block=lambda k: bar.advance(task, k))
    counts = ", ".join(f"{c} {k}" for c, k in zip(prov["class_counts"], prov["classes"]))
    console.print(escape(f"wrote {n} {kind} images ({size} px, seed {seed}; {counts}) to {out}: "
                         f"{prov['guarantee']}"), soft_wrap=True, highlight=False)


data_procedural.__doc__ += "\n\nKinds: " + kind_help()  # the registry's one table


extract_app = typer.Typer(no_args_is_help=True,
                          help="Cut patches from your own mammograms (DICOM/PNG/TIFF + annotations) into a patient-disjoint set.")
data_app.add_typer(extract_app, name="extract")


def _extract(source: dict, out: Path, dataset: str, split: str, val_fraction: float, seed: int,
             workers: Optional[int], set_: List[str], force: bool) -> None:
    from dpmammo.config import apply_overrides, parse_config
    from dpmammo.data.extract import ExtractConfig, extract

    if split == "source":
        split_cfg: dict = {"mode": "source", "val_fraction": val_fraction, "seed": seed}
    else:
        try:
            fractions = [float(x) for x in split.split(",")]
        except ValueError:
            fractions = []
        if len(fractions) != 3:
            raise DpMammoError(f"--split {split!r}: expected `source` or three fractions train,val,test such as 0.7,0.1,0.2")
        split_cfg = {"mode": "fractions", "fractions": fractions, "seed": seed}
    data = {"source": source, "dataset": dataset, "split": split_cfg}
    if workers is not None:
        data["workers"] = workers
    cfg = parse_config(ExtractConfig, apply_overrides(data, set_), "extract options")
    summary = extract(cfg, out, force=force, progress=True)
    table = Table("set", "patches", "malignant", "benign", "patients")
    for row in summary["sets"]:
        table.add_row(*(str(row[k]) for k in ("set", "patches", "malignant", "benign", "patients")))
    console.print(table)
    console.print(f"wrote {summary['patches']} patches to {out} in {summary['seconds']:.0f} s; "
                  f"{summary['skipped']} skipped (see {out / 'skipped.csv'})")


@extract_app.command("cbis-ddsm")
def extract_cbis_ddsm(
        csv: List[Path] = typer.Option(..., "--csv", help="case description CSV, repeatable (train and test)"),
        dicom_root: Path = typer.Option(..., "--dicom-root", help="the TCIA download (holding CBIS-DDSM/ or the series folders)"),
        out: Path = typer.Option(..., "--out", help="folder to write (published layout + manifest, skipped.csv, extract.json)"),
        split: str = typer.Option("source", "--split", help="source (TCIA train/test; val drawn from train by patient) or train,val,test fractions, e.g. 0.7,0.1,0.2"),
        val_fraction: float = typer.Option(0.15, "--val-fraction", help="share of training patients drawn into val (--split source)"),
        seed: int = typer.Option(0, "--seed"),
        workers: Optional[int] = typer.Option(None, "--workers", help="decoding processes (default: all cores)"),
        dataset: str = typer.Option("cbis-ddsm", "--dataset", help="data set folder name in --out"),
        set_: List[str] = typer.Option([], "--set", help="override a config key: --set recipe.margin=40"),
        force: bool = typer.Option(False, "--force", help="replace a non-empty --out")):
    """CBIS-DDSM from TCIA (DICOMs, ROI masks, description CSVs) → patient-disjoint 128 px mass patches."""
    source = {"kind": "cbis-ddsm", "csv": [str(c) for c in csv], "dicom_root": str(dicom_root)}
    _extract(source, out, dataset, split, val_fraction, seed, workers, set_, force)


@extract_app.command("csv")
def extract_csv(
        table: Path = typer.Option(..., "--table", help="one row per lesion: image, patient, label, mask or x,y,width,height[, split]"),
        out: Path = typer.Option(..., "--out", help="folder to write (published layout + manifest, skipped.csv, extract.json)"),
        dataset: str = typer.Option(..., "--dataset", help="data set folder name in --out, e.g. hospital-a"),
        split: str = typer.Option("0.7,0.1,0.2", "--split", help="train,val,test fractions by patient, or source (the table's split column; val drawn from train)"),
        val_fraction: float = typer.Option(0.15, "--val-fraction", help="share of training patients drawn into val (--split source)"),
        seed: int = typer.Option(0, "--seed"),
        workers: Optional[int] = typer.Option(None, "--workers", help="decoding processes (default: all cores)"),
        set_: List[str] = typer.Option([], "--set", help="override a config key: --set recipe.margin=40"),
        force: bool = typer.Option(False, "--force", help="replace a non-empty --out")):
    """A generic annotation table (DICOM/PNG/TIFF images, masks or boxes) → patient-disjoint patches."""
    _extract({"kind": "csv", "table": str(table)}, out, dataset, split, val_fraction, seed, workers, set_, force)


@app.command("train")
def train(config: Path,
          out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<config name>)"),
          set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=5"),
          force: bool = typer.Option(False, "--force", help="replace a finished run in --out"),
          nproc: int = typer.Option(1, "--nproc", min=1,
                                    help="train over this many processes on this machine (torch.distributed: gloo on "
                                         "CPU, one GPU each on CUDA); under torchrun leave it at 1")):
    """Train a classifier (DP-SGD when the config has a privacy: block)."""
    from dpmammo.config import load_config
    from dpmammo.train.config import TrainConfig

    cfg = load_config(TrainConfig, config, set_)
    from dpmammo import distributed
    from dpmammo.files import check_out
    from dpmammo.runs import RunDir, config_input
    from dpmammo.train import fit

    with distributed.torchrun_group(cfg.train.device) as ranks:  # torchrun: join its process group
        if ranks.distributed and nproc > 1:
            raise DpMammoError(f"--nproc {nproc} under torchrun: torchrun starts the processes; drop --nproc")
        out = out or Path("runs") / config.stem
        check_out(out, config_input(config, out))
        metrics = fit(cfg, out, force=force, progress=True, nproc=nproc)
    if not ranks.is_main:
        return
    console.print(f"{out}: val AUROC {metrics['val']['auroc']:.3f} (epoch {metrics['val']['epoch']}), "
                  f"{RunDir(out).read_privacy().describe()}", highlight=False)


@app.command("pretrain")
def pretrain(config: Path,
             out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<config name>)"),
             set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=5"),
             force: bool = typer.Option(False, "--force", help="replace a finished run in --out")):
    """Pretrain a classifier backbone on procedural images only (a public stage: costs no ε)."""
    from dpmammo.config import load_config
    from dpmammo.train.pretrain_config import PretrainConfig

    cfg = load_config(PretrainConfig, config, set_)
    from dpmammo.runs import RunDir
    from dpmammo.train.pretrain import pretrain as run_pretrain

    out = out or Path("runs") / config.stem
    metrics = run_pretrain(cfg, out, force=force, progress=True)
    console.print(f"{out}: val accuracy {metrics['val']['accuracy']:.3f} over {len(metrics['classes'])} classes, "
                  f"{RunDir(out).read_privacy().describe()}", highlight=False)


@app.command("evaluate")
def evaluate(run_dir: Path, on: List[str] = typer.Option(["cbis-ddsm/test", "bcdr/test"], "--on",
                                                          help="test set, repeatable"),
             data_root: Optional[Path] = typer.Option(None, "--data-root", help="override the run's data root")):
    """Evaluate a finished run: eval/<dataset>_<split>.json and a ROC curve per set."""
    from dpmammo.evaluate import evaluate_run

    results = evaluate_run(run_dir, on, data_root=data_root)
    table = Table("set", "n", "AUROC (95% CI)", "AUPRC", "sens", "spec", title="malignant = positive; "
                  "sens/spec at the validation-chosen threshold")
    for name, m in results.items():
        t = m["at_val_threshold"]
        lo, hi = m["auroc_ci95"]
        table.add_row(name, str(m["n"]), f"{m['auroc']:.3f} ({lo:.3f}–{hi:.3f})", f"{m['auprc']:.3f}",
                      f"{t['sensitivity']:.3f}", f"{t['specificity']:.3f}")
    console.print(table)


@app.command("release")
def release(run_dir: Path, out: Path = typer.Option(..., "--out", help="folder to write the release into"),
            no_guarantee_ok: bool = typer.Option(False, "--no-guarantee-ok",
                                                 help="package a run that has no privacy guarantee (said first in PRIVACY.md)"),
            force: bool = typer.Option(False, "--force", help="replace an earlier release in --out")):
    """Package one finished run to share: weights, ledger, privacy statement, model card."""
    from dpmammo.release import release_run

    rel = release_run(run_dir, out, allow_no_guarantee=no_guarantee_ok, force=force)
    console.print(f"{out}: {', '.join(rel.files)}; {rel.guarantee}", highlight=False)


@app.command("study")
def study(config: Optional[Path] = typer.Argument(None, help="study config YAML (or use --preset)"),
          preset: Optional[str] = typer.Option(None, "--preset", help=f"packaged study: {' | '.join(PRESETS)}"),
          out: Optional[Path] = typer.Option(None, "--out", help="study directory (default runs/<study name>)"),
          set_: List[str] = typer.Option([], "--set", help="override a key: --set seeds=[0,1]"),
          executor: str = typer.Option("local", "--executor", help="local (sequential) | ray"),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (executor ray)")):
    """Run a privacy-utility study (conditions × ε × seeds): resumable; writes results and report.html."""
    from dpmammo.study.presets import load_study

    cfg = load_study(config, preset=preset, overrides=set_)
    from dpmammo.files import check_out
    from dpmammo.report import build_report
    from dpmammo.study import run_study

    out = out or Path("runs") / cfg.name
    check_out(out, [("the study config", config)])
    result = run_study(cfg, out, executor=executor, address=address, console=console)
    report = build_report(result.study_dir)
    counts = {s: sum(o.status == s for o in result.outcomes.values()) for s in ("done", "cached", "failed", "skipped")}
    console.print(f"{result.study_dir}: {len(result.outcomes)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    for o in result.failed:
        console.print(f"[red]{escape(f'{o.run_id}: {o.status}: {o.error}')}[/red]")
    console.print(f"results: {result.study_dir / 'results.md'}, report: {report}")
    if result.failed:
        sys.exit(1)


@app.command("compare")
def compare(study_dirs: List[Path] = typer.Argument(..., help="finished study directories (from `dpmammo study`)"),
            out: Path = typer.Option(..., "--out", help="folder to write comparison.md and comparison.html into"),
            force: bool = typer.Option(False, "--force", help="replace an earlier comparison in --out")):
    """Compare finished studies (e.g. a GAN set, a DP generator, a procedural prior) at equal ε, per test set."""
    from dpmammo.report.compare import compare_studies

    md = compare_studies(study_dirs, out, force=force)
    console.print(f"comparison: {md}, {md.with_suffix('.html')}", highlight=False)


@app.command("audit")
def audit(config: Path,
          out: Path = typer.Option(..., "--out", help="audit folder: models/, audit.json, roc.png"),
          method: str = typer.Option("auto", "--method", help=method_help()),
          models: int = typer.Option(16, "--models", help="reference models K (lira, rmia); even"),
          canaries: int = typer.Option(200, "--canaries", help="canaries: mislabelled units (one-run) or gradient "
                                                               "canary units (gradient-canary)"),
          canary_kind: str = typer.Option("mislabelled", "--canary-kind",
                                          help="one-run: mislabelled (private units, other label) | phantom | "
                                               "procedural (extra patients of phantom patches or procedural images "
                                               "with random labels, built to be memorised)"),
          directions: str = typer.Option("dirac", "--directions", help="gradient-canary: dirac | gaussian"),
          canary_patches: int = typer.Option(1, "--canary-patches", help="records per canary unit (gradient-canary; "
                                                                         "one-run with phantom or procedural "
                                                                         "canaries: copies of its image)"),
          seed: int = typer.Option(0, "--seed", help="the audit's seed (member split, canaries), not DP noise"),
          set_: List[str] = typer.Option([], "--set", help="override a key of the training config")):
    """Membership-inference audit of a training recipe: promised ε vs the ε lower bound an attack proves."""
    from dpmammo.audit import AuditSettings, audit_recipe
    from dpmammo.config import load_config, parse_config
    from dpmammo.privacy.ledger import short
    from dpmammo.train import TrainConfig

    cfg = load_config(TrainConfig, config, set_)
    from dpmammo.files import check_out
    from dpmammo.train.config import input_paths

    check_out(out, [("the config file", config), *input_paths(cfg)])
    settings = parse_config(AuditSettings, {"method": method, "models": models, "canaries": canaries, "seed": seed,
                                            "directions": directions, "canary_patches": canary_patches,
                                            "canary_kind": canary_kind},
                            "audit options")
    rec = audit_recipe(cfg, out, settings, progress="bar" if sys.stderr.isatty() else "lines")
    estimates = any(a.gdp_estimate for a in rec.attacks)
    both = any(a.fdp_bound for a in rec.attacks)  # the bound is the larger of Steinke's and the f-DP one
    pairs = any(a.gaussian_bound for a in rec.attacks)
    table = Table("attack", "threat model", "AUC (95% CI)", "TPR@1% FPR", "TPR@0.1% FPR",
                  *([f"ε Steinke /{rec.unit}", f"ε f-DP (GDP) /{rec.unit}"] if both else []),
                  f"ε lower bound /{rec.unit}", *([f"ε Gaussian-pair bound /{rec.unit}"] if pairs else []),
                  *([f"ε GDP estimate /{rec.unit}"] if estimates else []),
                  title=f"{rec.method} audit of {config}: promised {short(rec.promised)}")
    for a in rec.attacks:
        e, f, g = a.gdp_estimate, a.fdp_bound, a.gaussian_bound
        table.add_row(a.attack + (" (primary)" if a.attack == rec.primary else ""), a.threat_model,
                      f"{a.auc.value:.3f} ({a.auc.ci_low:.3f}–{a.auc.ci_high:.3f})",
                      *(f"{t.tpr.value:.3f}" for t in a.tpr_at_fpr),
                      *([f"{a.bound.epsilon:.2f}" if f else "", f"{f.epsilon:.2f} (μ {f.mu:.3f})" if f else ""]
                        if both else []),
                      f"{a.epsilon_lower_bound:.2f}",
                      *([f"{g.epsilon:.2f} (μ {g.mu:.3f})" if g else ""] if pairs else []),
                      *([f"{e.epsilon.value:.2f} ({e.epsilon.ci_low:.2f}–{e.epsilon.ci_high:.2f})" if e else ""]
                        if estimates else []))
    console.print(table)
    if both:
        console.print("ε lower bound: the larger of Steinke et al.'s bound and the f-DP bound (Mahloujifar et al.; "
                      "premise: a Gaussian trade-off curve), each proved at half the significance")
    for a in rec.attacks:
        if a.gaussian_bound:
            g = a.gaussian_bound
            # a record written just now: mu_hat, standard_error and mechanism are always set
            ideal = f"; the ideal mechanism's μ at this σ, q, T: {rec.mechanism.ideal_mu:.3f}"
            console.print(f"Gaussian-pair bound of {a.attack} (Agrawal et al. 2026): at {g.confidence:.0%} on its "
                          f"own, premise: Gaussian scores (normality p-value in {g.normality_p_in:.2g}, "
                          f"out {g.normality_p_out:.2g}); μ̂ {g.mu_hat:.3f} ± {g.standard_error:.3f}{ideal}")
    console.print(f"wrote {out / 'audit.json'} and {out / 'roc.png'}")


gan_app = typer.Typer(no_args_is_help=True, help=f"Malignancy-conditioned generators ({', '.join(list_generators())}): "
                                                  "train (optionally DP), sample, score.")
app.add_typer(gan_app, name="gan")


@gan_app.command("train")
def gan_train(config: Path,
              out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<config name>)"),
              set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=5"),
              force: bool = typer.Option(False, "--force", help="replace a finished run in --out")):
    """Train the generator the config's `generator:` key names on real patches (DP when the config has a privacy: block)."""
    from dpmammo.gan.registry import load_generator_config

    cfg = load_generator_config(config, set_)
    from dpmammo.files import check_out
    from dpmammo.gan.registry import train_generator
    from dpmammo.runs import RunDir, config_input

    out = out or Path("runs") / config.stem
    check_out(out, config_input(config, out))
    metrics = train_generator(cfg, out, force=force, progress=True)
    console.print(f"{out}: {len(metrics['history'])} epochs in {metrics['wall_time_s']:.0f} s, "
                  f"{RunDir(out).read_privacy().describe()}; sample grids in {out / 'samples'}", highlight=False)


gan_train.__doc__ += (f"\n\nGenerators: {', '.join(list_generators())} (default {DEFAULT_GENERATOR}); "
                      "docs/generators.md says what each does.")  # the registry's one table


@gan_app.command("sample")
def gan_sample(run_dir: Path, out: Path = typer.Option(..., "--out", help="folder to write (PNGs, manifest.csv, provenance.json)"),
               n: int = typer.Option(3000, "--n", help="number of patches"),
               balance: float = typer.Option(0.5, "--balance", help="malignant fraction"),
               seed: int = typer.Option(0, "--seed"),
               force: bool = typer.Option(False, "--force", help="replace a non-empty --out")):
    """Sample labelled patches from a trained generator; provenance.json carries its privacy chain."""
    from dpmammo.gan import sample

    prov = sample(run_dir, n, out, balance=balance, seed=seed, force=force)
    console.print(f"wrote {prov['n']} patches ({prov['n_malignant']} malignant) to {out}: {prov['guarantee']}")


@gan_app.command("score")
def gan_score(folder: Path, ref: str = typer.Option("cbis-ddsm/train", "--ref", help="real set to compare with"),
              classifier: Optional[Path] = typer.Option(None, "--classifier", help="finished classifier run trained on real data (default: train a quick cnn-small on --ref)"),
              val: str = typer.Option("cbis-ddsm/val", "--val", help="validation set for that quick classifier"),
              classifier_out: Optional[Path] = typer.Option(None, "--classifier-out", help="where the quick classifier goes (reused if finished)"),
              data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder (default $DPMAMMO_DATA)"),
              max_images: Optional[int] = typer.Option(None, "--max-images", help="at most this many patches per set"),
              frd: bool = typer.Option(True, "--frd/--no-frd", help="Fréchet Radiomics Distance (needs the frd extra)"),
              json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores to this JSON file")):
    """FRD, classifier-feature Fréchet distance and class fidelity of a synthetic folder, each timed."""
    from dpmammo.data.sets import data_inputs
    from dpmammo.files import check_out
    from dpmammo.gan import score, train_score_classifier
    from dpmammo.gan.score import score_sets
    from dpmammo.runs import RunDir

    score_sets(folder, ref, root=data_root, max_images=max_images)  # bad inputs fail before any training
    inputs = [("the synthetic folder", folder), *data_inputs(data_root, [ref, val]), ("--classifier", classifier)]
    trained = classifier or classifier_out or Path("runs") / "gan-score" / f"cnn-small-{ref.replace('/', '-')}"
    if classifier is None:
        check_out(trained, inputs, "--classifier-out")
    if json_out is not None:
        check_out(json_out, [*inputs, ("the classifier run", trained)], "--json", folder=False)
    if classifier is None:
        classifier = trained
        if not RunDir(classifier).is_finished:
            console.print(escape(f"no --classifier given: training a non-private cnn-small on {ref} (selected on "
                                 f"{val}) into {classifier} first; it is reused next time"), soft_wrap=True)
        classifier = train_score_classifier(ref, val, classifier, root=data_root, progress=True)
    s = score(folder, ref, classifier=classifier, root=data_root, max_images=max_images, frd=frd, out=json_out)
    table = Table("score", "value", "seconds")
    f = s["frd"]
    table.add_row("FRD v0 (lower is better)", f"{f['value']:.2f}" if f["value"] is not None else escape(f["note"]),
                  f"{f['seconds']:.1f}" if "seconds" in f else "")
    table.add_row("classifier-feature Fréchet distance", f"{s['classifier_fd']['value']:.3f}", f"{s['classifier_fd']['seconds']:.1f}")
    table.add_row("class fidelity (AUROC of intended labels)", f"{s['class_fidelity']['auroc']:.3f}", f"{s['class_fidelity']['seconds']:.1f}")
    console.print(f"{folder} ({s['n_synthetic']} patches) vs {ref} ({s['n_ref']}), classifier {classifier}")
    console.print(table)
    if "note" in s["classifier_fd"]:
        console.print(escape(f"classifier-feature Fréchet distance: {s['classifier_fd']['note']}"), soft_wrap=True)


MAX_ERROR_CHARS = 2000  # a message that repeats a user's input stays a line, not megabytes


def error_line(err: DpMammoError) -> str:
    """What the user sees for a DpMammoError: one line on stderr."""
    line = " ".join(str(err).split("\n"))
    if len(line) > MAX_ERROR_CHARS:
        line = f"{line[:MAX_ERROR_CHARS]}… ({len(line) - MAX_ERROR_CHARS:,} more characters)"
    return "error: " + line


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` ends a Ctrl-C: typer turns a KeyboardInterrupt into a silent exit 130."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    from dpmammo.allocator import keep_freed_memory

    keep_freed_memory()  # a training step no longer page-faults its activations in again (see there)
    from dpmammo.files import USER_OS_ERRORS, os_error

    try:
        app()
    except DpMammoError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # no space, no permission, ...: the user's to fix (files.USER_OS_ERRORS)
        if e.errno not in USER_OS_ERRORS:
            raise
        print(error_line(os_error(e, e.filename or "a file")), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 130 and _interrupted(e):
            print("interrupted", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
