"""Studies whose synthetic set comes from a generator the study trains: budget split, composed
totals, run ids, the test-patient refusal, quality scores; and the fixed-set form unchanged.

The DP generator here is a tiny MCGAN with a DP discriminator (any registered generator works the
same way: the study sets privacy.target_epsilon on whatever config it gets). One DP study on
phantoms is run once (secret noise, so the totals are real guarantees) and read by several tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from dpmammo.errors import DpMammoError
from dpmammo.privacy import read_privacy
from dpmammo.privacy.accounting import RDP_ORDERS
from dpmammo.study import expand, load_study
from tests.conftest import read_csv, study_config, tiny_study_block

EPS, SHARE = 4.0, 0.5


def tiny_generator(**sections) -> dict:
    """A few-second MCGAN at 32 px; DP when `privacy` is given (the study sets its target ε)."""
    d = {"generator": "mcgan", "data": {"train": ["phantom/train"]},
         "model": {"image_size": 32, "latent_dim": 16, "embed_dim": 8, "cond_dim": 8, "g_width": 8, "d_width": 8},
         "train": {"epochs": 1, "batch_size": 32, "sample_every": 0, "device": "cpu"}}
    d.update(sections)
    return d


def gen_study(data: Path, generator: dict, **over) -> dict:
    return tiny_study_block(data, **{
        "name": "gen",
        "synthetic": {"generator": generator, "n": 64, "generator_share": SHARE},
        "conditions": ["real", "synthetic", "synthetic→real"],
        "epsilons": [EPS],
        **over})


@pytest.fixture(scope="module")
def data(study_phantoms) -> Path:
    return study_phantoms


@pytest.fixture(scope="module")
def dp_study(data, tmp_path_factory) -> Path:
    """A DP generator at SHARE·ε, every condition that consumes it at the rest; quality scored
    (without FRD: its radiomics would double the test's time)."""
    from dpmammo.report import build_report
    from dpmammo.study import run_study

    out = tmp_path_factory.mktemp("dp-study") / "study"
    cfg = study_config(gen_study(data, tiny_generator(privacy={"delta": 1e-4}), quality={"frd": False}))
    result = run_study(cfg, out, progress=False)
    assert not result.failed, [(o.run_id, o.error) for o in result.failed]
    build_report(out)
    return out


# --- config and plan (no training) -----------------------------------------------------------

def test_budget_split_and_run_ids(data):
    """The generator gets s·ε, each DP stage that uses its samples a chain total of ε (calibrated to
    what the generator left), `real` ε for itself; at ε = ∞
    the generator trains without its privacy block; a DP generator makes `synthetic` per ε."""
    cfg = study_config(gen_study(data, tiny_generator(privacy={"delta": 1e-4}), epsilons=[6, "inf"],
                                 conditions=["real", "real+synthetic", "synthetic", "synthetic→real"]))
    plan = expand(cfg, Path("/study"))
    assert list(plan.generators) == ["generator/eps3", "generator/epsinf"]
    g3, ginf = plan.generators["generator/eps3"], plan.generators["generator/epsinf"]
    assert g3.config.privacy.target_epsilon == 3.0 and g3.epsilon == 3.0 and ginf.config.privacy is None
    assert g3.samples_id == "generator/eps3-samples" and g3.config.data.root == data  # the study's root
    runs = plan.runs
    assert runs["real/eps6/seed0"].config.privacy.target_epsilon == 6.0
    assert runs["real/eps6/seed0"].config.privacy.target == "stage"
    consumers = [runs["real+synthetic/eps6/seed0"].config.privacy, runs["synthetic-to-real/eps6/seed0"].config.privacy]
    assert all(p.target_epsilon == 6.0 and p.target == "total" for p in consumers)
    assert runs["real+synthetic/eps6/seed0"].config.data.train == ["phantom/train", "/study/generator/eps3-samples"]
    assert runs["synthetic-to-real/eps6/seed0"].parent == "synthetic/eps6/seed0"
    assert runs["synthetic/eps6/seed0"].generator == "generator/eps3" and runs["synthetic/eps6/seed0"].epsilon == 6.0
    assert runs["synthetic/epsinf/seed0"].config.data.train == ["/study/generator/epsinf-samples"]
    assert runs["synthetic-to-real/epsinf/seed0"].config.privacy is None
    # A non-DP generator: one run for every ε, no share, one shared pretrain run, DP stages at all of ε.
    plain = study_config(gen_study(data, tiny_generator(), epsilons=[6, "inf"],
                                   synthetic={"generator": tiny_generator(), "n": 64}))
    plan = expand(plain, Path("/study"))
    assert list(plan.generators) == ["generator/epsinf"]
    assert "synthetic/pretrain/seed0" in plan.runs
    assert plan.runs["synthetic-to-real/eps6/seed0"].config.privacy.target_epsilon == 6.0
    assert plan.runs["synthetic-to-real/eps6/seed0"].config.privacy.target == "stage"


def test_generator_block_is_validated(data, tmp_path):
    dp = tiny_generator(privacy={"delta": 1e-4})
    cases = [
        ({"generator": dp, "n": 64}, "set generator_share in \\(0, 1\\)"),
        ({"generator": tiny_generator(), "generator_share": 0.5}, "no budget to share; remove generator_share"),
        ({"generator": tiny_generator(privacy={"unit": "patch"}), "generator_share": 0.5},
         "privacy.unit patch differs"),
        ({"generator": tiny_generator(privacy={"delta": 1e-5}), "generator_share": 0.5}, "privacy.delta 1e-05 differs"),
        ({"generator": tiny_generator(privacy={"delta": 1e-4, "accountant": "prv"}), "generator_share": 0.5},
         "set the study's privacy.accountant to prv"),
        ({"generator": {**dp, "modl": {}}, "generator_share": 0.5}, "modl: unknown key"),
        ({"generator": dp, "generator_share": 1.0}, "generator_share"),
        ({"generator": dp, "generator_share": 0.5, "colour": 1}, "synthetic.generator.colour: unknown key"),
        ({"generator": str(tmp_path / "missing.yaml")}, "config file not found"),
    ]
    for block, msg in cases:
        with pytest.raises(DpMammoError, match=msg):
            study_config(gen_study(data, dp, synthetic=block))
    # A study in prv takes a generator in either accountant: its chains compose in prv.
    for acc in ("rdp", "prv"):
        study_config(gen_study(data, dp, privacy={"accountant": "prv"}, synthetic={
            "generator": tiny_generator(privacy={"delta": 1e-4, "accountant": acc}), "generator_share": 0.5}))
    # A file written for `gan train` (its own target ε), with overrides, is read once and recorded
    # inline in the study directory; the study's budget replaces the file's.
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(tiny_generator(privacy={"target_epsilon": 10, "delta": 1e-4})))
    cfg = study_config(gen_study(data, dp, epsilons=[8], synthetic={
        "generator": str(path), "overrides": ["train.epochs=3"], "generator_share": 0.25}))
    assert cfg.generator.config_at(2.0, None).train.epochs == 3
    assert expand(cfg, tmp_path).generators["generator/eps2"].config.privacy.target_epsilon == 2.0
    inline = cfg.generator.inlined()
    assert inline.generator["train"]["epochs"] == 3 and inline.overrides == []


def test_fixed_synthetic_set_form_is_unchanged(data):
    """A string is still a fixed set: same runs as before, no generator, no quality step by default."""
    d = gen_study(data, tiny_generator(), synthetic="synthetic/c-dcgan",
                  conditions=["real", "real+synthetic", "synthetic", "synthetic→real"], epsilons=[1, "inf"])
    cfg = study_config(d)
    plan = expand(cfg)
    assert cfg.synthetic == "synthetic/c-dcgan" and cfg.generator is None and cfg.quality_settings is None
    assert plan.generators == {} and all(s.generator is None for s in plan.runs.values())
    assert sorted(plan.runs) == ["real+synthetic/eps1/seed0", "real+synthetic/epsinf/seed0", "real/eps1/seed0",
                                 "real/epsinf/seed0", "synthetic-to-real/eps1/seed0",
                                 "synthetic-to-real/epsinf/seed0", "synthetic/pretrain/seed0"]
    assert plan.runs["synthetic-to-real/eps1/seed0"].config.privacy.target_epsilon == 1.0
    assert cfg.model_dump(mode="json")["synthetic"] == "synthetic/c-dcgan"


def test_quick_e2e_preset_plan():
    """The preset: quick's settings, a DP-MERF generator at half of each ε. (Parsed with MCGAN in
    place of DP-MERF where this installation has no dpmammo.gan.merf_config: the keys it sets are
    common to both.)"""
    from dpmammo.gan.registry import generator_config_class

    quick = load_study(preset="quick")
    try:
        generator_config_class("dp-merf")
        cfg = load_study(preset="quick-e2e")
    except ImportError:
        cfg = load_study(preset="quick-e2e", overrides=["synthetic.generator.generator=mcgan"])
    assert cfg.conditions == ["real", "synthetic", "synthetic→real"] and cfg.epsilons == [1, 6]
    assert cfg.model == quick.model and cfg.dp == quick.dp and cfg.stages == quick.stages
    assert cfg.generator.generator_share == 0.5 and cfg.generator.n == 3000
    assert cfg.quality_settings.frd and cfg.quality_settings.max_patches == 1000
    plan = expand(cfg, Path("/study"))
    assert {g: s.config.privacy.target_epsilon for g, s in plan.generators.items()} == {
        "generator/eps0.5": 0.5, "generator/eps3": 3.0}
    assert all(s.config.data.train == ["cbis-ddsm/train"] and s.config.model.image_size == 64
               for s in plan.generators.values())
    finetune = plan.runs["synthetic-to-real/eps6/seed0"].config.privacy
    assert finetune.target_epsilon == 6.0 and finetune.target == "total"
    assert plan.runs["real/eps6/seed0"].config.privacy.target_epsilon == 6.0


# --- running studies -----------------------------------------------------------------------

def test_generator_that_saw_test_patients_is_refused_before_training(data, tmp_path):
    from dpmammo.study import run_study

    leaky = tiny_generator(data={"train": ["phantom/train", "phantom/test"]})
    cfg = study_config(gen_study(data, leaky, synthetic={"generator": leaky, "n": 64}))
    with pytest.raises(DpMammoError, match=r"training set phantom/test shares 48 patient\(s\) with test set "
                                           r"phantom/test .*disjoint from the study's test_sets") as e:
        run_study(cfg, tmp_path / "study", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "study").exists()  # refused before the study directory was written


def test_dp_study_composes_generator_and_finetune(dp_study):
    """The fine-tune's total is the RDP composition of the DP generator (s·ε) and its own DP stage,
    whose noise was calibrated to what the generator left: the total is the study ε (within the
    calibration's 0.01), checked with dp-accounting; results.csv reports it."""
    from dp_accounting import dp_event, rdp

    gen = read_privacy(dp_study / "generator/eps2/privacy.json").own
    assert gen.guarantee == "dp" and gen.target_epsilon == EPS * SHARE and 0 < gen.epsilon <= EPS * SHARE
    ft = read_privacy(dp_study / "synthetic-to-real/eps4/seed0/privacy.json")
    assert [s.stage for s in ft.stages] == ["gan", "classifier", "classifier"]  # generator, pretrain, fine-tune
    own = ft.own
    assert own.target_epsilon == EPS and own.epsilon < EPS
    assert ft.stages[1].guarantee == "public"  # the pretrain saw synthetic patches only
    acc = rdp.RdpAccountant(orders=RDP_ORDERS)
    for s in (gen, own):
        event = dp_event.PoissonSampledDpEvent(s.sample_rate, dp_event.GaussianDpEvent(s.noise_multiplier))
        acc.compose(event, s.steps)
    independent = acc.get_epsilon(own.delta)
    total = ft.total
    assert total.guarantee == "dp" and total.unit == "patient" and total.delta == own.delta
    assert total.epsilon == pytest.approx(independent, rel=0.01)
    assert EPS - 0.011 <= total.epsilon <= EPS + 1e-9 and total.epsilon > max(gen.epsilon, own.epsilon)
    rows = {r["run_id"]: r for r in read_csv(dp_study / "results.csv")}
    assert float(rows["synthetic-to-real/eps4/seed0"]["epsilon_total"]) == pytest.approx(total.epsilon)
    assert rows["synthetic-to-real/eps4/seed0"]["epsilon_target"] == "4.0"
    # `synthetic` trains on the DP samples without DP: its total is the generator's alone.
    syn = rows["synthetic/eps4/seed0"]
    assert syn["guarantee_total"] == "dp" and float(syn["epsilon_total"]) == pytest.approx(gen.epsilon, rel=0.01)
    real = rows["real/eps4/seed0"]
    assert real["guarantee_total"] == "dp" and float(real["epsilon_total"]) <= EPS
    # The generator run and its set are in the study, named by the generator's own budget.
    assert (dp_study / "generator/eps2/model.safetensors").is_file()
    assert len(list((dp_study / "generator/eps2-samples").glob("*.png"))) == 64
    md = (dp_study / "results.md").read_text()
    assert "DP generator trained by the study at 0.5·ε" in md


def test_dp_study_quality_table_and_report(dp_study):
    rows = {r["set"]: r for r in read_csv(dp_study / "quality.csv")}
    assert list(rows) == ["generator/eps2-samples", "phantom/val"]  # no shipped set among phantoms
    for r in rows.values():
        assert r["status"] == "ok" and int(r["n"]) == 48 and r["image_size"] == "32"
        assert math.isfinite(float(r["classifier_fd"])) and float(r["classifier_fd"]) >= 0
        assert 0 <= float(r["class_fidelity"]) <= 1
        assert r["frd"] == "" and r["frd_note"] == "not requested" and r["n_ref"] == "96"
    assert rows["generator/eps2-samples"]["guarantee"].startswith("ε=")
    assert rows["phantom/val"]["guarantee"] == "private data"
    # Pixels: a grid of the DP generator's samples, none of the private validation patches.
    assert (dp_study / rows["generator/eps2-samples"]["grid"]).is_file() and rows["phantom/val"]["grid"] == ""
    assert not (dp_study / "quality" / "grids" / "phantom_val.png").exists()
    assert float(rows["phantom/val"]["class_fidelity"]) > 0.6  # the judge sees the phantom classes (0.703 measured)
    from PIL import Image

    grid = Image.open(dp_study / rows["generator/eps2-samples"]["grid"])
    assert grid.size == (8 * 32 + 9 * 2, 2 * 32 + 3 * 2)
    assert "| set | kind | guarantee |" in (dp_study / "quality.md").read_text()
    html = (dp_study / "report.html").read_text()
    assert 'id="quality"' in html and "generator/eps2" in html
    # Plots (2), and one grid: the DP generator's samples; no <img> of the private validation set.
    assert html.count("data:image/png;base64,") == 3 and 'alt="phantom/val"' not in html
    assert "What may be released" in html and "dpmammo release" in html


def test_rerun_dp_study_reuses_generator_and_runs(dp_study):
    """Re-running a finished study (from its own study.yaml) trains nothing again."""
    from dpmammo.study import run_study

    before = (dp_study / "results.csv").read_text()
    recorded = yaml.safe_load((dp_study / "study.yaml").read_text())
    cfg = study_config(recorded)
    # A study directory of an older version (a key missing, read at its default) still resumes.
    del recorded["compare_with"]  # stands for a key added after the directory was made
    (dp_study / "study.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False, allow_unicode=True))
    result = run_study(cfg, dp_study, progress=False)
    assert {rid: o.status for rid, o in result.outcomes.items()} == {
        "generator/eps2": "cached", "real/eps4/seed0": "cached", "synthetic/eps4/seed0": "cached",
        "synthetic-to-real/eps4/seed0": "cached"}
    assert (dp_study / "results.csv").read_text() == before
