"""Re-deriving every epsilon from the ledgers, and how to reproduce it outside dpfl.

The run's numbers are only as good as its accounting, so the report recomputes each client's
final epsilon from its ledger with every accountant and flags any disagreement with what the run
wrote. IID clients usually hold identical ledgers: each distinct ledger is computed once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpfl.privacy.accountants import ACCOUNTANT_REGISTRY, epsilon_all, epsilon_per_release
from dpfl.privacy.ledger import Ledger
from dpfl.privacy.releases import DpSgdRelease, Release
from dpfl.privacy.report.jsonsafe import finite
from dpfl.privacy.rundata import natural_key

REL_TOL = 1e-6  # a recomputed epsilon further than this (relative) from the ledger's is a bug


def relative_difference(value: float | None, reference: float | None) -> float | None:
    """|value - reference| / |reference| (absolute when the reference is 0); None if either is missing."""
    if value is None or reference is None:
        return None
    diff = abs(value - reference)
    return diff / abs(reference) if reference != 0 else diff


def agrees(value: float | None, reference: float | None, tol: float = REL_TOL) -> bool:
    diff = relative_difference(value, reference)
    return diff is not None and diff <= tol


@dataclass
class DistinctLedger:
    """A set of clients whose ledgers have the same releases (round numbers aside), delta and accountant."""

    id: str
    releases: list[Release]
    delta: float
    accountant: str
    clients: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[tuple[str, float, float, int, int]]:
        """Consecutive identical releases as (mechanism, sigma, q, steps per release, count)."""
        out: list[tuple[str, float, float, int, int]] = []
        for r in self.releases:
            mech, sigma, q, steps = r.key
            if out and out[-1][:4] == (mech, sigma, q, steps):
                out[-1] = (*out[-1][:4], out[-1][4] + 1)
            else:
                out.append((mech, sigma, q, steps, 1))
        return out


def _ledger_delta_accountant(ledger: Ledger, delta: float, accountant: str) -> tuple[float, str]:
    last = ledger.entries[-1]
    return float(last.get("delta", delta)), str(last.get("accountant", accountant))


def group_ledgers(ledgers: Mapping[str, Ledger], delta: float, accountant: str) -> list[DistinctLedger]:
    """Group clients by what their epsilon depends on; clients with empty ledgers are left out."""
    groups: dict[tuple[Any, ...], DistinctLedger] = {}
    for cid in sorted(ledgers, key=natural_key):
        ledger = ledgers[cid]
        if not len(ledger):
            continue
        releases = ledger.releases
        led_delta, led_acc = _ledger_delta_accountant(ledger, delta, accountant)
        key = (tuple(r.key for r in releases), led_delta, led_acc)
        if key not in groups:
            groups[key] = DistinctLedger(f"L{len(groups) + 1}", releases, led_delta, led_acc)
        groups[key].clients.append(cid)
    return list(groups.values())


def recompute(groups: Sequence[DistinctLedger], ledgers: Mapping[str, Ledger]) -> dict[str, Any]:
    """Every accountant on every distinct ledger, and each client's comparison with its ledger's values."""
    distinct, clients, mismatches = [], [], []
    for g in groups:
        known = ACCOUNTANT_REGISTRY.get(g.accountant)
        values = epsilon_all(g.releases, g.delta) if known else {}
        if known is None:
            mismatches.append(f"ledger {g.id}: unknown accountant {g.accountant!r}; nothing re-checked")
        prefixes = (epsilon_per_release(g.releases, g.delta, g.accountant)
                    if known is not None and known.exact_prefixes else None)
        distinct.append({"id": g.id, "clients": g.clients, "releases": len(g.releases), "delta": g.delta,
                         "accountant": g.accountant, "recomputed": values,
                         "recomputed_per_release": prefixes})
        for cid in g.clients:
            entries = ledgers[cid].entries
            reported = finite(entries[-1].get("epsilon"))
            mine = values.get(g.accountant)
            ok = agrees(mine, reported)
            bad_entries = []
            if prefixes is not None:
                for entry, value in zip(entries, prefixes, strict=True):
                    if not agrees(value, finite(entry.get("epsilon"))):
                        bad_entries.append({"round": entry.get("round"),
                                            "ledger": finite(entry.get("epsilon")), "recomputed": value})
            row = {"client": cid, "ledger": g.id, "releases": len(entries),
                   "rounds": [e.get("round") for e in entries], "accountant": g.accountant, "delta": g.delta,
                   "reported": reported, "recomputed": values,
                   "relative_difference": relative_difference(mine, reported),
                   "ok": ok and not bad_entries, "entry_mismatches": bad_entries}
            clients.append(row)
            if not ok:
                mismatches.append(f"{cid}: ledger says epsilon {reported} but {g.accountant} recomputes "
                                  f"{mine} (relative difference {row['relative_difference']})")
            for bad in bad_entries:
                mismatches.append(f"{cid} round {bad['round']}: ledger says epsilon {bad['ledger']} but "
                                  f"{g.accountant} recomputes {bad['recomputed']} for that prefix")
    return {"tolerance": REL_TOL, "distinct": distinct, "clients": clients, "mismatches": mismatches,
            "ok": not mismatches,
            "prefix_check": ("every ledger entry re-checked"
                             if all(d["recomputed_per_release"] is not None for d in distinct)
                             else "final entries re-checked (under prv every prefix would cost seconds)")}


def pld_interval(releases: Sequence[Release]) -> float | None:
    """The PLD discretisation interval dpfl uses for this ledger (None if this dpfl does not say)."""
    try:
        from dpfl.privacy import _pld

        return float(_pld.interval_for(_pld.runs_of([(r.noise_multiplier, r.sample_rate, r.steps)
                                                      for r in releases])))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def _rdp_orders_text() -> str:
    """The RDP orders dpfl uses, as Python source (a short expression when it matches one)."""
    short = "[1 + x / 10 for x in range(1, 100)] + list(range(11, 257)) + [512, 1024]"
    try:
        from dpfl.privacy import _rdp

        orders = [float(a) for a in _rdp.ORDERS]
    except (ImportError, AttributeError):
        return short
    expected = [1 + x / 10 for x in range(1, 100)] + list(range(11, 257)) + [512, 1024]
    return short if orders == [float(a) for a in expected] else repr(orders)


def interval_text(h: float | None) -> str:
    """The PLD interval as Python source (2**-k when it is a power of two)."""
    if h is None:
        return "1e-4  # dpfl's own PLD interval is unknown here: expect ~0.1 % agreement, not every digit"
    exponent = math.log2(h)
    return f"2**{int(exponent)}" if exponent.is_integer() else repr(h)


def _python_snippet(g: DistinctLedger, h: float | None) -> str:
    schedule = ",\n    ".join(f"({sigma!r}, {q!r}, {steps}, {count})" for _, sigma, q, steps, count in g.runs)
    return f"""# Ledger {g.id} ({", ".join(g.clients)}): its epsilon without dpfl (dp-accounting, Opacus).
import math

import dp_accounting
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

delta = {g.delta!r}
interval = {interval_text(h)}
# (noise multiplier sigma, Poisson sample rate q, DP-SGD steps per round, rounds), in ledger order
schedule = [
    {schedule},
]
# Composition only depends on the total steps: merge consecutive entries with the same (sigma, q).
runs = []
for sigma, q, steps, rounds in schedule:
    if runs and runs[-1][:2] == (sigma, q):
        runs[-1] = (sigma, q, runs[-1][2] + steps * rounds)
    else:
        runs.append((sigma, q, steps * rounds))


def dp_event(sigma, q, steps):
    if q >= 1:  # no subsampling: n Gaussian steps are one Gaussian with sigma / sqrt(n)
        return dp_accounting.GaussianDpEvent(sigma / math.sqrt(steps))
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


event = dp_accounting.ComposedDpEvent([dp_event(*run) for run in runs])
# pessimistic PLD (an upper bound) with the discretisation interval dpfl chose for this ledger
pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
print("pld", pld.compose(event).get_epsilon(delta))

orders = {_rdp_orders_text()}
rdp_dp = dp_accounting.rdp.RdpAccountant(orders).compose(event).get_epsilon(delta)
rdp_total = sum(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
                for sigma, q, steps in runs)
rdp_op = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp_total, delta=delta)[0]
print("rdp", max(rdp_dp, rdp_op))  # dpfl reports the larger of the two RDP conversions

totals = {{}}  # composition commutes: PRV takes all steps of one (sigma, q) together
for sigma, q, steps in runs:
    totals[(sigma, q)] = totals.get((sigma, q), 0) + steps
prv = PRVAccountant()
prv.history = [(sigma, q, steps) for (sigma, q), steps in totals.items()]
print("prv", prv.get_epsilon(delta=delta, eps_error=0.01))
"""


def reproduction(groups: Iterable[DistinctLedger], recomputed: Mapping[str, Mapping[str, float]],
                 ) -> list[dict[str, Any]]:
    """The exact parameters behind each distinct ledger, a CLI line when one (sigma, q) runs throughout,
    and a Python snippet for any ledger; ``recomputed`` is recompute()'s values per ledger id."""
    out = []
    for g in groups:
        runs = g.runs
        h = pld_interval(g.releases)
        mechanisms = {m for m, *_ in runs}
        one_mechanism = len({(sigma, q) for _, sigma, q, _, _ in runs}) == 1 and len(mechanisms) == 1
        entry: dict[str, Any] = {
            "ledger": g.id, "clients": g.clients, "delta": g.delta, "accountant": g.accountant,
            "rounds": len(g.releases), "uniform": len(runs) == 1, "pld_discretization": h,
            "schedule": [{"mechanism": m, "noise_multiplier": s, "sample_rate": q, "steps_per_round": n,
                          "rounds": c} for m, s, q, n, c in runs],
            "command": None, "command_output": None, "command_matches": None, "python": _python_snippet(g, h),
        }
        if one_mechanism:
            _, sigma, q, _, _ = runs[0]
            total = sum(n * c for *_, n, c in runs)
            entry.update(noise_multiplier=sigma, sample_rate=q, total_steps=total,
                         steps_per_round=runs[0][3] if len(runs) == 1 else None)
            entry["command"] = (f"dpfl privacy epsilon --sample-rate {q!r} --noise-multiplier {sigma!r} "
                                f"--steps {total} --delta {g.delta!r} --accountant all")
            entry["command_output"] = single = epsilon_all([DpSgdRelease(sigma, q, total)], g.delta)
            ledger = recomputed.get(g.id) or {}
            entry["command_matches"] = bool(ledger) and all(agrees(single[k], v) for k, v in ledger.items())
        out.append(entry)
    return out


def expected_from_ledger(ledger: Ledger, upto_round: int) -> float:
    """The ledger's cumulative epsilon after the last release at or before ``upto_round`` (0.0 if none)."""
    value = 0.0
    for e in ledger.entries:
        if int(e.get("round", 0)) <= upto_round:
            value = finite(e.get("epsilon")) or 0.0
    return value

