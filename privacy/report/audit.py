"""The report's audit part: report/audit.json (written by ``dpfl audit``) read back, checked and explained.

An audit measures a *lower* bound on epsilon from canaries (privacy/audit): with the stated confidence the
mechanism that ran is no more private than that. The accountant's epsilon is an *upper* bound computed from what
the ledgers say ran. A bound above the accountant's epsilon means the code does not do what its ledger says (a
missing noise call, a wrong sampling rate, a clipping bug): the report then says so in its verdict. A bound far
below it is expected: one run with m canaries cannot reach the accountant's epsilon (see the section's text).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

AUDIT_FILE = "report/audit.json"
SCHEMA = "dpfl-audit/1"

EXPLAINED = (
    "An audit trains with m canaries, each included by a secret fair coin, then scores every canary and guesses "
    "which were included: the top-scoring ones 'in' (and, planned so, the lowest 'out'), the number of guesses "
    "fixed before any score was seen. If the run were (ε, δ)-DP, that many right guesses would be unlikely; the "
    "measured bound is the largest ε the count rules out at the stated confidence (Steinke, Nasr & Jagielski "
    "2023). It is a lower bound: the accountant's ε is an upper bound and must never be below it. One run with "
    "m canaries cannot reach the accountant's ε: even an ideal mechanism that is exactly ε = 2 gives a bound "
    "near 0.6 at m = 1,000 and near 0.9 at m = 5,000; and a server that sees a client's round (the sum of its "
    "local steps) learns less than the per-step accounting assumes.")


class AuditFileError(ValueError):
    """report/audit.json is malformed."""


def _number(record: dict[str, Any], *keys: str) -> float | None:
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_audit(run_path: Path) -> dict[str, Any] | None:
    """report/audit.json, checked (None when the run was not audited); AuditFileError when malformed."""
    path = run_path / AUDIT_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditFileError(f"{path} cannot be read: {exc}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise AuditFileError(f"{path}: not a dpfl audit (schema {SCHEMA!r} expected)")
    for keys in (("claimed_epsilon",), ("one_run", "epsilon_lower_bound"), ("one_run", "confidence"),
                 ("one_run", "delta")):
        value = _number(record, *keys)
        if value is None or not math.isfinite(value):
            raise AuditFileError(f"{path}: {'.'.join(keys)} is missing or not a finite number")
    for key in ("scores_included", "scores_excluded"):
        if not isinstance(record.get(key), list) or not all(isinstance(v, int | float) for v in record[key]):
            raise AuditFileError(f"{path}: {key} must be a list of numbers")
    return record


def audit_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report's ``audit`` entry: the record with its verdict recomputed (never trusted from the file)."""
    if record is None:
        return None
    claimed = float(record["claimed_epsilon"])
    bound = float(record["one_run"]["epsilon_lower_bound"])
    many = record.get("many_runs") or None
    violated = bound > claimed or bool(many and isinstance(many.get("clopper_pearson_epsilon"), int | float)
                                       and many["clopper_pearson_epsilon"] > claimed)
    return {**record, "violation": violated, "explained": EXPLAINED}


def glance_text(a: dict[str, Any]) -> str:
    one = a["one_run"]
    verdict = ("VIOLATION: the measured lower bound exceeds the accountant's ε (section 8)" if a["violation"]
               else "consistent with the accountant")
    return (f"ε ≥ {one['epsilon_lower_bound']:.3f} measured ({a['kind']} canaries, m = {one['canaries']}, "
            f"confidence {one['confidence']:g}) against ε ≤ {a['claimed_epsilon']:.3f} by the accountant: {verdict}")


def audit_rows(a: dict[str, Any]) -> list[tuple[str, str]]:
    one = a["one_run"]
    rows = [("Accountant's ε (upper bound)", f"{a['claimed_epsilon']:.4f} at δ = {one['delta']:.3g} "
                                              f"({a['accountant']}, add/remove one record, max over clients)"),
            ("Measured ε (lower bound, one run)", f"{one['epsilon_lower_bound']:.4f} at confidence "
                                                   f"{one['confidence']:g}"),
            ("Canaries", f"{one['canaries']} {a['kind']} canaries, {len(a['scores_included'])} included by their "
                         "coins"),
            ("Guesses", f"{one['guesses_in']} 'in' (highest scores) and {one['guesses_out']} 'out' (lowest), fixed "
                        f"before scoring: {one['correct']} of {one['guesses']} right"),
            ("What the auditor saw", a["auditor"]),
            ("Score", a["score"]),
            ("Verdict", "VIOLATION: the mechanism leaks more than its ledger says" if a["violation"]
             else "consistent: the measured lower bound does not exceed the accountant's ε")]
    many = a.get("many_runs")
    if many:
        cp = many.get("clopper_pearson_epsilon")
        rows.append((f"{many['runs']} runs pooled", f"Clopper-Pearson ε ≥ {'∞' if cp is None else f'{cp:.4f}'} "
                     f"(threshold chosen on half the scores, rates bounded on the other half); Gaussian-DP "
                     f"estimate ε ≈ {many['gdp_epsilon_estimate']:.4f} (μ = {many['gdp_mu_estimate']:.3f}; an "
                     "estimate, not a bound); one-run bounds "
                     + ", ".join(f"{b:.3f}" for b in many.get("one_run_bounds", []))))
    if a.get("command"):
        rows.append(("Command", f"`{a['command']}`"))
    return rows
