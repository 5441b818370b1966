"""Sample a trained generator into a labelled folder that plugs into training and evaluation.

The folder holds PNGs, a manifest.csv (labels live there, not only in file names; paths are
relative so the folder can move) and provenance.json: which generator run made it, on which
data, and the generator's privacy chain ("chain", read by dpmammo.train when a classifier
trains on the folder, so the GAN's spend is composed into that classifier's total).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from dpmammo import __version__
from dpmammo.data.manifest import SAMPLED_MANIFEST, PatchRecord, write_manifest
from dpmammo.data.sets import PROVENANCE_FILE
from dpmammo.errors import DpMammoError
from dpmammo.files import check_out, check_replaceable, exclusive, staged_folder, user_os_errors, write_json_atomic
from dpmammo.config import check_option, is_valid
from dpmammo.gan.config import GanConfig
from dpmammo.gan.registry import parse_generator_config
from dpmammo.gan.models import Generator, to_uint8
from dpmammo.models import load_weights
from dpmammo.runs import METRICS, RunDir
from dpmammo.train.config import TrainConfig

CLASS_NAMES = {0: "benign", 1: "malignant"}
BATCH = 256


def load_generator(run_dir: str | Path) -> tuple[Generator, GanConfig]:
    """The finished run's generator (weights loaded strictly) and its config."""
    run = RunDir(run_dir)
    if not run.is_finished:
        raise DpMammoError(f"{run.path} is not a finished generator run (no {METRICS}); train it with `dpmammo gan train`")
    cfg = run.read_config_as(parse_generator_config, "generator", is_other=lambda data: is_valid(TrainConfig, data),
                             other_kind="classifier",
                             hint="sample from a run made by `dpmammo gan train`")
    gen = Generator(cfg.model)
    load_weights(gen, run.weights)
    return gen.eval(), cfg


def intended_labels(n: int, balance: float) -> torch.Tensor:
    """round(n·balance) malignant (1) then the rest benign (0)."""
    if not 0 <= balance <= 1:
        raise DpMammoError(f"balance={balance} must be in [0, 1] (the malignant fraction)")
    n_mal = int(round(n * balance))
    return torch.cat([torch.ones(n_mal, dtype=torch.long), torch.zeros(n - n_mal, dtype=torch.long)])


@torch.no_grad()
def generate(gen: Generator, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 patches (N, 1, S, S) for `labels`; the same seed gives the same patches."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for y in labels.split(BATCH):
        z = torch.randn(len(y), gen.latent_dim, generator=rng)
        out.append(to_uint8(gen.render(z, y)))
    return torch.cat(out)


def sample(run_dir: str | Path, n: int, out: str | Path, *, balance: float = 0.5, seed: int = 0,
           force: bool = False) -> dict:
    """Write `n` patches from the generator in `run_dir` to folder `out`; return its provenance.

    The folder is written whole into a temporary sibling and moved into place; one process at a
    time writes `out`. With `force`, an `out` that is a folder written by this command (it holds
    provenance.json) is replaced; any other non-empty folder is refused.

    Example:
        >>> sample("runs/gan", 3000, "synthetic/mcgan-dp10", balance=0.5)  # doctest: +SKIP
    """
    if n < 2:
        raise DpMammoError(f"--n {n}: need at least 2 patches (one per class)")
    check_option("--n", n)
    check_option("--seed", seed, minimum=0)
    out = check_out(out, [("the generator run", run_dir)])
    run_dir = Path(run_dir).resolve()
    gen, cfg = load_generator(run_dir)
    labels = intended_labels(n, balance)
    if labels.min() == labels.max():
        raise DpMammoError(f"balance={balance} with n={n} gives one class only; training and AUROC need both")
    replaceable = dict(marker=PROVENANCE_FILE, command="dpmammo gan sample")
    check_replaceable(out, force, **replaceable)
    with user_os_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "sampling into"):
        check_replaceable(out, force, **replaceable)  # again, now that no other process can be writing it
        with staged_folder(out) as tmp:
            prov = write_samples(gen, cfg, run_dir, labels, seed, balance, out, tmp)
    return prov


def write_samples(gen: Generator, cfg: GanConfig, run_dir: Path, labels: torch.Tensor, seed: int, balance: float,
                  out: Path, tmp: Path) -> dict:
    """PNGs, manifest.csv and provenance.json (last) into `tmp`, which will become `out`."""
    images = generate(gen, labels, seed)
    records = []
    for i, (img, y) in enumerate(zip(images, labels.tolist())):
        name = f"{i:05d}_{CLASS_NAMES[y]}.png"
        Image.fromarray(img[0].numpy(), mode="L").save(tmp / name)
        records.append(PatchRecord(name, y, "", "synthetic", out.name, "synthetic"))
    write_manifest(records, tmp / SAMPLED_MANIFEST)
    privacy = RunDir(run_dir).read_privacy()
    prov = {
        "folder": str(out),
        "generator_run": str(run_dir),
        "training_data": list(cfg.data.train),
        "n": len(labels), "n_malignant": int(labels.sum()), "balance": balance, "seed": seed,
        "image_size": cfg.model.image_size,
        "guarantee": privacy.describe(),
        "total": privacy.total.model_dump(mode="json"),
        "chain": [s.model_dump(mode="json") for s in privacy.stages],
        "dpmammo_version": __version__,
    }
    write_json_atomic(tmp / PROVENANCE_FILE, prov)
    return prov
