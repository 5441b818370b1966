"""The procedural pretrain runs of a study (`prior:`): train (or reuse) each one.

A pretrain run reads no file under the data root and touches no private data (dpmammo.train.pretrain:
its privacy.json is one `public` stage), so it is trained once per seed and serves every ε. Like a
generator run it executes in the driver process before any classifier run, whichever the executor;
a finished run with the study's config is reused, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from dpmammo.errors import DpMammoError
from dpmammo.privacy.ledger import short
from dpmammo.runs import RunDir
from dpmammo.study.outcome import Outcome, failed, torch_threads
from dpmammo.study.recipes import PriorSpec


def execute_prior(spec: PriorSpec, study_dir: Path, *, num_threads: int) -> Outcome:
    """Train (or resume, or reuse) one pretrain run; never raises."""
    from dpmammo.train.pretrain import pretrain

    run = RunDir(study_dir / spec.run_id)
    t0 = time.time()
    with torch_threads(num_threads):
        try:
            cached = run.is_finished
            if cached and not run.has_config(spec.config):
                raise DpMammoError(f"{run.path} holds a finished pretrain run with another config; delete it to "
                                   "retrain it for this study")
            if not cached:
                pretrain(spec.config, run.path, progress=False)
            return Outcome(spec.run_id, "cached" if cached else "done", privacy=short(run.read_privacy().total),
                           wall_s=0.0 if cached else time.time() - t0)
        except Exception as e:  # noqa: BLE001 — a failed pretrain skips its fine-tunes, not the study
            return failed(spec.run_id, e, t0)
