"""The `dpmammo` command: parse arguments, load the config, call one API function.

No logic lives here. A DpMammoError becomes `error: <message>` on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from dpmammo.errors import DpMammoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Differentially private breast-mass malignancy classification.")
data_app = typer.Typer(no_args_is_help=True, help="Index, fetch and generate patch data.")
app.add_typer(data_app, name="data")
console = Console()


@data_app.command("index")
def data_index(root: Path, output: Optional[Path] = typer.Option(None, "-o", "--output", help="manifest CSV to write")):
    """Index a patch folder into a manifest and print counts per set and class."""
    from dpmammo.data.manifest import index_folder, summarize, write_manifest

    records = index_folder(root)
    table = Table("set", "patches", "malignant", "benign", "patients", "source")
    for row in summarize(records):
        table.add_row(*(str(row[k]) for k in ("set", "patches", "malignant", "benign", "patients", "source")))
    console.print(table)
    if output is not None:
        write_manifest(records, output)
        console.print(f"wrote {output} ({len(records)} patches)")


@data_app.command("fetch")
def data_fetch(dest: Optional[Path] = typer.Option(None, help="target folder (default: the user cache)")):
    """Download the pinned public patch archive, verify it, and extract the patch folders."""
    from dpmammo.data.fetch import fetch_dataset

    path = fetch_dataset(dest)
    console.print(f"data ready at {path} (export DPMAMMO_DATA={path})")


@data_app.command("phantoms")
def data_phantoms(out: Path, n: int = typer.Option(400, "--n", help="training patches (val and test get n/2)"),
                  seed: int = typer.Option(0, "--seed"), size: int = typer.Option(128, "--size")):
    """Write deterministic phantom patches (benign: smooth blobs; malignant: spiculated) for tests and demos."""
    from dpmammo.data.phantoms import make_phantoms

    path = make_phantoms(out, n=n, seed=seed, size=size)
    console.print(f"wrote phantoms to {path}")


@app.command("train")
def train(config: Path,
          out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<config name>)"),
          set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=5"),
          force: bool = typer.Option(False, "--force", help="replace a finished run in --out")):
    """Train a classifier (DP-SGD when the config has a privacy: block)."""
    from dpmammo.config import load_config
    from dpmammo.train import TrainConfig, fit

    cfg = load_config(TrainConfig, config, set_)
    out = out or Path("runs") / config.stem
    metrics = fit(cfg, out, force=force, progress=sys.stderr.isatty())
    eps = metrics["epsilon"]
    console.print(f"{out}: val AUROC {metrics['val']['auroc']:.3f} (epoch {metrics['val']['epoch']}), "
                  + (f"ε = {eps:.2f}" if eps is not None else "non-private"))


@app.command("evaluate")
def evaluate(run_dir: Path, on: List[str] = typer.Option(["cbis-ddsm/test", "bcdr/test"], "--on",
                                                          help="test set, repeatable"),
             data_root: Optional[Path] = typer.Option(None, "--data-root", help="override the run's data root")):
    """Evaluate a finished run: eval/<dataset>_<split>.json and a ROC curve per set."""
    from dpmammo.evaluate import evaluate_run

    results = evaluate_run(run_dir, on, data_root=data_root)
    table = Table("set", "n", "AUROC", "95% CI", "AUPRC (malignant)", "sens@val-thr", "spec@val-thr")
    for name, m in results.items():
        t = m["at_val_threshold"]
        table.add_row(name, str(m["n"]), f"{m['auroc']:.3f}", f"{m['auroc_ci95'][0]:.3f}–{m['auroc_ci95'][1]:.3f}",
                      f"{m['auprc']:.3f}", f"{t['sensitivity']:.3f}", f"{t['specificity']:.3f}")
    console.print(table)


def main() -> None:
    try:
        app()
    except DpMammoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
