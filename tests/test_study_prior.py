"""Studies with a procedural prior (`prior:` and the `prior→real` condition): the plan, the refusals
of a bad block, and one tiny phantom study (secret noise, so its totals are real guarantees) run
once and read by several tests: the pretrain run is trained once per seed and shared by every ε,
the fine-tune's chain is [public pretrain, DP classifier] with a total equal to its own ε, and a
second run of the study reuses everything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dpmammo.errors import DpMammoError
from dpmammo.privacy import read_privacy
from dpmammo.study import expand
from tests.conftest import TINY_MODEL, read_csv, study_config, tiny_study_block

EPS = 4.0
MODEL = TINY_MODEL


def tiny_pretrain(**sections) -> dict:
    """A pretrain config of a second or so: 128 mammo phantoms made on the fly, one epoch."""
    d = {"data": {"kinds": ["mammo-phantom"], "n": 128, "n_val": 32, "seed": 3},
         "model": dict(MODEL),
         "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "seed": 99}}
    d.update(sections)
    return d


def prior_study(data: Path, **over) -> dict:
    return tiny_study_block(data, **{
        "name": "prior",
        "conditions": ["real", "prior->real"],  # the ASCII spelling
        "epsilons": [EPS, "inf"],
        "prior": {"pretrain": tiny_pretrain()},
        **over})


@pytest.fixture(scope="module")
def data(study_phantoms) -> Path:
    return study_phantoms


@pytest.fixture(scope="module")
def prior_run(data, tmp_path_factory):
    """The tiny study, run once (secret noise), with its report; (study dir, outcomes)."""
    from dpmammo.report import build_report
    from dpmammo.study import run_study

    out = tmp_path_factory.mktemp("prior-study") / "study"
    result = run_study(study_config(prior_study(data)), out, progress=False)
    assert not result.failed, [(o.run_id, o.error) for o in result.failed]
    build_report(out)
    return out, {rid: o.status for rid, o in result.outcomes.items()}


# --- config and plan (no training) -----------------------------------------------------------

def test_plan_shares_one_pretrain_run_per_seed(data):
    cfg = study_config(prior_study(data, epsilons=[1, 6, "inf"], seeds=[0, 1]))
    assert cfg.conditions == ["real", "prior→real"]
    plan = expand(cfg)
    # One public pretrain run per seed, whatever the number of ε; no generator.
    assert list(plan.priors) == ["prior/pretrain/seed0", "prior/pretrain/seed1"]
    assert list(plan.upstream) == list(plan.priors) and plan.generators == {}
    assert all(rid not in plan.runs for rid in plan.priors)
    for seed in (0, 1):
        pre = plan.priors[f"prior/pretrain/seed{seed}"].config
        assert pre.train.seed == seed and pre.data.seed == 3  # the study seed; the processes' seed stays
        for eps, tag in ((1.0, "eps1"), (6.0, "eps6"), (math.inf, "epsinf")):
            ft = plan.runs[f"prior-to-real/{tag}/seed{seed}"]
            assert ft.parent == ft.prior == f"prior/pretrain/seed{seed}" and ft.stage == "prior-finetune"
            assert ft.config.init_from is None and ft.config.init_weights == "backbone"
            assert ft.config.data.train == ["phantom/train"] and ft.config.train.seed == seed
            assert not ft.config.model.freeze_backbone  # the study's model block: the whole model trains
            if math.isinf(eps):
                assert ft.config.privacy is None
            else:  # the prior is public: the stage's own ε is the chain total
                assert ft.config.privacy.target_epsilon == eps and ft.config.privacy.target == "stage"
    assert [k.run_id for k in plan.results if k.condition == "prior→real"] == [
        f"prior-to-real/{t}/seed{s}" for t in ("eps1", "eps6", "epsinf") for s in (0, 1)]
    # Head only, and the whole model loaded, through the block and the stage's overrides.
    head = study_config(prior_study(data, prior={"pretrain": tiny_pretrain(), "init_weights": "all"},
                                    stages={"prior-finetune": {"model": {"freeze_backbone": True}, "epochs": 5}}))
    ft = expand(head).runs["prior-to-real/eps4/seed0"].config
    assert ft.model.freeze_backbone and ft.train.epochs == 5 and ft.init_weights == "all"
    assert expand(head).runs["real/eps4/seed0"].config.train.epochs == 2


def test_prior_beside_a_dp_generator_keeps_its_own_budget(data):
    """One study compares a DP generator's chain and the free prior at equal ε: the generator runs
    come first among the upstream runs; the prior's fine-tune spends the whole ε on its own stage."""
    gen = {"generator": "mcgan", "data": {"train": ["phantom/train"]}, "privacy": {"delta": 1e-4},
           "model": {"image_size": 32, "latent_dim": 16, "embed_dim": 8, "cond_dim": 8, "g_width": 8, "d_width": 8},
           "train": {"epochs": 1, "batch_size": 32, "sample_every": 0, "device": "cpu"}}
    cfg = study_config(prior_study(data, conditions=["real", "synthetic->real", "prior->real"], epsilons=[6],
                                   synthetic={"generator": gen, "n": 64, "generator_share": 0.5}))
    plan = expand(cfg, Path("/study"))
    assert list(plan.upstream) == ["generator/eps3", "prior/pretrain/seed0"]
    syn, prior = plan.runs["synthetic-to-real/eps6/seed0"].config, plan.runs["prior-to-real/eps6/seed0"].config
    assert syn.privacy.target == "total" and prior.privacy.target == "stage"
    assert syn.privacy.target_epsilon == prior.privacy.target_epsilon == 6.0
    assert plan.runs["prior-to-real/eps6/seed0"].generator is None


def test_prior_from_a_file_with_overrides_is_recorded_inline(data, tmp_path):
    from dpmammo.study.runner import resolve_study

    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain()))
    cfg = study_config(prior_study(data, prior={"pretrain": str(path), "overrides": ["train.epochs=3"]}))
    assert cfg.prior.config_for(0).train.epochs == 3
    resolved, _ = resolve_study(cfg, tmp_path / "study")
    assert resolved.prior.pretrain["train"]["epochs"] == 3 and resolved.prior.overrides == []
    assert expand(resolved).priors == expand(cfg).priors


@pytest.mark.parametrize("change, message", [
    ({"prior": {"pretrain": tiny_pretrain(), "colour": 1}}, r"^test: prior\.colour: unknown key"),
    ({"prior": {"pretrain": {**tiny_pretrain(), "modl": {}}}}, r"^test: prior: pretrain: modl: unknown key"),
    ({"prior": {"pretrain": tiny_pretrain(model={**MODEL, "width": 16})}},
     r"^test: prior: the pretrain model \(cnn-small, input_size 32, width 16\) differs from the study's \(cnn-small, "
     r"input_size 32, width 8\); set the same name, input_size and width in both$"),
    ({"model": {"name": "pixels", "input_size": 32}},
     r"^test: prior: the pretrain model \(cnn-small, input_size 32, width 8\) differs from the study's \(pixels, "
     r"input_size 32\)"),
    ({"prior": None}, r"^test: conditions: prior→real needs a prior: block"),
    ({"conditions": ["real"]}, r"^test: prior: no condition uses it; add prior→real to conditions or remove prior$"),
])
def test_bad_prior_block_is_refused_in_one_line(data, change, message):
    d = prior_study(data, **change)
    if change.get("prior", "") is None:
        del d["prior"]
    with pytest.raises(DpMammoError, match=message) as e:
        study_config(d)
    assert "\n" not in str(e.value)


# --- running a study -------------------------------------------------------------------------

def test_pretrain_runs_once_and_is_shared_by_every_epsilon(prior_run):
    out, status = prior_run
    assert status == {"prior/pretrain/seed0": "done", "real/eps4/seed0": "done", "real/epsinf/seed0": "done",
                      "prior-to-real/eps4/seed0": "done", "prior-to-real/epsinf/seed0": "done"}
    assert [p.name for p in (out / "prior" / "pretrain").iterdir()] == ["seed0"]
    log = (out / "prior/pretrain/seed0/log.txt").read_text()
    assert log.count("start pretrain") == 1 and "resume" not in log
    pre = read_privacy(out / "prior/pretrain/seed0/privacy.json")
    assert [s.guarantee for s in pre.stages] == ["public"] and pre.total.guarantee == "public"
    for tag in ("eps4", "epsinf"):
        cfg = yaml.safe_load((out / f"prior-to-real/{tag}/seed0/config.yaml").read_text())
        assert Path(cfg["init_from"]) == (out / "prior/pretrain/seed0").resolve()
        assert cfg["init_weights"] == "backbone"


def test_finetune_chain_is_public_pretrain_then_dp_and_totals_its_own_epsilon(prior_run):
    out, _ = prior_run
    rec = read_privacy(out / "prior-to-real/eps4/seed0/privacy.json")
    assert [(s.stage, s.guarantee) for s in rec.stages] == [("pretrain", "public"), ("classifier", "dp")]
    own, total = rec.own, rec.total
    assert own.target_epsilon == EPS and 0 < own.epsilon <= EPS and own.unit == "patient"
    assert total.guarantee == "dp" and total.unit == "patient" and total.delta == own.delta
    assert total.epsilon == pytest.approx(own.epsilon, rel=1e-9)  # the public stage adds nothing
    rows = {r["run_id"]: r for r in read_csv(out / "results.csv")}
    ft = rows["prior-to-real/eps4/seed0"]
    assert ft["condition"] == "prior→real" and ft["stage"] == "prior-finetune" and ft["status"] == "ok"
    assert ft["guarantee_total"] == "dp" and ft["unit"] == "patient" and ft["epsilon_target"] == "4.0"
    assert float(ft["epsilon_total"]) == pytest.approx(total.epsilon)
    assert rows["prior-to-real/epsinf/seed0"]["guarantee_total"] == "none"  # non-private fine-tune
    assert "prior/pretrain/seed0" not in rows  # upstream runs are not results


def test_report_states_the_dp_epsilon_and_that_the_prior_is_public(prior_run):
    out, _ = prior_run
    rows = {r["run_id"]: r for r in read_csv(out / "results.csv")}
    ft = rows["prior-to-real/eps4/seed0"]
    md = (out / "results.md").read_text()
    cell = (f"| prior→real | {float(ft['auroc']):.3f} [{float(ft['auroc_ci_low']):.3f}, "
            f"{float(ft['auroc_ci_high']):.3f}] (ε≤{float(ft['epsilon_total']):.2f}/patient) |")
    assert cell in md
    assert "touches no private data, so it is a public stage (ε = 0 for it)" in md and "own ε per patient" in md
    html = (out / "report.html").read_text()
    assert "prior→real" in html and "touches no private data" in html
    # The privacy table: the pretrain run, its own stage public, its chain without private data.
    row = html.split("<td>prior/pretrain/seed0</td>", 1)[1].split("</tr>", 1)[0]
    assert "<td>pretrain</td><td>public</td>" in row and "no private data used" in row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["prior/pretrain/seed0"]["privacy_total"] == "public"
    assert summary["runs"]["prior-to-real/eps4/seed0"]["privacy_total"].startswith("ε=")


def test_second_run_of_the_study_caches_everything(prior_run):
    from dpmammo.study import run_study

    out, _ = prior_run
    before = (out / "results.csv").read_text()
    log = (out / "prior/pretrain/seed0/log.txt").read_text()
    cfg = study_config(yaml.safe_load((out / "study.yaml").read_text()))  # as recorded: the prior inline
    result = run_study(cfg, out, progress=False)
    assert {rid: o.status for rid, o in result.outcomes.items()} == {
        "prior/pretrain/seed0": "cached", "real/eps4/seed0": "cached", "real/epsinf/seed0": "cached",
        "prior-to-real/eps4/seed0": "cached", "prior-to-real/epsinf/seed0": "cached"}
    assert result.outcomes["prior/pretrain/seed0"].privacy == "public"
    assert (out / "results.csv").read_text() == before
    assert (out / "prior/pretrain/seed0/log.txt").read_text() == log


def test_failed_pretrain_skips_its_finetunes_and_the_others_go_on(data, tmp_path):
    from dpmammo.study import run_study

    missing = tmp_path / "no-such-procedural-set"
    pre = tiny_pretrain(data={"folders": [str(missing)], "n_val": 32})
    cfg = study_config(prior_study(data, epsilons=["inf"], prior={"pretrain": pre},
                                   train={"epochs": 1, "batch_size": 32, "device": "cpu"}))
    result = run_study(cfg, tmp_path / "study", progress=False)
    status = {rid: o.status for rid, o in result.outcomes.items()}
    assert status == {"prior/pretrain/seed0": "failed", "real/epsinf/seed0": "done",
                      "prior-to-real/epsinf/seed0": "skipped"}
    assert "no-such-procedural-set" in result.outcomes["prior/pretrain/seed0"].error
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "study" / "results.csv")}
    assert rows["prior-to-real/epsinf/seed0"]["error"] == "parent run prior/pretrain/seed0 failed"


def test_three_phase_plan_probes_then_fine_tunes_the_whole_model(data):
    """prior→probe→real: the probe (frozen backbone from the pretrain run) at probe_share·ε, then the
    whole model from the probe, calibrated to the chain's total ε; one pretrain run per seed serves
    both prior conditions."""
    cfg = study_config(prior_study(data, conditions=["prior->real", "prior->probe->real"], epsilons=[6, "inf"],
                                   prior={"pretrain": tiny_pretrain(), "probe_share": 0.25},
                                   stages={"prior-probe": {"lr": 0.5, "epochs": 3}}))
    plan = expand(cfg)
    assert list(plan.priors) == ["prior/pretrain/seed0"]
    probe, whole = plan.runs["prior-probe-real/probe/eps6/seed0"], plan.runs["prior-probe-real/eps6/seed0"]
    assert probe.parent == probe.prior == "prior/pretrain/seed0" and probe.stage == "prior-probe"
    assert probe.config.model.freeze_backbone and probe.config.init_weights == "backbone"
    assert probe.config.privacy.target_epsilon == pytest.approx(1.5) and probe.config.privacy.target == "stage"
    assert probe.config.optim.lr == 0.5 and probe.config.train.epochs == 3
    assert whole.parent == probe.run_id and whole.prior is None and whole.stage == "probe-finetune"
    assert not whole.config.model.freeze_backbone and whole.config.init_weights == "all"
    assert whole.config.privacy.target_epsilon == 6.0 and whole.config.privacy.target == "total"
    assert whole.config.optim.lr == 3e-3 and whole.config.train.epochs == 2
    inf = plan.runs["prior-probe-real/probe/epsinf/seed0"]
    assert inf.config.privacy is None and plan.runs["prior-probe-real/epsinf/seed0"].config.privacy is None
    assert [k.run_id for k in plan.results if k.condition == "prior→probe→real"] == [
        "prior-probe-real/eps6/seed0", "prior-probe-real/epsinf/seed0"]


def test_three_phase_chain_composes_to_the_study_epsilon(data, tmp_path):
    """The run: [public pretrain, DP probe, DP fine-tune], both DP stages per patient, and their RDP
    composition is the study ε (at most ε, more than either stage alone)."""
    from dpmammo.study import run_study

    cfg = study_config(prior_study(data, conditions=["prior->probe->real"], epsilons=[EPS],
                                   prior={"pretrain": tiny_pretrain(), "probe_share": 0.3}))
    result = run_study(cfg, tmp_path / "study", progress=False)
    assert not result.failed, [(o.run_id, o.error) for o in result.failed]
    rec = read_privacy(tmp_path / "study/prior-probe-real/eps4/seed0/privacy.json")
    assert [(s.stage, s.guarantee) for s in rec.stages] == [("pretrain", "public"), ("classifier", "dp"),
                                                            ("classifier", "dp")]
    probe, own, total = rec.stages[1], rec.own, rec.total
    assert probe.target_epsilon == pytest.approx(0.3 * EPS) and 0 < probe.epsilon <= 0.3 * EPS
    assert total.guarantee == "dp" and total.unit == "patient" == own.unit == probe.unit
    assert max(probe.epsilon, own.epsilon) < total.epsilon <= EPS * (1 + 1e-6)
    assert total.epsilon > 0.97 * EPS  # calibrated to what the probe left, not to a linear split
