"""Driving a sweep: plan it, hold its directory, run what is not finished yet, then write results and report.

``run_sweep`` is what ``dpfl sweep`` calls; ``finish`` (also ``--report-only``) rebuilds results.csv/json,
tuning.json and the report from whatever the directory holds, so a resumed or interrupted sweep reports
the same way as one that ran straight through. One sweep process per directory (a file lock): two would
archive and rerun each other's running points.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpfl.privacy.rundata import read_json_object
from dpfl.simulations.sweeps import report as sweep_report
from dpfl.simulations.sweeps.accounting import Tuning, compute_tuning
from dpfl.simulations.sweeps.execution import run_local, run_ray
from dpfl.simulations.sweeps.results import collect_row
from dpfl.simulations.sweeps.spec import Point, RandomSpec, SweepError, SweepSpec, axes, draw_trial_count, expand
from dpfl.simulations.sweeps.store import ATTEMPTS, RUNS, TOKEN_FILE, run_complete, write_json

PLAN_VERSION = 1


@dataclass
class SweepOutcome:
    """What a sweep did and wrote: its points and rows, the tuning cost, the files, and the counts."""

    out: Path
    points: list[Point]
    rows: list[dict[str, Any]]
    tuning: Tuning | None
    files: list[Path]
    ran: int = 0
    reused: int = 0
    failed: int = 0
    wall_seconds: float = 0.0


class Progress:
    """What the driver reports as points finish; the CLI plugs a rich progress bar in here."""

    def start(self, total: int, reused: int) -> None: ...
    def point_done(self, point: Point, outcome: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


# --- the plan: what a resume must keep ---------------------------------------------------------------------
def _plan_path(out: Path) -> Path:
    return out / "plan.json"


def save_plan(out: Path, spec: SweepSpec, points: Sequence[Point], trials: int | None) -> None:
    """OUT/plan.json: the spec, its points and, for a random search, K (drawn once, kept on resume)."""
    write_json(_plan_path(out), {"version": PLAN_VERSION, "spec": spec.to_dict(), "spec_digest": spec.digest(),
                                 "mode": spec.mode, "trials": trials, "points": [asdict(p) for p in points]})


def load_plan(out: Path) -> dict[str, Any] | None:
    """The stored plan, or None when there is none (or one this version does not read)."""
    data = read_json_object(_plan_path(out))
    return data if isinstance(data, dict) and data.get("version") == PLAN_VERSION else None


def spec_from_plan(plan: Mapping[str, Any]) -> SweepSpec:
    """The spec a plan was made from, as it was then (a report is rebuilt from it, not from today's file)."""
    s = dict(plan["spec"])
    rnd = s.get("random")
    s["random"] = RandomSpec(**rnd) if rnd else None
    return SweepSpec(**s)


def _planned_points(plan: Mapping[str, Any]) -> list[Point]:
    return [Point(**p) for p in plan["points"]]


def plan_sweep(spec: SweepSpec, out: Path, *, resume: bool) -> tuple[list[Point], int | None]:
    """Expand the sweep, or take the stored plan of a random search being resumed (its K and draws are
    fixed)."""
    plan = load_plan(out)
    if plan is not None and not resume:
        raise SweepError(f"{out} already holds a sweep; pass --resume to continue it (finished points are "
                         "skipped) or choose another --out")
    if spec.random is not None:
        if plan is not None and plan.get("mode") == "random":
            if plan.get("spec_digest") != spec.digest():
                raise SweepError(f"the random search in {out} was planned from a different sweep spec; its "
                                 "number of trials and its draws are fixed in plan.json. Resume it with the "
                                 "same spec, or choose another --out")
            return _planned_points(plan), plan.get("trials")
        trials = draw_trial_count(spec.random.distribution, spec.random.trials, spec.random.eta)
        return expand(spec, trials=trials), trials
    return expand(spec), None


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, engine: str = "local",
              ray_address: str | None = None, resume: bool = False, threads: int = 1,
              progress: Progress | None = None, report: bool = True) -> SweepOutcome:
    """Plan, run what is not finished yet, then write results.csv/json, tuning.json and the report."""
    t0 = time.time()
    out = Path(out).expanduser().resolve()
    if engine not in ("local", "ray"):
        raise SweepError(f"--engine {engine!r} is not valid: expected local or ray")
    if jobs < 1:
        raise SweepError(f"--jobs {jobs} is not valid: expected an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        return _run_locked(spec, out, jobs=jobs, engine=engine, ray_address=ray_address, resume=resume,
                           threads=threads, progress=progress, report=report, t0=t0)


@contextlib.contextmanager
def _sweep_lock(out: Path) -> Iterator[None]:
    """One sweep process per directory: two would archive and rerun each other's running points."""
    with open(out / ".sweep.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another dpfl sweep is running in {out}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_locked(spec: SweepSpec, out: Path, *, jobs: int, engine: str, ray_address: str | None, resume: bool,
                threads: int, progress: Progress | None, report: bool, t0: float) -> SweepOutcome:
    points, trials = plan_sweep(spec, out, resume=resume)
    (out / RUNS).mkdir(exist_ok=True)
    save_plan(out, spec, points, trials)
    token_file = out / TOKEN_FILE
    if not token_file.exists():
        token_file.write_text(uuid.uuid4().hex + "\n")
    token = token_file.read_text().strip()
    session = uuid.uuid4().hex
    todo: list[dict[str, Any]] = []
    reused = 0
    for p in points:
        if not p.valid:
            continue
        run_path = out / RUNS / p.id
        if run_complete(run_path):
            reused += 1
            continue
        cfg = {**(p.config or {}), "run-dir": str(out / RUNS), "run-name": p.id, "workers": 1,
               "state-dir": ""}
        todo.append({"id": p.id, "config": cfg, "run_path": str(run_path),
                     "attempts_dir": str(out / ATTEMPTS), "threads": threads, "session": session,
                     "sweep_dir": str(out), "token": token})
    by_id = {p.id: p for p in points}
    counts = {"ran": 0, "failed": 0}
    progress = progress or Progress()

    def on_done(outcome: dict[str, Any]) -> None:
        counts["ran"] += 1
        counts["failed"] += outcome.get("status") != "ok"
        progress.point_done(by_id[outcome["id"]], outcome)

    progress.start(len(todo), reused)
    try:
        if todo:
            if engine == "ray":
                run_ray(todo, jobs, on_done, address=ray_address)
            else:
                run_local(todo, jobs, on_done)
    finally:
        progress.stop()
    outcome = finish(out, spec, points, trials, report=report)
    outcome.ran, outcome.reused, outcome.failed = counts["ran"], reused, counts["failed"]
    outcome.failed += sum(not p.valid for p in points)
    outcome.wall_seconds = time.time() - t0
    return outcome


def finish(out: Path, spec: SweepSpec, points: Sequence[Point], trials: int | None, *,
           report: bool = True) -> SweepOutcome:
    """Results, tuning and report from whatever the sweep directory holds (also used by --report-only)."""
    rows = [collect_row(p, out) for p in points]
    tuning: Tuning | None = None
    try:
        tuning = compute_tuning(out, spec, points, rows, trials=trials)
    except Exception as exc:  # accounting must not lose the results table; say so loudly instead
        tuning = Tuning(method="error", epsilon=None, delta=None, private_runs=0,
                        statement=f"The tuning epsilon could not be computed ({type(exc).__name__}: {exc}); "
                                  "no guarantee is stated for a selected model.")
    write_json(out / "tuning.json", tuning.to_dict())
    files = sweep_report.write_results(out, rows, axes=axes(spec))
    if report:
        files += sweep_report.write_report(out, spec, rows, tuning)
    return SweepOutcome(out=out, points=list(points), rows=rows, tuning=tuning, files=files)


def report_only(out: str | Path) -> SweepOutcome:
    """Rebuild results, tuning and report from a sweep directory, running nothing."""
    out = Path(out).expanduser().resolve()
    plan = load_plan(out)
    if plan is None:
        raise SweepError(f"{out} holds no sweep (no plan.json)")
    try:
        spec, points = spec_from_plan(plan), _planned_points(plan)
    except (KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"{out / 'plan.json'} is damaged ({type(exc).__name__}: {exc}); rerun the sweep with "
                         "--resume to write it again") from None
    return finish(out, spec, points, plan.get("trials"))
