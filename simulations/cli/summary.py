"""The run summary every engine's command prints at the end, read from the run directory through rundata.

The ServerApp writes ``summary.json`` wherever it runs; engines in other processes (Ray, deployment) only
have that file, so it is rebuilt into a ``FederationResult`` and printed exactly as ``dpfl simulate``
prints an in-process result. A missing, torn or incomplete file becomes a ``SummaryError`` whose message
is the one line the command prints, never a traceback. A run without a DP guarantee is stamped NOT PRIVATE
on the summary's first line; a run in which no round ran (every client declined, say) says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from dpfl.privacy.policy import NOT_PRIVATE_STAMP
from dpfl.privacy.rundata import SUMMARY_FILE, read_summary
from dpfl.server.roster import REFUSALS
from dpfl.simulations.cli.common import console
from dpfl.simulations.config import RunConfig

if TYPE_CHECKING:
    from dpfl.server.federation import FederationResult

REQUIRED_KEYS = ("rounds_completed", "final_accuracy")  # final_accuracy: unless no round ran


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
    no_round = _number(summary.get("rounds_completed")) == 0
    missing = [k for k in REQUIRED_KEYS if _number(summary.get(k)) is None
               and not (no_round and k == "final_accuracy")]
    if missing:
        raise SummaryError(f"{where} has no {' or '.join(missing)} (written by another dpfl version, or torn); "
                           "cannot print the run summary")
    epsilons = summary.get("epsilon_per_client")
    loss, accuracy = _number(summary.get("final_loss")), _number(summary.get("final_accuracy"))
    return FederationResult(
        rounds_completed=int(summary["rounds_completed"]), stop_reason=str(summary.get("stop_reason") or ""),
        final_accuracy=float("nan") if accuracy is None else accuracy,
        final_loss=float("nan") if loss is None else loss,
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


def not_private(cfg: RunConfig, summary: Mapping[str, Any]) -> bool:
    """Whether the run has no DP guarantee, by its summary (its stamp) or its config."""
    return (summary.get("privacy") == NOT_PRIVATE_STAMP or summary.get("not_private") is True
            or bool(cfg.policy.not_private))


def _policy_declines(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(client, refusal status, reason) for every client that refused to take part."""
    clients = summary.get("clients")
    clients = clients if isinstance(clients, dict) else {}
    return [(str(cid), str(info.get("status")), str(info.get("reason", "")))
            for cid, info in sorted(clients.items()) if isinstance(info, dict) and info.get("status") in REFUSALS]


def _prior_runs(summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    clients = summary.get("clients")
    out = []
    for cid, info in sorted((clients if isinstance(clients, dict) else {}).items()):
        if not isinstance(info, dict):
            continue
        runs = info.get("prior_runs") if isinstance(info.get("prior_runs"), list) else []
        eps = _number(info.get("prior_epsilon")) or 0.0
        if runs or eps > 0:
            out.append((str(cid), eps, len(runs)))
    return out


def print_summary(cfg: RunConfig, result: FederationResult, run_path: Path,
                  summary: Mapping[str, Any] | None = None) -> None:
    """Rounds, accuracy, ε (with δ and the accountant), the privacy statement, wall time, run directory."""
    if summary is None:
        summary = read_summary(run_path) or {}
    delta, wall = _number(summary.get("delta")), _number(summary.get("wall_seconds"))
    console.print()
    console.print(f"[bold red]{NOT_PRIVATE_STAMP}[/] | [bold]summary[/]" if not_private(cfg, summary)
                  else "[bold]summary[/]")
    no_round = result.rounds_completed == 0
    stopped = (f"  (no round ran: {result.stop_reason or 'no reason recorded'})" if no_round
               else f"  (stopped: {result.stop_reason})" if result.stop_reason else "")
    console.print(f"  rounds        {result.rounds_completed}/{cfg['num-server-rounds']}{stopped}", markup=False)
    for cid, status, reason in _policy_declines(summary):
        console.print(f"  [yellow]{escape(f'{cid} {status}')}[/]: {escape(reason)}")
    if math.isfinite(result.final_accuracy):
        console.print(f"  accuracy      {result.final_accuracy:.4f} (server test set)")
    else:
        console.print("  accuracy      n/a" + (" (no round ran)" if no_round else ""))
    if result.epsilon_max is not None:
        at_delta = f" at δ = {delta:.3g}" if delta is not None else ""
        console.print(f"  ε             {result.epsilon_max:.3f}{at_delta} (max over clients, {cfg['accountant']})")
        per_client = ", ".join(f"{c} {e:.3f}" for c, e in result.epsilons.items())
        console.print(f"  ε per client  {per_client}")
        relation = summary.get("neighbouring")
        if isinstance(relation, str) and relation:
            console.print(f"  neighbouring  {relation}", markup=False)
        for cid, eps, runs in _prior_runs(summary):
            console.print(f"  earlier runs  {cid}: ε {eps:.3f} before this run, over {runs} earlier run(s); its "
                          "owner's budget covers them all", markup=False)
    user_eps = _number(summary.get("user_epsilon"))
    if user_eps is not None:
        user_delta, cohort = _number(summary.get("user_delta")), _number(summary.get("expected_cohort"))
        console.print(f"  user-level ε  {user_eps:.3f}" + (f" at δ = {user_delta:.3g}" if user_delta else "")
                      + f" ({summary.get('user_accountant') or cfg['accountant']}; one client, "
                        f"{summary.get('user_neighbouring') or 'add-remove'}, "
                        f"{summary.get('client_sampling') or 'poisson'} cohorts of {cohort:g} expected of "
                        f"{cfg['num-clients']}, "
                        f"σ = {_number(summary.get('user_noise_multiplier')) or 0:.4g}; ledgers/server.jsonl)",
                      markup=False)
    for line in cfg.policy.statement():
        console.print(f"  [yellow]{line}[/]" if "NOT" in line else f"  {line}")
    console.print(f"  wall time     {wall:.1f} s" if wall is not None
                  else f"  wall time     unknown ({SUMMARY_FILE} missing or unreadable)")
    console.print(f"  run directory {run_path}", markup=False)
    report = run_path / "report" / "report.html"
    console.print(f"  report        {report}" if report.exists() else
                  f"  report        not written yet: dpfl report {run_path}", markup=False)


def print_run_summary(cfg: RunConfig, run_path: Path, summary: Mapping[str, Any] | None) -> None:
    """The summary of a run another process ran (raises SummaryError), plus every drop the server recorded."""
    print_summary(cfg, result_from_summary(summary, run_path), run_path, summary)
    declined = {cid for cid, _, _ in _policy_declines(summary or {})}
    for cid, rnd, event, reason in client_events(summary or {}):
        if event in REFUSALS and cid in declined:
            continue  # listed by print_summary
        when = f"in round {rnd}" if rnd > 0 else "before round 1"
        console.print(f"  [yellow]{escape(f'{cid} {event} {when}')}[/]: {escape(reason)}")
