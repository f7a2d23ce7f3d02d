"""Results of a sweep: one row per point, read back from its run directory, and the selected point.

Rows are rebuilt from disk every time (after a run, a resume or ``--report-only``), through
``dpfl.privacy.rundata``, so the table always says what the directory holds, not what a process
remembers. Whether a point is private is decided by ``dpfl.privacy.policy``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpfl.privacy import LedgerError, PrivacyPolicy, Release
from dpfl.privacy.rundata import LEDGER_DIR, SERVER_LEDGER, RunData, load_run
from dpfl.simulations.sweeps.spec import Point
from dpfl.simulations.sweeps.store import RUNS, read_point_info, run_complete

OK = ("ok", "stopped")  # statuses of a finished point (stopped: finished early, e.g. an exhausted budget)


def sample_level_releases(data: RunData) -> dict[str, list[Release]]:
    """Each client's DP-SGD releases (sample level), clients without any left out.

    A ledger file rundata could not read is an error here, not a warning: its releases were spent, and
    a tuning epsilon that skipped them would be too small."""
    unread = sorted(p.name for p in (data.path / LEDGER_DIR).glob("*.jsonl")
                    if p.stem not in data.ledgers and p.stem != SERVER_LEDGER)
    if unread:
        raise LedgerError(f"{data.path}: ledger(s) {', '.join(unread)} could not be read, so the releases they "
                          "record cannot be accounted for; restore them or inspect them by hand")
    out: dict[str, list[Release]] = {}
    for client, ledger in data.ledgers.items():
        releases = [r for r in ledger.releases if r.mechanism == "dp-sgd"]
        if releases:
            out[client] = releases
    return out


def read_ledgers(run: Path) -> dict[str, list[Release]]:
    """Sample-level releases per client of one run directory (see ``sample_level_releases``)."""
    return sample_level_releases(load_run(run))


def _sigma_text(ledgers: Mapping[str, Sequence[Release]]) -> float | str | None:
    """The noise multiplier as run: one value, or the range when clients (or rounds) differ."""
    sigmas = sorted({r.noise_multiplier for releases in ledgers.values() for r in releases})
    if not sigmas:
        return None
    if sigmas[-1] - sigmas[0] <= 1e-9 * max(1.0, sigmas[-1]):
        return sigmas[0]
    return f"{sigmas[0]:.4g}-{sigmas[-1]:.4g}"


def _finite(value: Any) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def collect_row(point: Point, out: Path) -> dict[str, Any]:
    """One result row: the point's parameters and outcome, read back from its run directory."""
    row: dict[str, Any] = {"id": point.id, "kind": point.kind, "trial": point.trial, "params": point.params,
                           "status": "failed", "error": point.error, "warning": "", "final_accuracy": None,
                           "best_accuracy": None, "best_round": None, "final_loss": None, "epsilon": None,
                           "delta": None, "noise_multiplier": None, "rounds_completed": 0, "stop_reason": "",
                           "wall_seconds": None, "not_private": point.kind != "private", "run_dir": "",
                           "accuracy_by_round": [], "epsilon_by_round": [], "seed": None}
    if point.config is None:
        return row
    row["seed"] = point.config.get("seed")
    row["not_private"] = PrivacyPolicy.from_config(point.config).not_private
    run = out / RUNS / point.id
    row["run_dir"] = str(run.relative_to(out))
    info = read_point_info(run)
    data = load_run(run) if run.is_dir() else None
    metrics = data.metrics if data else []
    row["accuracy_by_round"] = [m.get("accuracy") for m in metrics]
    row["epsilon_by_round"] = [m.get("epsilon_max") for m in metrics]
    accs = [(m["accuracy"], int(m.get("round", 0))) for m in metrics if _finite(m.get("accuracy")) is not None]
    if accs:
        row["best_accuracy"], row["best_round"] = max(accs)
    summary = data.summary if data else None
    if data is not None and summary is not None and run_complete(run):
        row.update({"status": "ok" if not summary.get("stop_reason") else "stopped", "error": "",
                    "final_accuracy": _finite(summary.get("final_accuracy")),
                    "final_loss": summary.get("final_loss"), "epsilon": summary.get("epsilon_max"),
                    "delta": summary.get("delta"), "rounds_completed": summary.get("rounds_completed", 0),
                    "stop_reason": summary.get("stop_reason", ""),
                    "wall_seconds": info.get("wall_seconds", summary.get("wall_seconds")),
                    "warning": info.get("warning", "")})
        if row["not_private"]:
            row["epsilon"] = None
        else:
            with contextlib.suppress(Exception):  # the column is informative; the tuning reads ledgers itself
                row["noise_multiplier"] = _sigma_text(sample_level_releases(data))
    else:
        row["error"] = info.get("error") or ("not run" if not run.exists() else "incomplete: no summary.json")
        row["wall_seconds"] = info.get("wall_seconds")
    return row


def select(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The chosen result: highest final server-side test accuracy among finished private points (ties: lower
    epsilon). The non-private baselines are never candidates."""
    cands = [r for r in rows if r["kind"] == "private" and not r["not_private"]
             and r["status"] in OK and r["final_accuracy"] is not None]
    if not cands:
        return None
    return max(cands, key=lambda r: (r["final_accuracy"], -(r["epsilon"] or 0.0)))
