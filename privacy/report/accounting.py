"""Re-deriving every epsilon from the ledgers, and how to reproduce it outside dpfl.

The run's numbers are only as good as its accounting, so the report recomputes each client's
final epsilon from its ledger with every accountant and flags any disagreement with what the run
wrote. IID clients usually hold identical ledgers: each distinct ledger is computed once. Each ledger
is recomputed under its own neighbouring relation (add/remove or replace-one, from its entries); a ledger
whose entries mix relations cannot be composed and is refused.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpfl.privacy import accountants as _accountants
from dpfl.privacy.accountants import ACCOUNTANT_REGISTRY, ACCOUNTANTS, epsilon, epsilon_all, epsilon_per_release
from dpfl.privacy.ledger import Ledger
from dpfl.privacy.releases import DpSgdRelease, Release
from dpfl.privacy.report.jsonsafe import finite
from dpfl.privacy.rundata import natural_key

REL_TOL = 1e-6  # a recomputed epsilon further than this (relative) from the ledger's is a bug
ADD_REMOVE, REPLACE_ONE = "add-remove", "replace-one"
RDP_REFUSES_REPLACE_ONE = ("dp-accounting's RDP accountant refuses replace-one for Poisson sampling (and Opacus' "
                           "PRV accountant is add/remove only), so replace-one is accounted with PLD alone")


NO_RELATION_KEYWORD = ("the installed dpfl accountants take no neighbouring relation (add/remove only), so "
                       "{relation} cannot be recomputed")


class RelationNotSupported(ValueError):
    """The installed accountants cannot compute epsilon under this neighbouring relation."""


# --- epsilon under a neighbouring relation ---------------------------------------------------------------
def entry_relation(entry: Mapping[str, Any]) -> str:
    """A ledger entry's neighbouring relation; entries without one (older runs) are add/remove."""
    return str(entry.get("neighbouring") or ADD_REMOVE)


def ledger_relations(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """{relation: rounds of the entries under it}, in order of first appearance (one key: not mixed)."""
    out: dict[str, list[Any]] = {}
    for e in entries:
        out.setdefault(entry_relation(e), []).append(e.get("round"))
    return out


def _accepts_relation(fn: Callable[..., Any]) -> bool:
    try:
        return "neighbouring" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _unsupported_errors() -> tuple[type[Exception], ...]:
    specific = getattr(_accountants, "UnsupportedRelationError", None)
    return (specific,) if isinstance(specific, type) and issubclass(specific, Exception) else (ValueError,)


def _call(fn: Callable[..., Any], relation: str, *args: Any) -> Any:
    """``fn(*args, neighbouring=relation)``; an accountant without the keyword is add/remove only."""
    if _accepts_relation(fn):
        return fn(*args, neighbouring=relation)
    if relation != ADD_REMOVE:
        raise RelationNotSupported(NO_RELATION_KEYWORD.format(relation=relation))
    return fn(*args)


def eps_of(releases: Sequence[Release], delta: float, accountant: str, relation: str = ADD_REMOVE) -> float:
    """epsilon of ``releases`` under ``relation`` (RelationNotSupported / ValueError when it cannot be had)."""
    return float(_call(epsilon, relation, releases, delta, accountant)) if releases else 0.0


def eps_prefixes(releases: Sequence[Release], delta: float, accountant: str,
                 relation: str = ADD_REMOVE) -> list[float]:
    return [float(v) for v in _call(epsilon_per_release, relation, releases, delta, accountant)]


def eps_all(releases: Sequence[Release], delta: float, relation: str = ADD_REMOVE
            ) -> tuple[dict[str, float], dict[str, str]]:
    """(every accountant's epsilon that is defined under ``relation``, {accountant left out: why})."""
    if relation == ADD_REMOVE and not _accepts_relation(epsilon_all):
        return dict(epsilon_all(releases, delta)), {}
    if not (_accepts_relation(epsilon_all) or _accepts_relation(epsilon)):
        return {}, {name: NO_RELATION_KEYWORD.format(relation=relation) for name in ACCOUNTANTS}
    errors = (*_unsupported_errors(), RelationNotSupported)
    try:
        values = dict(_call(epsilon_all, relation, releases, delta))
    except errors:
        values = {}
        for name in ACCOUNTANTS:
            try:
                values[name] = eps_of(releases, delta, name, relation)
            except errors:
                continue
    why = RDP_REFUSES_REPLACE_ONE if relation == REPLACE_ONE else f"not defined under {relation}"
    return values, {name: why for name in ACCOUNTANTS if name not in values}


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
    neighbouring: str = ADD_REMOVE

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


def mixed_relations(ledgers: Mapping[str, Ledger]) -> dict[str, str]:
    """{client: why} for every ledger whose entries mix neighbouring relations (they cannot be composed)."""
    out = {}
    for cid in sorted(ledgers, key=natural_key):
        relations = ledger_relations(ledgers[cid].entries)
        if len(relations) > 1:
            parts = "; ".join(f"{rel} in round(s) {', '.join(str(r) for r in rounds)}"
                              for rel, rounds in relations.items())
            out[cid] = (f"{cid}: its ledger mixes neighbouring relations ({parts}): epsilons under different "
                        "relations do not compose, so it is NOT re-checked")
    return out


def group_ledgers(ledgers: Mapping[str, Ledger], delta: float, accountant: str) -> list[DistinctLedger]:
    """Group clients by what their epsilon depends on; clients with empty ledgers, or ledgers that mix
    neighbouring relations (see ``mixed_relations``), are left out."""
    groups: dict[tuple[Any, ...], DistinctLedger] = {}
    mixed = mixed_relations(ledgers)
    for cid in sorted(ledgers, key=natural_key):
        ledger = ledgers[cid]
        if not len(ledger) or cid in mixed:
            continue
        releases = ledger.releases
        led_delta, led_acc = _ledger_delta_accountant(ledger, delta, accountant)
        relation = entry_relation(ledger.entries[-1])
        key = (tuple(r.key for r in releases), led_delta, led_acc, relation)
        if key not in groups:
            groups[key] = DistinctLedger(f"L{len(groups) + 1}", releases, led_delta, led_acc, neighbouring=relation)
        groups[key].clients.append(cid)
    return list(groups.values())


def recompute(groups: Sequence[DistinctLedger], ledgers: Mapping[str, Ledger]) -> dict[str, Any]:
    """Every accountant on every distinct ledger (under its own neighbouring relation), and each client's
    comparison with its ledger's values; ledgers that mix relations are mismatches."""
    distinct, clients = [], []
    mismatches = list(mixed_relations(ledgers).values())
    for g in groups:
        known = ACCOUNTANT_REGISTRY.get(g.accountant)
        values: dict[str, float] = {}
        left_out: dict[str, str] = {}
        prefixes = None
        if known is None:
            mismatches.append(f"ledger {g.id}: unknown accountant {g.accountant!r}; nothing re-checked")
        else:
            try:
                values, left_out = eps_all(g.releases, g.delta, g.neighbouring)
                if g.accountant not in values:
                    raise RelationNotSupported(f"accountant {g.accountant}: "
                                               f"{left_out.get(g.accountant, 'not defined under this relation')}")
                if known.exact_prefixes:
                    prefixes = eps_prefixes(g.releases, g.delta, g.accountant, g.neighbouring)
            except ValueError as exc:  # RelationNotSupported, or the accountants' own refusal
                mismatches.append(f"ledger {g.id} ({', '.join(g.clients)}, {g.neighbouring}): {exc}")
        distinct.append({"id": g.id, "clients": g.clients, "releases": len(g.releases), "delta": g.delta,
                         "accountant": g.accountant, "neighbouring": g.neighbouring, "recomputed": values,
                         "left_out": left_out, "recomputed_per_release": prefixes})
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
                   "neighbouring": g.neighbouring, "reported": reported, "recomputed": values,
                   "relative_difference": relative_difference(mine, reported),
                   "ok": ok and not bad_entries, "entry_mismatches": bad_entries}
            clients.append(row)
            if not ok and mine is not None:
                mismatches.append(f"{cid}: ledger says epsilon {reported} but {g.accountant} recomputes "
                                  f"{mine} (relative difference {row['relative_difference']})")
            for bad in bad_entries:
                mismatches.append(f"{cid} round {bad['round']}: ledger says epsilon {bad['ledger']} but "
                                  f"{g.accountant} recomputes {bad['recomputed']} for that prefix")
    for cid, why in mixed_relations(ledgers).items():
        entries = ledgers[cid].entries
        clients.append({"client": cid, "ledger": "mixed", "releases": len(entries),
                        "rounds": [e.get("round") for e in entries], "accountant": None, "delta": None,
                        "neighbouring": "mixed", "reported": finite(entries[-1].get("epsilon")), "recomputed": {},
                        "relative_difference": None, "ok": False, "entry_mismatches": [], "why": why})
    return {"tolerance": REL_TOL, "distinct": distinct, "clients": clients, "mismatches": mismatches,
            "ok": not mismatches,
            "prefix_check": ("every ledger entry re-checked"
                             if all(d["recomputed_per_release"] is not None for d in distinct)
                             else "final entries re-checked (under prv every prefix would cost seconds)")}


def pld_interval(releases: Sequence[Release], relation: str = ADD_REMOVE) -> float | None:
    """The PLD discretisation interval dpfl uses for this ledger (None if this dpfl does not say)."""
    try:
        from dpfl.privacy import _pld

        runs = _pld.runs_of([(r.noise_multiplier, r.sample_rate, r.steps) for r in releases])
        if relation == ADD_REMOVE:
            return float(_pld.interval_for(runs))
        params = inspect.signature(_pld.interval_for).parameters
        name = next((n for n in ("relation", "neighbouring") if n in params), None)
        return float(_pld.interval_for(runs, **{name: relation})) if name else None
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


_RELATION_SOURCE = {ADD_REMOVE: "dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE",
                    REPLACE_ONE: "dp_accounting.NeighboringRelation.REPLACE_ONE"}


def _python_snippet(g: DistinctLedger, h: float | None) -> str:
    schedule = ",\n    ".join(f"({sigma!r}, {q!r}, {steps}, {count})" for _, sigma, q, steps, count in g.runs)
    add_remove = g.neighbouring == ADD_REMOVE
    relation = _RELATION_SOURCE.get(g.neighbouring, f"None  # unknown relation {g.neighbouring!r}")
    imports = ("\nfrom opacus.accountants import PRVAccountant\nfrom opacus.accountants.analysis import rdp as "
               "opacus_rdp\n") if add_remove else ""
    tail = (_RDP_PRV_SNIPPET.replace("ORDERS_PLACEHOLDER", _rdp_orders_text()) if add_remove
            else f"# No RDP or PRV lines: {RDP_REFUSES_REPLACE_ONE}.\n")
    libraries = "dp-accounting, Opacus" if add_remove else "dp-accounting"
    return f"""# Ledger {g.id} ({", ".join(g.clients)}): its epsilon without dpfl ({libraries}).
# Neighbouring relation: {g.neighbouring}.
import math

import dp_accounting
{imports}
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
# pessimistic PLD (an upper bound) under the ledger's relation, with the interval dpfl chose for it
pld = dp_accounting.pld.PLDAccountant(
    neighboring_relation={relation}, value_discretization_interval=interval)
print("pld", pld.compose(event).get_epsilon(delta))

{tail}"""


_RDP_PRV_SNIPPET = """orders = ORDERS_PLACEHOLDER
rdp_dp = dp_accounting.rdp.RdpAccountant(orders).compose(event).get_epsilon(delta)
rdp_total = sum(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
                for sigma, q, steps in runs)
rdp_op = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp_total, delta=delta)[0]
print("rdp", max(rdp_dp, rdp_op))  # dpfl reports the larger of the two RDP conversions

totals = {}  # composition commutes: PRV takes all steps of one (sigma, q) together
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
        h = pld_interval(g.releases, g.neighbouring)
        mechanisms = {m for m, *_ in runs}
        one_mechanism = len({(sigma, q) for _, sigma, q, _, _ in runs}) == 1 and len(mechanisms) == 1
        entry: dict[str, Any] = {
            "ledger": g.id, "clients": g.clients, "delta": g.delta, "accountant": g.accountant,
            "neighbouring": g.neighbouring, "rounds": len(g.releases), "uniform": len(runs) == 1,
            "pld_discretization": h,
            "schedule": [{"mechanism": m, "noise_multiplier": s, "sample_rate": q, "steps_per_round": n,
                          "rounds": c} for m, s, q, n, c in runs],
            "command": None, "command_output": None, "command_matches": None, "python": _python_snippet(g, h),
        }
        if one_mechanism:
            _, sigma, q, _, _ = runs[0]
            total = sum(n * c for *_, n, c in runs)
            entry.update(noise_multiplier=sigma, sample_rate=q, total_steps=total,
                         steps_per_round=runs[0][3] if len(runs) == 1 else None)
            relation = "" if g.neighbouring == ADD_REMOVE else f" --neighbouring {g.neighbouring}"
            entry["command"] = (f"dpfl privacy epsilon --sample-rate {q!r} --noise-multiplier {sigma!r} "
                                f"--steps {total} --delta {g.delta!r} --accountant all{relation}")
            try:
                single, _ = eps_all([DpSgdRelease(sigma, q, total)], g.delta, g.neighbouring)
            except ValueError:  # the installed accountants cannot account this relation
                single = {}
            entry["command_output"] = single
            ledger = recomputed.get(g.id) or {}
            entry["command_matches"] = bool(ledger) and all(agrees(single.get(k), v) for k, v in ledger.items())
        out.append(entry)
    return out


def expected_from_ledger(ledger: Ledger, upto_round: int) -> float:
    """The ledger's cumulative epsilon after the last release at or before ``upto_round`` (0.0 if none)."""
    value = 0.0
    for e in ledger.entries:
        if int(e.get("round", 0)) <= upto_round:
            value = finite(e.get("epsilon")) or 0.0
    return value

