"""The run summary every engine's command prints at the end, read from the run directory through rundata.

The ServerApp writes ``summary.json`` wherever it runs; engines in other processes (Ray, deployment) only
have that file, so it is rebuilt into a ``FederationResult`` and printed exactly as ``dpfl simulate``
prints an in-process result. A missing, torn or incomplete file becomes a ``SummaryError`` whose message
is the one line the command prints, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from dpfl.privacy.rundata import SUMMARY_FILE, read_summary
from dpfl.simulations.cli.common import console
from dpfl.simulations.config import RunConfig

if TYPE_CHECKING:
    from dpfl.server.federation import FederationResult

REQUIRED_KEYS = ("rounds_completed", "final_accuracy")


class SummaryError(ValueError):
    """summary.json is missing, unreadable or incomplete: the run did not finish writing it."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def result_from_summary(summary: Mapping[str, Any] | None, run_path: Path) -> FederationResult:
    """A FederationResult rebuilt from summary.json, so engines in other processes share the CLI summary."""
    from flwr.app import ArrayRecord

    from dpfl.server.federation import FederationResult

    where = run_path / SUMMARY_FILE
    if summary is None:
        raise SummaryError(f"{where} is missing or unreadable: the run did not finish; see {run_path / 'logs'}")
    missing = [k for k in REQUIRED_KEYS if _number(summary.get(k)) is None]
    if missing:
        raise SummaryError(f"{where} has no {' or '.join(missing)} (written by another dpfl version, or torn); "
                           "cannot print the run summary")
    epsilons = summary.get("epsilon_per_client")
    loss = _number(summary.get("final_loss"))
    return FederationResult(
        rounds_completed=int(summary["rounds_completed"]), stop_reason=str(summary.get("stop_reason") or ""),
        final_accuracy=float(summary["final_accuracy"]), final_loss=float("nan") if loss is None else loss,
        epsilon_max=_number(summary.get("epsilon_max")),
        epsilons={str(c): e for c, v in (epsilons if isinstance(epsilons, dict) else {}).items()
                  if (e := _number(v)) is not None},
        seconds=_number(summary.get("wall_seconds")) or 0.0, arrays=ArrayRecord())


def client_events(summary: Mapping[str, Any]) -> list[tuple[str, int, str, str]]:
    """(client, round, event, reason) for every drop or decline the server recorded."""
    out = []
    clients = summary.get("clients")
    for cid, info in sorted((clients if isinstance(clients, dict) else {}).items()):
        events = info.get("events") if isinstance(info, dict) else None
        for ev in events if isinstance(events, list) else []:
            if isinstance(ev, dict):
                out.append((cid, int(_number(ev.get("round")) or 0), str(ev.get("event", "")),
                            str(ev.get("reason", ""))))
    return out


def print_summary(cfg: RunConfig, result: FederationResult, run_path: Path,
                  summary: Mapping[str, Any] | None = None) -> None:
    """Rounds, accuracy, ε (with δ and the accountant), the privacy statement, wall time, run directory."""
    if summary is None:
        summary = read_summary(run_path) or {}
    delta, wall = _number(summary.get("delta")), _number(summary.get("wall_seconds"))
    console.print()
    console.print("[bold]summary[/]")
    console.print(f"  rounds        {result.rounds_completed}/{cfg['num-server-rounds']}"
                  + (f"  (stopped: {result.stop_reason})" if result.stop_reason else ""), markup=False)
    console.print(f"  accuracy      {result.final_accuracy:.4f} (server test set)")
    if result.epsilon_max is not None:
        at_delta = f" at δ = {delta:.3g}" if delta is not None else ""
        console.print(f"  ε             {result.epsilon_max:.3f}{at_delta} (max over clients, {cfg['accountant']})")
        per_client = ", ".join(f"{c} {e:.3f}" for c, e in result.epsilons.items())
        console.print(f"  ε per client  {per_client}")
    for line in cfg.policy.statement():
        console.print(f"  [yellow]{line}[/]" if "NOT" in line else f"  {line}")
    console.print(f"  wall time     {wall:.1f} s" if wall is not None
                  else f"  wall time     unknown ({SUMMARY_FILE} missing or unreadable)")
    console.print(f"  run directory {run_path}", markup=False)


def print_run_summary(cfg: RunConfig, run_path: Path, summary: Mapping[str, Any] | None) -> None:
    """The summary of a run another process ran (raises SummaryError), plus every drop the server recorded."""
    print_summary(cfg, result_from_summary(summary, run_path), run_path, summary)
    for cid, rnd, event, reason in client_events(summary or {}):
        console.print(f"  [yellow]{escape(f'{cid} {event} in round {rnd}')}[/]: {escape(reason)}")
