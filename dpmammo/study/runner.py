"""Execute a study: every run of the plan, locally in order or as Ray tasks, then collect results.

A study directory is resumable: a run whose metrics.json and eval files exist is not touched
again, an interrupted run resumes from its checkpoint (dpmammo.train), and the results are
written atomically at the end. A run that fails is recorded with its error; the other runs go
on, and the runs that start from it are reported as skipped. Upstream runs (a generator when
`synthetic:` names one, the pretrain runs of `prior:`) come first, in this process, whichever the
executor (dpmammo.study.upstream).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpmammo.config import parse_config, read_yaml
from dpmammo.data.sets import data_inputs, resolve_root
from dpmammo.errors import DpMammoError
from dpmammo.files import check_out, write_text_atomic
from dpmammo.privacy.ledger import short
from dpmammo.progress import StepProgress
from dpmammo.study.config import STUDY_FILE, StudyConfig
from dpmammo.study.datacheck import check_study_data
from dpmammo.study.generators import check_generator_data
from dpmammo.study.outcome import Outcome, failed, torch_threads
from dpmammo.study.recipes import Plan, RunSpec, expand
from dpmammo.study.results import write_results
from dpmammo.study.upstream import run_upstream
from dpmammo.runs import RunDir

Executor = Literal["local", "ray"]
EXECUTORS = ("local", "ray")


@dataclass
class StudyResult:
    study_dir: Path
    plan: Plan
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status in ("failed", "skipped")]


def execute_run(spec: RunSpec, study_dir: str, test_sets: list[str], *, num_threads: int,
                parent: Optional[Outcome] = None, generator: Optional[Outcome] = None, n_boot: int = 1000,
                processes: int = 1) -> Outcome:
    """Train (or resume) and evaluate one run; never raises: an error becomes a failed Outcome.
    `parent` and `generator` are the outcomes of the runs it starts from (weights, samples); a
    parent may be a classifier or an upstream (pretrain) run. `processes` > 1 trains it over that
    many processes (dpmammo.distributed), sharing `num_threads`."""
    from dpmammo.evaluate import evaluate_run
    from dpmammo.train import fit

    for what, need in (("parent", parent), ("generator", generator)):
        if need is not None and need.status in ("failed", "skipped"):
            return Outcome(spec.run_id, "skipped", error=f"{what} run {need.run_id} {need.status}")
    run_dir = Path(study_dir) / spec.run_id
    t0 = time.time()
    with torch_threads(num_threads):
        try:
            if RunDir(run_dir).is_evaluated(test_sets):
                return Outcome(spec.run_id, "cached", privacy=_total(run_dir))
            cfg = spec.config
            if spec.parent is not None:
                cfg = cfg.model_copy(update={"init_from": (Path(study_dir) / spec.parent).resolve()})
            if not RunDir(run_dir).is_finished:
                fit(cfg, run_dir, progress=False, nproc=processes)
            missing = [s for s in test_sets if not RunDir(run_dir).eval_json(s).is_file()]
            evaluate_run(run_dir, missing, n_boot=n_boot, device=cfg.train.device)
            return Outcome(spec.run_id, "done", privacy=_total(run_dir), wall_s=time.time() - t0)
        except Exception as e:  # noqa: BLE001 — one run's failure must not stop the study
            return failed(spec.run_id, e, t0)


def _total(run_dir: Path) -> str:
    return short(RunDir(run_dir).read_privacy().total)


def resolve_study(cfg: StudyConfig, out: Path) -> tuple[StudyConfig, Path]:
    """Absolute paths (Ray workers run elsewhere) and the generator and pretrain configs inline;
    writes nothing."""
    update: dict = {"data_root": resolve_root(cfg.data_root)}
    if cfg.prior is not None:
        update["prior"] = cfg.prior.inlined()
    if cfg.generator is not None:
        update["synthetic"] = cfg.generator.inlined()
    elif cfg.synthetic.startswith(("./", "../", "~")):
        update["synthetic"] = str(Path(cfg.synthetic).expanduser().resolve())
    return cfg.model_copy(update=update), Path(out).resolve()


def study_inputs(cfg: StudyConfig, plan: Plan) -> list[tuple[str, Optional[Path]]]:
    """The data and weight files a study reads: its directory must not overlap any of them."""
    sets = [cfg.train_set, cfg.val_set, *cfg.test_sets] + ([cfg.synthetic] if isinstance(cfg.synthetic, str) else [])
    inputs = data_inputs(cfg.data_root, sets)
    inputs += [(f"model.{k}", getattr(cfg.model, k, None)) for k in ("weights", "backbone_weights")]
    for spec in plan.generators.values():
        inputs += data_inputs(spec.config.data.root, spec.config.data.train)
    for spec in plan.priors.values():
        inputs += [(f"the procedural set {folder}", folder) for folder in spec.config.data.folders]
    return inputs


def claim_study_dir(cfg: StudyConfig, out: Path) -> None:
    """Write study.yaml, refusing a study directory made with another config, and a folder with
    files of its own (no study.yaml): a study's results.md or report.html would replace the user's."""
    path = out / STUDY_FILE
    if not path.is_file() and out.is_dir() and any(out.iterdir()):
        raise DpMammoError(f"{out} is not empty and holds no {STUDY_FILE}: a study writes into a new or empty folder "
                           "or its own study directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if path.is_file() and not _records(path, cfg):
        raise DpMammoError(f"{out} holds a study with another config; choose another --out "
                           f"(or delete it to start over)")
    write_text_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def _records(path: Path, cfg: StudyConfig) -> bool:
    """Whether study.yaml at `path` records `cfg`. Compared as configs, not as text: study.yaml
    spells out every value, so only a key added to StudyConfig since (e.g. `quality`) is read at
    its default, and a study directory of an older version still resumes."""
    try:
        recorded = parse_config(StudyConfig, read_yaml(path), str(path))
    except DpMammoError:
        return False
    return recorded.model_dump(mode="json") == cfg.model_dump(mode="json")


def run_study(cfg: StudyConfig, out: str | Path, *, executor: Executor = "local", address: Optional[str] = None,
              progress: bool = True, console: Optional[Console] = None) -> StudyResult:
    """Run every run of `cfg` into `out` (skipping finished ones) and write results.csv.

    Example:
        >>> run_study(load_config(StudyConfig, "study.yaml"), "runs/study")  # doctest: +SKIP
    """
    if executor not in EXECUTORS:
        raise DpMammoError(f"unknown executor {executor!r}; use one of: {', '.join(EXECUTORS)}")
    # Refusals that would fail every run alike come before the study directory is written; missing
    # ImageNet weights first, as they need neither the data nor the study directory.
    if executor == "local":
        check_pretrained_weights(expand(cfg, Path(out).resolve()), Path(out))
    cfg, out = resolve_study(cfg, Path(out))
    plan = expand(cfg, out)
    check_out(out, study_inputs(cfg, plan))  # before anything is written
    check_study_data(cfg, plan, out)
    check_generator_data(cfg, plan)
    claim_study_dir(cfg, out)
    result = StudyResult(out, plan)
    # A bar on a terminal; in a log file a line when each run starts and when it ends.
    bar = StepProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       enabled=progress, console=console, every=0, unit="runs")
    with bar:
        task = bar.add_task(f"study {cfg.name}", total=len(plan.upstream) + len(plan.runs))

        def report(o: Outcome, running: str = "") -> None:
            result.outcomes[o.run_id] = o
            eps = f" ({o.privacy})" if o.privacy else ""
            nxt = f" | running {running}" if running else ""
            bar.update(task, advance=1, description=f"{o.run_id}: {o.status}{eps}{nxt}")

        announce = lambda rid: bar.update(task, description=f"running {rid}")  # noqa: E731
        upstream = run_upstream(cfg, plan, out, report, announce)
        run = _run_local if executor == "local" else _run_ray
        kwargs = {} if executor == "local" else {"address": address}
        run(cfg, plan, out, upstream, report, announce, **kwargs)
    write_results(cfg, plan, out, result.outcomes)
    if cfg.quality_settings is not None:  # Fréchet distances, class fidelity and sample grids of the synthetic sets
        from dpmammo.study.quality import run_quality

        run_quality(cfg, plan, out, result.outcomes, console=console if progress else None)
    if cfg.audit is not None:  # membership-inference audits of every condition × ε (dpmammo.study.audits)
        from dpmammo.study.audits import run_audits

        run_audits(cfg, plan, out, progress=progress, console=console)
    return result


def check_pretrained_weights(plan: Plan, out: Path) -> None:
    """Without ImageNet weights every pretrained run left to train would fail alike: say it once, first."""
    from dpmammo.models.config import SwinTConfig

    if any(isinstance(s.config.model, SwinTConfig) and s.config.model.pretrained and not RunDir(out / rid).is_finished
           for rid, s in plan.runs.items()):
        from dpmammo.models.swin import imagenet_weights_file

        imagenet_weights_file()


def _run_local(cfg: StudyConfig, plan: Plan, out: Path, upstream: dict[str, Outcome], report: Callable,
               announce: Callable) -> None:
    done: dict[str, Outcome] = dict(upstream)  # a parent is an earlier classifier run or an upstream run
    for run_id, spec in plan.runs.items():
        announce(run_id)
        parent = None if spec.parent is None else done[spec.parent]
        generator = None if spec.generator is None else upstream[spec.generator]
        done[run_id] = execute_run(spec, str(out), cfg.test_sets, num_threads=cfg.resources.num_cpus, parent=parent,
                                   generator=generator, processes=cfg.resources.processes)
        report(done[run_id])


TOKEN_HINT = ("RAY_AUTH_TOKEN=<token>, RAY_AUTH_TOKEN_PATH=<file> or the file ~/.ray/auth_token "
              "(`ray get-auth-token` prints it on the head)")


def ray_token_auth(address: Optional[str]) -> None:
    """Token authentication (Ray ≥ 2.52): `ray start --head` turns it on when a token is at hand
    (and Ray ≥ 2.59 does by default for local clusters), but a driver given an explicit address
    sends its token only under RAY_AUTH_MODE=token. Where a token is at hand (TOKEN_HINT) and
    RAY_AUTH_MODE is unset, set it, as `ray start` does; a cluster without authentication
    ignores the token. RAY_AUTH_MODE=disabled, set by the user, is kept."""
    if address is None or "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _run_ray(cfg: StudyConfig, plan: Plan, out: Path, upstream: dict[str, Outcome], report: Callable,
             announce: Callable, *, address: Optional[str]) -> None:
    """One Ray task per run with the config's resource request (a run over several processes asks
    for all of their cores and GPUs, and starts them on the node Ray places it on); a chained run takes its parent's
    result as an argument, so Ray starts it only when the parent has finished. The upstream runs
    (generators, pretraining) have finished before (in this process): their outcomes go as plain
    arguments."""
    ray_token_auth(address)
    try:
        import ray
    except ImportError:
        raise DpMammoError("executor ray needs Ray: pip install 'dpmammo[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        except ConnectionError as e:
            cause = f" ({str(e.__cause__).splitlines()[-1][:200]})" if e.__cause__ is not None else ""
            raise DpMammoError(f"cannot reach the Ray cluster at {address}: {e}{cause}; start it with `ray start "
                               f"--head`; a cluster with token authentication needs its token here: {TOKEN_HINT}") from None
    try:
        res = cfg.resources
        task = ray.remote(execute_run).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_retries=0)
        refs: dict[str, object] = {}
        inputs: dict[str, object] = dict(upstream)  # a parent: an upstream outcome or an earlier task's ref
        for run_id, spec in plan.runs.items():
            parent_ref = None if spec.parent is None else inputs[spec.parent]
            generator = None if spec.generator is None else upstream[spec.generator]
            refs[run_id] = inputs[run_id] = task.remote(spec, str(out), cfg.test_sets, num_threads=res.num_cpus,
                                                        parent=parent_ref, generator=generator,
                                                        processes=res.processes)
        pending = {ref: rid for rid, ref in refs.items()}
        announce(f"{len(pending)} Ray tasks")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            rid = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 — a dead worker is one failed run, not a dead study
                outcome = Outcome(rid, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            report(outcome, running=f"{len(pending)} left")
    finally:
        if started:
            ray.shutdown()
