"""Which prior helps a DP classifier: an ablation on the *validation* set (never a test set).

Trains each recipe on cbis-ddsm/train with DP-SGD per patient at each ε, `--repeats` times with
fresh secret noise, and prints the selected-epoch AUROC on cbis-ddsm/val (mean ± spread). The
recipes are TrainConfig overrides of one base (below); `--pretrained RUN` is a finished
`dpmammo pretrain` run (public: procedural images only) for the recipes that start from it.
No test set is loaded. Run by hand; the table goes into benchmarks/README.md.

    DPMAMMO_DATA=../shared/data/mammo_dp python benchmarks/prior_ablation.py --out demo/ablation \\
        --pretrained runs/pretrain-procedural --recipes scratch pixels probe finetune
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from pathlib import Path

BASE = {
    "data": {"train": ["cbis-ddsm/train"], "val": "cbis-ddsm/val"},
    "model": {"name": "cnn-small", "input_size": 64, "width": 16},
    "optim": {"name": "adamw", "lr": 2e-3},
    "train": {"epochs": 30, "batch_size": 128, "augment": "flips", "device": "cpu"},
    "privacy": {"delta": 1e-4, "max_grad_norm": 1.0, "unit": "patient"},
}

# name → (overrides of BASE, needs the pretrained run)
RECIPES: dict[str, tuple[dict, bool]] = {
    # the quick preset's `real` condition: cnn-small from random init, whole model under DP
    "scratch": ({}, False),
    # the same, with the exponential moving average of its iterates scored and selectable (free under DP)
    "scratch-ema": ({"train": {"ema_decay": 0.98}}, False),
    # downsampled standardised pixels (fixed, no parameters) and a DP linear head
    "pixels": ({"model": {"name": "pixels", "input_size": 64, "resolution": 32},
                "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                "train": {"epochs": 20, "batch_size": 256}}, False),
    "pixels16": ({"model": {"name": "pixels", "input_size": 64, "resolution": 16},
                  "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                  "train": {"epochs": 20, "batch_size": 256}}, False),
    # the same with nearly full batches (q ≈ 0.9): few, less noisy steps
    "pixels-b512": ({"model": {"name": "pixels", "input_size": 64, "resolution": 32},
                     "optim": {"name": "sgd", "lr": 1.0, "momentum": 0.9},
                     "train": {"epochs": 30, "batch_size": 512}}, False),
    # procedural backbone frozen, DP linear probe on its cached features
    "probe": ({"model": {"freeze_backbone": True}, "init_weights": "backbone",
               "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
               "train": {"epochs": 20, "batch_size": 256}}, True),
    # the probe with nearly full batches and few steps: 64 features, little noise in all
    "probe-b512": ({"model": {"freeze_backbone": True}, "init_weights": "backbone",
                    "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                    "train": {"epochs": 10, "batch_size": 512}}, True),
    # pixels, keeping the last epoch (no selection on the small validation set)
    "pixels-last": ({"model": {"name": "pixels", "input_size": 64, "resolution": 32},
                     "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                     "train": {"epochs": 20, "batch_size": 256, "select": "last"}}, False),
    # procedural backbone, whole model fine-tuned under DP
    "finetune": ({"init_weights": "backbone"}, True),
    # Issue 27's training practice, each on the unbiased `pixels-last` (no selection on val):
    # augmentation multiplicity, 4 flip views of each sampled patch summed in its patient's clip
    "pixels-k4-last": ({"model": {"name": "pixels", "input_size": 64, "resolution": 32},
                        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                        "train": {"epochs": 20, "batch_size": 256, "select": "last", "augment_multiplicity": 4}},
                       False),
    # parameter EMA of the iterates, the average released (select: last releases the average)
    "pixels-ema-last": ({"model": {"name": "pixels", "input_size": 64, "resolution": 32},
                         "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                         "train": {"epochs": 20, "batch_size": 256, "select": "last", "ema_decay": 0.9}}, False),
    "pixels16-k4-last": ({"model": {"name": "pixels", "input_size": 64, "resolution": 16},
                          "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                          "train": {"epochs": 20, "batch_size": 256, "select": "last", "augment_multiplicity": 4}},
                         False),
    "probe-k4-last": ({"model": {"freeze_backbone": True}, "init_weights": "backbone",
                       "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                       "train": {"epochs": 20, "batch_size": 256, "select": "last", "augment_multiplicity": 4}}, True),
    "scratch-last": ({"train": {"select": "last"}}, False),
    # weight standardisation in cnn-small's convolutions (De et al. 2022), whole model from random init
    "ws-last": ({"model": {"name": "cnn-small", "input_size": 64, "width": 16, "weight_standardization": True},
                 "train": {"select": "last"}}, False),
    # the settings that won the pixels sweep on val at ε = 1 (few, large steps), for each fixed feature
    "pixels16-b512-last": ({"model": {"name": "pixels", "input_size": 64, "resolution": 16},
                            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                            "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "scatter-b512-last": ({"model": {"name": "scatter", "input_size": 64},
                           "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                           "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # the same ScatterNet features projected on their top 32 principal components over procedural
    # images (public: no private data fits the basis), whitened there
    "scatter-pca32-b512-last": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 32}},
                                 "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                 "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "scatter-pca16-b512-last": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 16}},
                                 "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                 "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "scatter-pca64-b512-last": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 64}},
                                 "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                 "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # the same projection of the ScatterNet features of 128 px patches (J = 2, pooled to 8²: 5184 features)
    "scatter128-pca32-b512-last": ({"model": {"name": "scatter", "input_size": 128, "pool": 8,
                                              "public_pca": {"components": 32}},
                                    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                    "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # the projected ScatterNet features with the patch's 16×16 standardised pixels appended, projected on
    # their own top 16 principal components over the same procedural images (`with_pixels`)
    "scatter-pca32-px16-b512-last": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 32},
                                                "with_pixels": {"resolution": 16, "components": 16}},
                                      "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                      "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # the presets' DP `real` now: the projection of the features averaged over the 8 flips and transposes
    # (symmetrize: dihedral; no pixels, which are not averaged; no flip views), at the cross-validated lr 0.4
    "scatter-pca32-d8-b512-last": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 32},
                                              "symmetrize": "dihedral"},
                                    "optim": {"name": "sgd", "lr": 0.4, "momentum": 0.9},
                                    "train": {"epochs": 10, "batch_size": 512, "select": "last", "augment": "none"}},
                                   False),
    # the DP recipe's projection and pixels over the ∞ recipe's scattering (J = 4 on the 128 px patch, 4²)
    "scatter128j4-pca32-px16-b512-last": ({"model": {"name": "scatter", "input_size": 128, "J": 4, "pool": 4,
                                                     "groups": 139, "public_pca": {"components": 32},
                                                     "with_pixels": {"resolution": 16, "components": 16}},
                                           "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                           "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # coarser scattering features under the same public projection: larger wavelets see the mass's
    # shape more and the film's grain less. J = 3 at 64 px (217 channels, pooled to 2² or 4²), and
    # J = 2 on patches resized to 32 px (81 channels × 4²)
    "scatter-j3p2-pca32-b512-last": ({"model": {"name": "scatter", "input_size": 64, "J": 3, "pool": 2, "groups": 31,
                                                "public_pca": {"components": 32}},
                                      "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                      "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "scatter-j3p4-pca32-b512-last": ({"model": {"name": "scatter", "input_size": 64, "J": 3, "pool": 4, "groups": 31,
                                                "public_pca": {"components": 32}},
                                      "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                      "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "scatter32-pca32-b512-last": ({"model": {"name": "scatter", "input_size": 32, "public_pca": {"components": 32}},
                                   "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                   "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    # non-private candidates for ε = ∞ (--epsilons inf): the study's cnn-small (its top-level
    # settings) and linear heads on the ScatterNet features, best epoch on val as the study's ∞ runs
    "cnn-small-inf": ({"optim": {"name": "adamw", "lr": 1e-3}, "train": {"epochs": 20, "batch_size": 64}}, False),
    "scatter-inf": ({"model": {"name": "scatter", "input_size": 64}, "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                     "train": {"epochs": 30, "batch_size": 64}}, False),
    "scatter-pca32-inf": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 32}},
                           "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "train": {"epochs": 30, "batch_size": 64}},
                          False),
    # the DP recipe's features (projected ScatterNet + pixels) at ε = ∞, with the ∞ recipe's optimiser
    "scatter-pca32-px16-inf": ({"model": {"name": "scatter", "input_size": 64, "public_pca": {"components": 32},
                                          "with_pixels": {"resolution": 16, "components": 16}},
                                "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "train": {"epochs": 30, "batch_size": 64}},
                               False),
    # richer ScatterNet features for ε = ∞ (issue 27's outside probe: J = 3 unpooled and 128 px were its
    # strongest non-private features on CBIS-DDSM): J = 3 at 64 px, 217 channels × 8²; J = 2 at 128 px,
    # 81 channels × 8²; each with a little weight decay (a non-private linear model on thousands of
    # features over ~1100 patches)
    "scatter-j3-inf": ({"model": {"name": "scatter", "input_size": 64, "J": 3, "pool": 8, "groups": 31},
                        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
                        "train": {"epochs": 30, "batch_size": 64}}, False),
    "scatter-128-inf": ({"model": {"name": "scatter", "input_size": 128, "J": 2, "pool": 8},
                         "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
                         "train": {"epochs": 30, "batch_size": 64}}, False),
    # more scales on the 128 px patch, pooled to 4²: J = 3 (217 channels, 3472 features) and J = 4 (417
    # channels, 6672 features), each normalised in groups of 7 and 3 channels. J = 4 at the step the
    # cross-validation chose for it (lr 0.001; at the others' 0.05 its best epoch was often the first few)
    "scatter-128-j3p4-inf": ({"model": {"name": "scatter", "input_size": 128, "J": 3, "pool": 4, "groups": 31},
                              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
                              "train": {"epochs": 30, "batch_size": 64}}, False),
    "scatter-128-j4p4-inf": ({"model": {"name": "scatter", "input_size": 128, "J": 4, "pool": 4, "groups": 139},
                              "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 1e-3},
                              "train": {"epochs": 30, "batch_size": 64}}, False),
    # the same features averaged over the patch's 8 flips and transposes (symmetrize: dihedral), so the
    # head sees features invariant to them; no flip views to train or score on (8× the transform's cost)
    "scatter-128-j4p4-d8-inf": ({"model": {"name": "scatter", "input_size": 128, "J": 4, "pool": 4, "groups": 139,
                                           "symmetrize": "dihedral"},
                                 "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 1e-3},
                                 "train": {"epochs": 30, "batch_size": 64, "augment": "none"}}, False),
    # Tramèr & Boneh's ScatterNet+CNN: the J = 4 coefficient maps unpooled (417 × 8 × 8) and a small CNN
    # head on them (ScatterCnnHead), AdamW as their CNN; the 4 flips as views
    "scatter-128-j4p8-cnn-inf": ({"model": {"name": "scatter", "input_size": 128, "J": 4, "pool": 8, "groups": 139,
                                            "head": "cnn", "head_width": 64},
                                  "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                                  "train": {"epochs": 30, "batch_size": 64}}, False),
    # the same CNN head under DP: narrower (16 channels, ~11.5k parameters), few large steps, the last epoch
    "scatter-128-j4p8-cnn16-b512-last": ({"model": {"name": "scatter", "input_size": 128, "J": 4, "pool": 8,
                                                    "groups": 139, "head": "cnn", "head_width": 16},
                                          "optim": {"name": "adamw", "lr": 2e-3},
                                          "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, False),
    "probe-b512-last": ({"model": {"freeze_backbone": True}, "init_weights": "backbone",
                         "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                         "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, True),
    "scratch-k4-last": ({"train": {"select": "last", "augment_multiplicity": 4}}, False),
    # DP-RandP's phases II and III: the probe-b512-last probe at 30 % of ε, then the whole model from it
    # (THEN below), calibrated so that the RDP total of the two is ε
    "three-phase": ({"model": {"freeze_backbone": True}, "init_weights": "backbone",
                     "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                     "train": {"epochs": 10, "batch_size": 512, "select": "last"}}, True),
}

# recipe → (overrides of BASE for a second stage from the first one's run, the first stage's share of ε)
THEN: dict[str, tuple[dict, float]] = {
    "three-phase": ({"model": {"freeze_backbone": False}, "train": {"epochs": 10, "select": "last"},
                     "privacy": {"target": "total"}}, 0.3),
}


def merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "name" not in value:  # a named block replaces
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 6.0], help="per patient; inf: no DP")
    ap.add_argument("--repeats", type=int, default=2, help="runs with fresh secret noise per cell")
    ap.add_argument("--pretrained", type=Path, help="a finished `dpmammo pretrain` run")
    ap.add_argument("--test-flips", action="store_true",
                    help="score validation by the mean logit over the 4 flips (train.test_flips), as the presets do")
    args = ap.parse_args()

    import torch

    from dpmammo.config import parse_config
    from dpmammo.models.config import flip_invariant
    from dpmammo.train import TrainConfig, fit

    torch.set_num_threads(2)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for name in args.recipes:
        over, needs_prior = RECIPES[name]
        if needs_prior and args.pretrained is None:
            raise SystemExit(f"recipe {name} needs --pretrained RUN")
        if name in THEN and any(math.isinf(e) for e in args.epsilons):
            raise SystemExit(f"recipe {name} shares a DP budget between two stages: give it finite --epsilons")
        cells = []
        for eps in args.epsilons:
            aurocs, wall = [], 0.0
            for r in range(args.repeats):
                data = merged(BASE, over)
                if math.isinf(eps):  # non-private: no privacy block
                    del data["privacy"]
                else:
                    data["privacy"] = {**data["privacy"], "target_epsilon": eps}
                if needs_prior:
                    data["init_from"] = str(args.pretrained)
                # (a symmetrised model's features are the same in every flip: none to score by)
                flips = args.test_flips and not flip_invariant(parse_config(TrainConfig, data, name).model)
                data["train"] = {**data["train"], "seed": r, **({"test_flips": True} if flips else {})}
                out = args.out / name / f"eps{eps:g}" / f"rep{r}"
                if name in THEN:  # two stages: the first at its share of ε, the second from its run
                    second, share = THEN[name]
                    first_out = out.with_name(f"rep{r}-first")
                    data["privacy"]["target_epsilon"] = eps * share
                    if not (first_out / "metrics.json").is_file():
                        t0 = time.time()
                        fit(parse_config(TrainConfig, data, name), first_out, progress=False)
                        wall += time.time() - t0
                    data = merged(BASE, second)
                    data["privacy"] = {**data["privacy"], "target_epsilon": eps}
                    data["train"] = {**data["train"], "seed": r}
                    data["init_from"] = str(first_out)
                if not (out / "metrics.json").is_file():
                    t0 = time.time()
                    fit(parse_config(TrainConfig, data, name), out, progress=False)
                    wall += time.time() - t0
                aurocs.append(json.loads((out / "metrics.json").read_text())["val"]["auroc"])
            spread = statistics.pstdev(aurocs) if len(aurocs) > 1 else 0.0
            cells.append(f"ε={eps:g}: {statistics.mean(aurocs):.3f} ± {spread:.3f} ({wall:.0f} s)")
        print(f"{name:10s} " + "   ".join(cells) + f"   load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
