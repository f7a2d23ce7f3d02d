"""Running points: one point into its run directory, and many at once in worker processes or on Ray.

A failing point never stops the sweep: its error is recorded in RUN/point.json and the others go on.
Each point's prints, warnings and log records go to RUN/point.log, because the terminal belongs to the
sweep's progress bar. A worker process that dies fails only the point it was running; points it never
started run again in a fresh pool. On Ray, a node that does not see the sweep directory runs the point
in a temporary directory and ships the run directory back as a tar archive.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import logging
import multiprocessing as mp
import os
import tarfile
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import resolve
from dpfl.simulations.sweeps.store import (
    ATTEMPTS,
    POINT_FILE,
    RUNS,
    TOKEN_FILE,
    archive_attempt,
    read_point_info,
    run_complete,
    write_json,
)

MAX_POOL_RESTARTS = 3


# --- running one point (in a worker process, a Ray task, or this process) -----------------------------------
class _QuietLogReporter:
    """Round lines go to the point's log file, not to the terminal the sweep's progress bar owns."""

    def __init__(self) -> None:
        from dpfl.server.federation import LogReporter

        self._inner = LogReporter()

    def start(self, total_rounds: int) -> None:
        self._inner.start(total_rounds)

    def round(self, row: Mapping[str, Any]) -> None:
        self._inner.round(row)

    def stop(self) -> None:
        self._inner.stop()


@contextlib.contextmanager
def _captured_output(log_path: Path) -> Iterator[None]:
    """Send this point's prints, warnings and log records to RUN/point.log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        names = ("", "dpfl", "flwr", "opacus")
        saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                     logging.getLogger(n).propagate) for n in names}
        for n in names:
            lg = logging.getLogger(n)
            lg.handlers = [] if n == "opacus" else [handler]
            lg.propagate = n in ("", "opacus")
        logging.getLogger("dpfl").setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
        finally:
            for n, (handlers, level, propagate) in saved.items():
                lg = logging.getLogger(n)
                lg.handlers, lg.level, lg.propagate = handlers, level, propagate


def _set_threads(threads: int) -> int:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return before


def execute_point(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one point into its run directory and record how it went in RUN/point.json.

    Never raises for a failing point: the error is recorded and the sweep goes on."""
    import dpfl.simulations.engines.simulate as sim  # looked up at call time so tests can count calls

    path = Path(task["run_path"])
    attempts = Path(task["attempts_dir"])
    t0 = time.time()
    if run_complete(path):
        return {"id": task["id"], "status": "ok", "error": "", "wall_seconds": 0.0, "reused": True}
    archive_attempt(path, attempts)
    path.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"id": task["id"], "status": "running", "session": task.get("session", ""),
                            "started": t0, "host": os.uname().nodename, "pid": os.getpid(),
                            "node": task.get("node", "")}
    write_json(path / POINT_FILE, info)
    threads_before = _set_threads(int(task.get("threads", 1)))
    error = ""
    try:
        with _captured_output(path / "point.log"):
            try:
                cfg = resolve(task["config"])
                sim.simulate(cfg, reporter=_QuietLogReporter(), run_path=path)
            except Exception as exc:  # one failed point must not kill the sweep
                error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    finally:
        _set_threads(threads_before)
        _clear_run_caches()
    complete = run_complete(path)
    status = "ok" if complete else "failed"
    if not complete and not error:
        error = "the run ended without a complete summary.json"
    info.update({"status": status, "error": error if not complete else "", "wall_seconds": time.time() - t0,
                 "finished": time.time()})
    if complete and error:
        info["warning"] = f"training finished, then: {error}"
    write_json(path / POINT_FILE, info)
    summary = (read_summary(path) if complete else None) or {}
    return {"id": task["id"], "status": status, "error": info["error"], "warning": info.get("warning", ""),
            "wall_seconds": info["wall_seconds"], "reused": False,
            "final_accuracy": summary.get("final_accuracy"), "epsilon": summary.get("epsilon_max")}


def _clear_run_caches() -> None:
    """Per-config client data is cached per process; a long-lived worker must not keep every point's."""
    with contextlib.suppress(Exception):
        from dpfl.simulations import apps

        for name in ("_client_setup", "_cached_config"):
            fn = getattr(apps, name, None)
            if fn is not None and hasattr(fn, "cache_clear"):
                fn.cache_clear()


def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    _set_threads(threads)
    with contextlib.suppress(RuntimeError):
        import torch

        torch.set_num_interop_threads(1)


def execute_point_portable(task: Mapping[str, Any]) -> dict[str, Any]:
    """Ray task body: run in place when this node sees the sweep directory (shared file system), else in a
    local temporary directory and ship the run directory back (without checkpoints) as a tar archive."""
    _init_worker(int(task.get("threads", 1)))
    with contextlib.suppress(Exception):
        import ray

        task = {**task, "node": ray.get_runtime_context().get_node_id()}
    token_file = Path(task["sweep_dir"]) / TOKEN_FILE
    shared = token_file.is_file() and token_file.read_text().strip() == task["token"]
    if shared:
        return execute_point(task)
    with tempfile.TemporaryDirectory(prefix="dpfl-sweep-") as tmp:
        local = Path(tmp) / RUNS / task["id"]
        outcome = execute_point({**task, "run_path": str(local), "attempts_dir": str(Path(tmp) / ATTEMPTS),
                                 "config": {**task["config"], "run-dir": str(local.parent)}})
        outcome["archive"] = pack_run(local)
        return outcome


def pack_run(path: Path) -> bytes:
    """A run directory as a gzipped tar, without checkpoints (large, and only its own node resumes them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(path.rglob("*")):
            rel = item.relative_to(path)
            if item.is_file() and rel.parts[0] != "checkpoints":
                tar.add(item, arcname=str(rel))
    return buf.getvalue()


def unpack_run(archive: bytes, path: Path, attempts_dir: Path) -> None:
    """Put a shipped run directory in place; whatever was there is kept as an attempt first."""
    archive_attempt(path, attempts_dir)
    path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(path, filter="data")


# --- engines ----------------------------------------------------------------------------------------------
OnDone = Callable[[dict[str, Any]], None]


def _failed(task: Mapping[str, Any], message: str) -> dict[str, Any]:
    path = Path(task["run_path"])
    info = read_point_info(path) or {"id": task["id"]}
    info.update({"status": "failed", "error": message, "finished": time.time()})
    if path.exists():
        write_json(path / POINT_FILE, info)
    return {"id": task["id"], "status": "failed", "error": message, "wall_seconds": 0.0, "reused": False}


def run_local(tasks: list[dict[str, Any]], jobs: int, on_done: OnDone) -> None:
    """``jobs`` worker processes (spawned, one torch thread each); ``jobs == 1`` runs in this process."""
    if jobs <= 1:
        for task in tasks:
            on_done(execute_point(task))
        return
    pending = list(tasks)
    for _ in range(MAX_POOL_RESTARTS + 1):
        if not pending:
            return
        broken: list[dict[str, Any]] = []
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn"),
                                      initializer=_init_worker, initargs=(int(pending[0].get("threads", 1)),))
        try:
            futures = {pool.submit(execute_point, t): t for t in pending}
            for fut in cf.as_completed(futures):
                task = futures[fut]
                try:
                    on_done(fut.result())
                except BrokenProcessPool:
                    broken.append(task)
                except Exception as exc:  # pickling errors and the like: this point only
                    on_done(_failed(task, f"{type(exc).__name__}: {exc}"))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        # A worker died (killed, out of memory): points it was running fail; those never started go again.
        pending = []
        for task in broken:
            info = read_point_info(Path(task["run_path"]))
            if info.get("session") == task.get("session") and info.get("status") == "running":
                on_done(_failed(task, "the worker process died while running this point (killed, or out of "
                                      "memory?)"))
            else:
                pending.append(task)
    for task in pending:
        on_done(_failed(task, "worker processes kept dying; not run"))


def run_ray(tasks: list[dict[str, Any]], jobs: int, on_done: OnDone, *, address: str | None) -> None:
    """One Ray task (one CPU) per point: on a cluster (``address``) or a local Ray with ``jobs`` CPUs."""
    import ray

    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                              "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}}
    if target == "local":
        kwargs["num_cpus"] = jobs
    with warnings.catch_warnings():  # Ray's advice about GPU env vars: the default (no GPU per task) is wanted
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*RAY_ACCEL_ENV_VAR_OVERRIDE.*")
        ray.init(address=target, **kwargs)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_point_portable)
        refs = {remote.remote(t): t for t in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's process died, or the node left
                    on_done(_failed(task, f"Ray task failed: {type(exc).__name__}: {exc}"))
                    continue
                archive = outcome.pop("archive", None)
                if archive is not None:
                    unpack_run(archive, Path(task["run_path"]), Path(task["attempts_dir"]))
                on_done(outcome)
    finally:
        ray.shutdown()
