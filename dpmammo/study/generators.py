"""The generator runs of a study: refuse one that saw test patients, train (or reuse) each and
sample its set into the study directory.

Generator runs execute in the driver process before any classifier run, whichever the executor:
every synthetic condition at their budget waits for them anyway, and a study has few of them (one
per distinct generator budget). A finished generator run and a complete sampled set (its
provenance.json, written last) are reused; an interrupted training resumes from its checkpoint
and an interrupted sampling is redone.
"""

from __future__ import annotations

import time
from pathlib import Path

from dpmammo.data.manifest import PROVENANCE_FILE
from dpmammo.data.sets import load_set, resolve_root
from dpmammo.errors import DpMammoError
from dpmammo.privacy.ledger import short
from dpmammo.runs import RunDir
from dpmammo.study.config import StudyConfig
from dpmammo.study.outcome import Outcome, failed, torch_threads
from dpmammo.study.recipes import GeneratorSpec, Plan


def check_generator_data(cfg: StudyConfig, plan: Plan) -> None:
    """Refuse a generator whose training sets share a patient with a test set of the study: its
    samples would carry test patients into every synthetic condition. Patient ids name their data
    set (`cbis-ddsm__P_00009`), so equal ids are the same patient."""
    if not plan.generators:
        return
    root = resolve_root(cfg.data_root)
    test_set_of = {r.patient: name for name in cfg.test_sets for r in load_set(root, name) if r.patient}
    checked: set[tuple[Path, str]] = set()
    for spec in plan.generators.values():  # every budget trains on the same sets; each is read once
        gen_root = resolve_root(spec.config.data.root)
        for name in spec.config.data.train:
            if (gen_root, name) in checked:
                continue
            checked.add((gen_root, name))
            shared = sorted({r.patient for r in load_set(gen_root, name) if r.patient in test_set_of})
            if shared:
                raise DpMammoError(
                    f"synthetic.generator: its training set {name} shares {len(shared)} patient(s) with test set "
                    f"{test_set_of[shared[0]]} (e.g. {shared[0]!r}); train the generator on sets disjoint from the "
                    f"study's test_sets ({', '.join(cfg.test_sets)})")


def execute_generator(spec: GeneratorSpec, study_dir: Path, *, num_threads: int) -> Outcome:
    """Train (or resume, or reuse) one generator run and sample its set; never raises."""
    from dpmammo.gan.registry import train_generator
    from dpmammo.gan.sample import sample

    run, samples = RunDir(study_dir / spec.run_id), study_dir / spec.samples_id
    t0 = time.time()
    with torch_threads(num_threads):
        try:
            cached = run.is_finished and (samples / PROVENANCE_FILE).is_file()
            if run.is_finished and not run.has_config(spec.config):
                raise DpMammoError(f"{run.path} holds a finished generator run with another config; delete it to "
                                   "retrain it for this study")
            if not run.is_finished:
                train_generator(spec.config, run.path, progress=False)
            if not (samples / PROVENANCE_FILE).is_file():  # provenance.json is written last
                sample(run.path, spec.n, samples, balance=spec.balance, seed=spec.seed, force=True)
            return Outcome(spec.run_id, "cached" if cached else "done", privacy=short(run.read_privacy().total),
                           wall_s=0.0 if cached else time.time() - t0)
        except Exception as e:  # noqa: BLE001 — a failed generator skips its consumers, not the study
            return failed(spec.run_id, e, t0)
