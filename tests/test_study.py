"""Studies: expansion into runs, results and report, resume after SIGKILL, failures, Ray = local.

One tiny phantom study (2 conditions × 2 ε, 5 runs) is run once through the CLI and reused: the
killed-and-resumed study and the Ray study must reproduce its metrics to 3 decimals.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from dpmammo.errors import DpMammoError
from dpmammo.study import expand, load_study
from tests.conftest import read_csv, study_config, tiny_study_block

def study_env() -> dict[str, str]:
    """The environment of a `dpmammo study` subprocess, read when it starts: at import time the
    session's private DPMAMMO_CACHE (conftest) is not yet set, and a copy made then sent the
    subprocesses' feature caches to the user's cache."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
METRIC_COLUMNS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity")


def tiny_study(data: Path, **over) -> dict:
    return tiny_study_block(data / "real", **{
        "name": "tiny",
        "synthetic": str(data / "phantom-gan"),
        "conditions": ["real", "synthetic->real"],
        "epsilons": [4, "inf"],
        "seeds": [0],
        # Resume and Ray must reproduce the reference to 3 decimals: only seeded (test-only) noise
        # repeats. test_study_reports_the_chain_total runs with secret noise.
        "privacy": {"seeded_noise_for_tests": True},
        **over})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Small phantoms as the private set, and a phantom 'synthetic' folder (no provenance.json)."""
    from dpmammo.data.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("study-data")
    make_phantoms(root / "real", n=96, seed=0, size=64)
    make_phantoms(root / "gan", n=96, seed=1, size=64)
    dst = root / "phantom-gan"
    dst.mkdir()
    for i, p in enumerate(sorted((root / "gan" / "phantom" / "train").rglob("*.png"))):
        shutil.copy(p, dst / f"s{i}_{'malignant' if p.parent.name == 'is_benign_false' else 'benign'}.png")
    shutil.rmtree(root / "gan")
    return root


def write_study(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d, allow_unicode=True))
    return path


def study_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dpmammo.cli", "study", str(config), "--out", str(out), *extra]


def metrics_of(study_dir: Path) -> dict[tuple[str, str], tuple]:
    """(run, test set) → metrics rounded to 3 decimals."""
    return {(r["run_id"], r["test_set"]): tuple(round(float(r[c]), 3) if r[c] else None for c in METRIC_COLUMNS)
            for r in read_csv(study_dir / "results.csv")}


@pytest.fixture(scope="module")
def local_study(data, tmp_path_factory) -> Path:
    """The reference: the tiny study, uninterrupted, local executor, through the CLI."""
    tmp = tmp_path_factory.mktemp("local")
    cfg = write_study(tmp / "tiny.yaml", tiny_study(data))
    proc = subprocess.run(study_cmd(cfg, tmp / "study"), env=study_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "study"


# --- config and plan (no training) -----------------------------------------------------------

def test_epsilons_accept_inf_spellings_and_refuse_bad_values(data):
    cfg = study_config(tiny_study(data, epsilons=[1, "∞", 6.5]), "t")
    assert cfg.epsilons[1] == math.inf and cfg.epsilons[2] == 6.5
    for bad, what in (([0], "ε must be > 0"), (["lots"], "ε must be a number"), ([1, 1.0], "twice")):
        with pytest.raises(DpMammoError, match=what):
            study_config(tiny_study(data, epsilons=bad), "t")
    with pytest.raises(DpMammoError, match="conditions"):
        study_config(tiny_study(data, conditions=["real", "synthetic-only"]), "t")
    with pytest.raises(DpMammoError, match=r"privacy\.delt: unknown key"):
        study_config(tiny_study(data, privacy={"delt": 1e-5}), "t")
    with pytest.raises(DpMammoError, match="epsilons"):
        study_config(tiny_study(data, privacy={"target_epsilon": 3}), "t")


def test_quick_preset_plan_shares_the_pretrain_run_and_chains_by_id():
    cfg = load_study(preset="quick")
    plan = expand(cfg)
    assert cfg.conditions == ["real", "real+synthetic", "synthetic", "synthetic→real"]
    # 3 ε × (real, real+synthetic, fine-tune) + one pretrain shared by `synthetic` and every fine-tune.
    assert len(plan.runs) == 10 and len(plan.results) == 10
    pre = plan.runs["synthetic/pretrain/seed0"]
    assert pre.config.privacy is None and pre.config.data.train == ["synthetic/c-dcgan"]
    assert not pre.config.model.freeze_backbone
    ids = list(plan.runs)
    for eps, tag in ((1.0, "eps1"), (6.0, "eps6"), (math.inf, "epsinf")):
        ft = plan.runs[f"synthetic-to-real/{tag}/seed0"]
        assert ft.parent == pre.run_id and ids.index(pre.run_id) < ids.index(ft.run_id)
        assert ft.config.init_from is None and ft.config.model.freeze_backbone  # head only by default
        assert ft.config.data.train == ["cbis-ddsm/train"]
        assert (ft.config.privacy is None) == math.isinf(eps)
        if not math.isinf(eps):
            assert ft.config.privacy.target_epsilon == eps and ft.config.privacy.delta == 1e-4
        real = plan.runs[f"real/{tag}/seed0"].config
        # ε = ∞: cnn-small; DP: the stage's own dp block (symmetrised ScatterNet features, batch 512) after `dp`
        assert (real.model.name, real.train.batch_size) == (("cnn-small", 64) if math.isinf(eps) else ("scatter", 512))
        if not math.isinf(eps):
            assert (real.model.symmetrize, real.model.with_pixels, real.train.augment, real.train.test_flips) == (
                "dihedral", None, "none", False)
        union = plan.runs[f"real+synthetic/{tag}/seed0"].config
        assert union.data.train == ["cbis-ddsm/train", "synthetic/c-dcgan"]
        assert union.train.epochs < plan.runs[f"real/{tag}/seed0"].config.train.epochs
    full = load_study(preset="quick", overrides=["stages.finetune.model.freeze_backbone=false"])
    assert not expand(full).runs["synthetic-to-real/eps1/seed0"].config.model.freeze_backbone


def test_a_stage_may_train_another_model():
    """A stage's model block with another model's name replaces the study's block (its keys differ:
    cnn-small's width is no pixels key); without a name it changes keys of the study's model."""
    cfg = load_study(preset="quick", overrides=["stages.real={model: {name: pixels, resolution: 16}}"])
    plan = expand(cfg)
    real = plan.runs["real/eps1/seed0"].config.model
    assert real.name == "pixels" and real.resolution == 16 and real.input_size == 64
    assert plan.runs["synthetic/pretrain/seed0"].config.model.name == "cnn-small"
    sgd = expand(load_study(preset="quick", overrides=["stages.real+synthetic.optim={name: sgd, lr: 0.1}",
                                                       "stages.pretrain.optim={weight_decay: 0.01}"]))
    for tag in ("eps6", "epsinf"):  # the `dp` block (lr 2e-3) comes first, the stage's whole optimiser last
        assert sgd.runs[f"real+synthetic/{tag}/seed0"].config.optim.model_dump() == {
            "name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": None, "label_smoothing": 0.0}
    pre = sgd.runs["synthetic/pretrain/seed0"].config.optim
    assert pre.name == "adamw" and pre.weight_decay == 0.01 and pre.lr == 1e-3
    # A stage's own `dp` block: its DP runs train fixed features, its ε = ∞ run the study's model.
    split = expand(load_study(preset="quick", overrides=[
        "stages.real={epochs: 7, dp: {model: {name: pixels, resolution: 16}, optim: {name: sgd, lr: 0.1}, "
        "batch_size: 256, select: last}}"]))
    dp_real, plain = split.runs["real/eps1/seed0"].config, split.runs["real/epsinf/seed0"].config
    assert (dp_real.model.name, dp_real.optim.name, dp_real.train.batch_size, dp_real.train.select) == (
        "pixels", "sgd", 256, "last")
    assert dp_real.train.epochs == 7  # the stage's keys, then its dp block's
    assert (plain.model.name, plain.optim.name, plain.train.epochs, plain.train.select) == (
        "cnn-small", "adamw", 7, "best-val-auroc")
    views = expand(load_study(preset="quick", overrides=["stages.real={augment: none, dp: {augment: flips}}"]))
    assert (views.runs["real/epsinf/seed0"].config.train.augment, views.runs["real/eps1/seed0"].config.train.augment,
            views.runs["synthetic/pretrain/seed0"].config.train.augment) == ("none", "flips", "flips")
    with pytest.raises(DpMammoError, match="dp.dp"):
        load_study(preset="quick", overrides=["dp.dp={epochs: 3}"])
    with pytest.raises(DpMammoError, match="width"):
        expand(load_study(preset="quick", overrides=["stages.real={model: {name: pixels, width: 16}}"]))


def test_utility_preset_runs_the_recipes_chosen_without_a_test_set():
    cfg = load_study(preset="utility")
    plan = expand(cfg)
    assert cfg.epsilons == [1, 3, 6, math.inf] and cfg.seeds == [0, 1, 2]
    assert cfg.model_names == ["cnn-small", "scatter"]  # what the report names
    assert cfg.conditions == ["real", "synthetic→real", "prior→real"]
    # the aims its report measures against (docs/study.md states them)
    assert [(t.test_set, t.epsilon, t.auroc) for t in cfg.targets] == [
        ("cbis-ddsm/test", 1, 0.66), ("bcdr/test", 1, 0.64), ("cbis-ddsm/test", 6, 0.70), ("bcdr/test", 6, 0.67),
        ("cbis-ddsm/test", math.inf, 0.75)]
    assert list(plan.upstream) == [f"prior/pretrain/seed{s}" for s in range(3)]
    # 3 seeds × (4 ε × (real, fine-tune, prior fine-tune) + one synthetic pretrain)
    assert len(plan.runs) == 3 * (4 * 3 + 1)
    for seed in range(3):
        dp_real = plan.runs[f"real/eps1/seed{seed}"].config
        assert dp_real.model.name == "scatter" and dp_real.train.select == "last" and dp_real.privacy.unit == "patient"
        assert dp_real.model.public_pca.components == 32 and dp_real.model.with_pixels is None
        assert dp_real.model.symmetrize == "dihedral" and dp_real.model.num_features == 32
        assert (dp_real.train.augment, dp_real.train.test_flips) == ("none", False)  # invariant features: no views
        assert (dp_real.train.epochs, dp_real.train.batch_size, dp_real.optim.lr) == (10, 512, 0.4)
        # nothing of the ∞ block leaks in: the DP recipe as chosen (features on val, lr by CV), key for key
        assert dp_real.model.model_dump(include={"input_size", "J", "L", "pool", "groups", "head", "head_width",
                                                 "freeze_backbone"}) == {
            "input_size": 64, "J": 2, "L": 8, "pool": 4, "groups": 27, "head": "linear", "head_width": None,
            "freeze_backbone": True}
        assert dp_real.optim.model_dump() == {"name": "sgd", "lr": 0.4, "weight_decay": 0.0, "momentum": 0.9,
                                              "label_smoothing": 0.0}
        non_private = plan.runs[f"real/epsinf/seed{seed}"].config
        # the cross-validation's winner: a CNN on the 128 px patch's unpooled ScatterNet maps at 4 scales
        assert non_private.model.model_dump(include={"input_size", "J", "pool", "groups", "public_pca", "head",
                                                     "head_width"}) == {
            "input_size": 128, "J": 4, "pool": 8, "groups": 139, "public_pca": None, "head": "cnn", "head_width": None}
        assert non_private.model.cnn_width == 64
        assert non_private.optim.model_dump() == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "momentum": None,
                                                  "label_smoothing": 0.0}
        assert (non_private.train.epochs, non_private.train.batch_size, non_private.train.select) == (
            30, 64, "best-val-auroc")
        probe = plan.runs[f"prior-to-real/eps3/seed{seed}"].config
        assert probe.model.freeze_backbone and probe.init_weights == "backbone" and probe.privacy.target_epsilon == 3
        assert plan.priors[f"prior/pretrain/seed{seed}"].config.model == cfg.model.model_copy(
            update={"freeze_backbone": False})


def test_paper_preset_is_the_published_setup():
    cfg = load_study(preset="paper")
    plan = expand(cfg)
    assert cfg.epsilons == [1, 6, 12, 20, 60, math.inf] and cfg.seeds == [42, 43, 44]
    real = plan.runs["real/eps6/seed43"].config
    assert real.model.name == "swin_t" and real.model.pretrained and real.model.freeze_backbone
    assert real.optim.lr == 1e-5 and real.train.epochs == 300 and real.train.batch_size == 128
    assert len(plan.runs) == 3 * (6 + 6 + 1 + 6)
    assert cfg.same_setup_as_published
    # Another model: the published numbers stay out of our cells (the gap table compares best cells only).
    assert not load_study(preset="paper", overrides=["model={name: cnn-small}"]).same_setup_as_published


# --- running studies -----------------------------------------------------------------------

def test_local_study_results_privacy_and_report(local_study):
    rows = read_csv(local_study / "results.csv")
    by_run = {r["run_id"]: r for r in rows}
    assert sorted(by_run) == ["real/eps4/seed0", "real/epsinf/seed0", "synthetic-to-real/eps4/seed0",
                              "synthetic-to-real/epsinf/seed0"]
    assert all(r["status"] == "ok" and r["test_set"] == "phantom/test" and int(r["n"]) == 48 for r in rows)
    for r in rows:
        assert 0.0 <= float(r["auroc_ci_low"]) <= float(r["auroc"]) <= float(r["auroc_ci_high"]) <= 1.0
    # Seeded (test-only) noise: the DP stage spent ≤ 4, yet the released model has no guarantee,
    # and every report says so.
    dp = by_run["real/eps4/seed0"]
    assert dp["guarantee_total"] == "none" and dp["epsilon_total"] == "" and dp["epsilon_target"] == "4.0"
    assert by_run["real/epsinf/seed0"]["epsilon_total"] == "" and by_run["real/epsinf/seed0"]["guarantee_total"] == "none"
    ft = by_run["synthetic-to-real/eps4/seed0"]
    assert ft["guarantee_total"] == "none"
    # The shared pretrain ran once and is the parent of both fine-tunes.
    assert (local_study / "synthetic/pretrain/seed0/metrics.json").is_file()
    md = (local_study / "results.md").read_text()
    assert "| condition | target ε=4 | non-private |" in md
    # One seed: the bootstrap CI, not "± 0.000"; and the cell's real guarantee.
    assert (f"| real | {float(dp['auroc']):.3f} [{float(dp['auroc_ci_low']):.3f}, "
            f"{float(dp['auroc_ci_high']):.3f}] (no guarantee) |") in md
    assert "± 0.000" not in md
    html = (local_study / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and 'id="results"' in html and "unit of privacy" in html.lower()
    assert not list(local_study.rglob("*.tmp"))


def test_report_renders_in_headless_chromium(local_study, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is required for this test (apt-get install chromium)"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    url = (local_study / "report.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert '<table id="results"' in dom and "synthetic→real" in dom and "non-private" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True, timeout=120)
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # text, tables and plots, not a blank page


def test_study_killed_mid_run_resumes_to_the_same_results(local_study, data, tmp_path):
    cfg = write_study(tmp_path / "tiny.yaml", tiny_study(data))
    out = tmp_path / "study"
    proc = subprocess.Popen(study_cmd(cfg, out), env=study_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.rglob("metrics.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be killed"
    finished = list(out.rglob("metrics.json"))
    assert 1 <= len(finished) < 5 and not (out / "results.csv").exists()
    done = subprocess.run(study_cmd(cfg, out), env=study_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert metrics_of(out) == metrics_of(local_study)
    # A finished study is not recomputed: every run is reused and the table stays the same.
    again = subprocess.run(study_cmd(cfg, out), env=study_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "5 cached" in again.stdout
    assert metrics_of(out) == metrics_of(local_study)


def test_study_reports_the_chain_total(data, tmp_path):
    """Secret noise: a DP run is reported at its chain total with its unit; a run fed by a synthetic
    folder without provenance says "no guarantee" in results.csv, results.md and summary.json."""
    import json

    from dpmammo.report import build_report
    from dpmammo.study import run_study

    d = tiny_study(data, epsilons=[4], train={"epochs": 1, "batch_size": 32, "device": "cpu"})
    del d["privacy"]
    result = run_study(study_config(d, "t"), tmp_path / "study", progress=False)
    assert not result.failed
    build_report(tmp_path / "study")
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "study" / "results.csv")}
    real, ft = rows["real/eps4/seed0"], rows["synthetic-to-real/eps4/seed0"]
    assert real["guarantee_total"] == "dp" and 3.0 < float(real["epsilon_total"]) <= 4.0 and real["unit"] == "patient"
    assert ft["guarantee_total"] == "none" and ft["epsilon_total"] == ""
    md = (tmp_path / "study" / "results.md").read_text()
    assert f"(ε≤{float(real['epsilon_total']):.2f}/patient)" in md and "(no guarantee)" in md
    assert "per patient" in md
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["runs"]["synthetic-to-real/eps4/seed0"]["privacy_total"] == "no guarantee"
    assert summary["runs"]["real/eps4/seed0"]["privacy_total"].startswith("ε=")
    html = (tmp_path / "study" / "report.html").read_text()
    assert "no guarantee (an input of unknown origin)" in html


def test_failed_run_is_reported_and_the_others_go_on(data, tmp_path):
    from dpmammo.study import run_study

    cfg = study_config(tiny_study(
        data, synthetic=str(tmp_path / "no-such-folder"), conditions=["real", "synthetic→real"], epsilons=["inf"],
        train={"epochs": 1, "batch_size": 32, "device": "cpu"}), "t")
    result = run_study(cfg, tmp_path / "study", progress=False)
    status = {rid: o.status for rid, o in result.outcomes.items()}
    assert status == {"real/epsinf/seed0": "done", "synthetic/pretrain/seed0": "failed",
                      "synthetic-to-real/epsinf/seed0": "skipped"}
    assert "no-such-folder" in result.outcomes["synthetic/pretrain/seed0"].error
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "study" / "results.csv")}
    assert rows["real/epsinf/seed0"]["status"] == "ok"
    ft = rows["synthetic-to-real/epsinf/seed0"]
    assert ft["status"] == "skipped" and "synthetic/pretrain/seed0 failed" in ft["error"]
    summary = yaml.safe_load((tmp_path / "study" / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "cached": 0, "failed": 1, "skipped": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_head(ray_bin: Path, env: dict, ray_tmp: str, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """`ray start --head` on free loopback ports, alive a few seconds after its GCS port opens. A
    port picked free can be taken before Ray binds it (its own processes bind ports as they
    start); then a Ray subprocess exits and the head with it: start again on other ports."""
    for _ in range(tries):
        port = free_port()
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", f"--port={port}",
             "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--ray-client-server-port={free_port()}", f"--temp-dir={ray_tmp}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(5)  # the subprocesses that bind the other ports start after the GCS
        if head.poll() is None:
            return head, port
        try:  # what the dead head started still runs in its session
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
    raise AssertionError(f"ray start --head exited {tries} times")


@pytest.mark.slow
def test_ray_executor_gives_the_same_runs_as_local(local_study, data, tmp_path):
    """On a cluster with token authentication, as `ray start` makes one where a token exists
    (~/.ray/auth_token, left by any earlier local Ray): the driver must send the token (it did not:
    "Authentication token is missing or incorrect"). The head is bound to 127.0.0.1, so the test
    holds whatever address the machine's name resolves to."""
    ray_bin = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    env = {**study_env(), "HOME": str(home)}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    head, port = start_ray_head(ray_bin, env, ray_tmp)
    try:
        # Each run over two processes (resources.processes): the same batches and noise as the
        # 1-process reference, so the same metrics to 3 decimals. The DP runs only (a pretraining and
        # a fine-tune that waits for it, and a run of its own): the ∞ runs add time, not paths.
        cfg = write_study(tmp_path / "tiny.yaml", tiny_study(data, epsilons=[4],
                                                             resources={"num_cpus": 2, "processes": 2}))
        out = tmp_path / "study"
        cmd = study_cmd(cfg, out, "--executor", "ray", "--address", f"127.0.0.1:{port}")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ray_runs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("metrics.json"))
        assert ray_runs == sorted(p.parent.relative_to(local_study).as_posix()
                                  for p in local_study.rglob("metrics.json") if "epsinf" not in p.parent.as_posix())
        assert len(ray_runs) == 3
        reference = {key: m for key, m in metrics_of(local_study).items() if "epsinf" not in key[0]}
        assert metrics_of(out) == reference
        assert all(json.loads(m.read_text())["processes"] == 2 for m in out.rglob("metrics.json"))
    finally:
        # The head and everything it spawned share the session started above: stop exactly those
        # (a SIGTERM makes the head wait 30 s to drain; nothing here needs draining).
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def result_row(cond, eps, seed, test_set, auroc, val, guarantee="dp", total=None) -> dict:
    """A finished run's row of results.csv, made here (the gap tables' tests)."""
    return {"condition": cond, "run_id": f"{cond}/{eps}/seed{seed}", "stage": "x", "test_set": test_set,
            "status": "ok", "epsilon_target": str(eps), "guarantee_total": guarantee,
            "epsilon_total": total if total is not None else (eps if guarantee == "dp" else ""),
            "unit": "patient", "val_auroc": val, "auroc": auroc}


def test_report_shows_the_gap_to_the_published_study():
    """Our cell with a DP chain total within ε, chosen on validation and shown with its test AUROC,
    against the published best cell at that ε (its synthetic rows have no guarantee): numbers that
    could fail, from rows made here."""
    from dpmammo.report.tables import markdown, published_gap

    cfg = load_study(preset="quick", overrides=["seeds=[0, 1]"])
    assert cfg.compare_with == "osuala2024" and cfg.conditions[:3] == ["real", "real+synthetic", "synthetic"]

    # At ε = 1, real is lower on test than real+synthetic (0.610 against 0.640) but higher on
    # validation (0.600 against 0.550): real is ours, with its test AUROC.
    rows = [result_row("real", 1.0, s, "cbis-ddsm/test", a, v) for s, a, v in ((0, 0.60, 0.59), (1, 0.62, 0.61))]
    rows += [result_row("real+synthetic", 1.0, s, "cbis-ddsm/test", 0.64, 0.55) for s in (0, 1)]
    rows += [result_row("synthetic→real", 1.0, s, "cbis-ddsm/test", 0.70, 0.90, guarantee="none") for s in (0, 1)]  # excluded
    rows += [result_row("real", 6.0, s, "cbis-ddsm/test", 0.65, 0.90, total=6.3) for s in (0, 1)]  # over its ε: excluded
    # At ∞ equal validation AUROCs: the first condition of cfg.conditions (real), not synthetic's higher test.
    rows += [result_row("synthetic", "inf", s, "bcdr/test", 0.70, 0.58, guarantee="none") for s in (0, 1)]
    rows += [result_row("real", "inf", s, "bcdr/test", 0.66, 0.58, guarantee="none") for s in (0, 1)]
    gap = published_gap(cfg, rows)
    assert gap == [
        ["cbis-ddsm/test", "target ε=1", "real", "0.600", "0.610", "synthetic→real (no guarantee)", "0.661", "-0.051"],
        ["bcdr/test", "non-private", "real", "0.580", "0.660", "real+synthetic (no guarantee)", "0.709", "-0.049"]]
    text = markdown(cfg, rows)
    assert "## Against the published study" in text and "(ref " not in text  # not the paper's model: no refs
    assert ("the one with the highest mean AUROC on the validation set cbis-ddsm/val, never chosen on a test set, "
            "with its test AUROC") in text
    assert "| ours: chosen on validation (DP within ε; any at ∞) | ours: cbis-ddsm/val AUROC | ours: test AUROC |" in text
    # Rows without a validation AUROC are refused, never chosen on the test AUROC instead.
    with pytest.raises(DpMammoError, match="no validation AUROC"):
        published_gap(cfg, [{k: v for k, v in r.items() if k != "val_auroc"} for r in rows])
    assert published_gap(load_study(preset="quick", overrides=["compare_with=null"]), rows) == []


def test_report_shows_the_gap_to_the_study_aims():
    """Each aim of `targets` beside our cell chosen on validation among the cells guaranteed within
    its ε (never the better test cell), with the gap and whether the mean reaches it; an aim without
    such a cell is not reached, one outside the study's grid not run. Numbers that could fail, from
    rows made here."""
    from dpmammo.report.html import aim_section
    from dpmammo.report.tables import aim_gap, markdown

    aims = ('targets=[{test_set: cbis-ddsm/test, epsilon: 1, auroc: 0.66}, '
            '{test_set: bcdr/test, epsilon: 1, auroc: 0.60}, {test_set: cbis-ddsm/test, epsilon: 6, auroc: 0.7}, '
            '{test_set: cbis-ddsm/test, epsilon: inf, auroc: 0.65}]')
    cfg = load_study(preset="quick", overrides=["seeds=[0, 1]", aims])

    rows = [result_row("real", 1.0, s, "cbis-ddsm/test", a, 0.70) for s, a in ((0, 0.64), (1, 0.66))]  # mean 0.650
    rows += [result_row("real+synthetic", 1.0, s, "cbis-ddsm/test", 0.68, 0.60) for s in (0, 1)]  # lower on val
    rows += [result_row("real", 1.0, 0, "bcdr/test", 0.61, 0.70),  # and a failed seed, as results.run_rows writes it
             {"condition": "real", "run_id": "real/1.0/seed1", "stage": "x", "seed": 1, "epsilon_target": 1.0,
              "test_set": "bcdr/test", "status": "failed", "error": "boom"}]
    rows += [result_row("real", 6.0, s, "cbis-ddsm/test", 0.75, 0.90, total=6.3) for s in (0, 1)]  # over its ε
    rows += [result_row("real", "inf", s, "cbis-ddsm/test", 0.64, 0.70, guarantee="none") for s in (0, 1)]
    assert aim_gap(cfg, rows) == [
        ["cbis-ddsm/test", "target ε=1", "0.660", "real", "0.700", "0.650", "-0.010", "no"],
        ["bcdr/test", "target ε=1", "0.600", "real", "0.700", "0.610 (1 failed)", "+0.010", "yes"],
        ["cbis-ddsm/test", "target ε=6", "0.700", "none with a guarantee within ε", "", "", "", "no"],
        ["cbis-ddsm/test", "non-private", "0.650", "real", "0.700", "0.640", "-0.010", "no"]]
    assert "## Against the study's aims" in markdown(cfg, rows)
    section = aim_section(cfg, rows)
    assert '<table id="aim-gap">' in section and "<td>-0.010</td>" in section and "per patient" in section
    # No aims: no section.
    assert aim_gap(load_study(preset="quick"), rows) == [] and aim_section(load_study(preset="quick"), rows) == ""
    # An aim outside the study's grid (a narrowed preset) is shown as not run, never dropped, ∞ included:
    # the ∞ column still holds ε-independent cells (synthetic), which must not stand in for `real` at ∞.
    narrowed = load_study(preset="quick", overrides=["test_sets=[bcdr/test]", aims])
    assert [r[-1] for r in aim_gap(narrowed, rows)] == ["not run", "yes", "not run", "not run"]
    finite = load_study(preset="quick", overrides=["epsilons=[1, 6]", aims])
    assert aim_gap(finite, rows)[3] == ["cbis-ddsm/test", "non-private", "0.650", "not run in this study", "", "", "",
                                        "not run"]
    two = load_study(preset="quick", overrides=["targets=[{test_set: bcdr/test, epsilon: 2, auroc: 0.6}]"])
    assert aim_gap(two, rows) == [["bcdr/test", "target ε=2", "0.600", "not run in this study", "", "", "", "not run"]]
    for bad, match in (("[{test_set: bcdr/test, epsilon: 1, auroc: 0.6}, {test_set: bcdr/test, epsilon: 1, auroc: 0.7}]",
                        "given twice"),
                       ("[{test_set: bcdr/test, epsilon: 1, auroc: 1.2}]", "less than 1")):
        with pytest.raises(DpMammoError, match=match):
            load_study(preset="quick", overrides=[f"targets={bad}"])
