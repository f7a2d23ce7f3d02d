"""The report's cross-file facts beyond the server's ledgers: relation, earlier runs, the clients' own ledgers, stamps.

- the neighbouring relation of the run (config.json, summary.json, every ledger entry) and its words;
- the public record count each client's sample rate rests on (``declared_records`` of its entries);
- the earlier runs on the same records that a client's epsilon composes with (summary.json, its own ledger);
- reconciliation: the server charges each client at send time, so its ledger is never below the client's own
  ledger for this run; a server below a client means an update left the client that the server did not count;
- the NOT PRIVATE stamp of a deterministic-noise run on every ledger line and metrics row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from dpfl.privacy.ledger import Ledger
from dpfl.privacy.policy import NOT_PRIVATE_STAMP
from dpfl.privacy.releases import release_from_dict
from dpfl.privacy.report.accounting import (
    ADD_REMOVE,
    REL_TOL,
    REPLACE_ONE,
    agrees,
    entry_relation,
    eps_of,
    ledger_relations,
    relative_difference,
)
from dpfl.privacy.report.jsonsafe import finite
from dpfl.privacy.rundata import RunData, natural_key

MAX_LISTED = 5  # more clients with distinct record counts: the text gives the range


# --- the neighbouring relation ----------------------------------------------------------------------------
def run_relation(run: RunData) -> str:
    """summary.json's relation, else config.json's, else the one every server ledger entry shares, else add/remove."""
    for source in ((run.summary or {}).get("neighbouring"), run.config.get("neighbouring")):
        if isinstance(source, str) and source:
            return source
    seen = {entry_relation(e) for ledger in run.ledgers.values() for e in ledger.entries}
    return seen.pop() if len(seen) == 1 else ADD_REMOVE


def declared_records(run: RunData) -> dict[str, int]:
    """The public record count of each client (N under add/remove, the true n under replace-one)."""
    out: dict[str, int] = {}
    clients = (run.summary or {}).get("clients") or {}
    for cid, info in clients.items():
        terms = info.get("terms") if isinstance(info, dict) else None
        n = finite((terms or {}).get("declared_records")) if isinstance(terms, dict) else None
        if n is not None:
            out[str(cid)] = int(n)
    for source in (run.client_ledgers, run.ledgers):  # the server's ledger wins
        for cid, ledger in source.items():
            values = [finite(e.get("declared_records")) for e in ledger.entries]
            last = next((v for v in reversed(values) if v is not None), None)
            if last is not None:
                out[cid] = int(last)
    return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))


def _counts_text(symbol: str, counts: Mapping[str, int]) -> str:
    values = sorted(set(counts.values()))
    if len(values) == 1:
        return f"{symbol} = {values[0]:,} per client"
    if len(counts) <= MAX_LISTED:
        return f"{symbol} = " + ", ".join(f"{n:,} ({cid})" for cid, n in counts.items())
    return (f"{symbol} = {values[0]:,} to {values[-1]:,} per client (each client's in report.json, "
            "`mechanism.declared_records`)")


def relation_words(relation: str, counts: Mapping[str, int]) -> str:
    """The relation in words, with the public record counts the sample rates rest on."""
    if relation == REPLACE_ONE:
        known = f" ({_counts_text('n', counts)})" if counts else ""
        return f"replace one record, the true record count public{known}"
    if relation == ADD_REMOVE:
        if not counts:
            return ("add/remove one record, with a public declared count N per client (no ledger entry of this "
                    "run records N: nothing was released, or the run predates the record)")
        return f"add/remove one record, with the public declared count {_counts_text('N', counts)}"
    return f"unknown neighbouring relation {relation!r}: no guarantee can be stated for it"


def unit_text(relation: str) -> str:
    """What one unit of privacy is under ``relation`` (its words and counts: ``relation_words``)."""
    if relation == REPLACE_ONE:
        how = ("neighbouring datasets differ by replacing a single record at one client, and each client's true "
               "record count is public (its sample rate and aggregation weight reveal it)")
    else:
        how = ("neighbouring datasets differ by adding or removing a single record at one client; the sample rate "
               "q = batch size / N, the steps and the aggregation weight come from N, the count the owner declared "
               "independently of the records, so adding or removing a record changes nothing else")
    return (f"One record: {how}. A person with k records, or a client's whole dataset, is protected only "
            "at a weaker level (roughly k x epsilon); this is not user-level or client-level DP.")


def relation_check(run: RunData, relation: str) -> dict[str, Any]:
    bad = []
    summary_rel, config_rel = (run.summary or {}).get("neighbouring"), run.config.get("neighbouring")
    if summary_rel and config_rel and summary_rel != config_rel:
        bad.append(f"config.json says {config_rel} but summary.json says {summary_rel}")
    for cid, ledger in run.ledgers.items():
        for rel, rounds in ledger_relations(ledger.entries).items():
            if rel != relation:
                bad.append(f"{cid} round(s) {', '.join(str(r) for r in rounds)}: {rel} but the run's relation "
                           f"is {relation}")
    return {"name": "every ledger entry uses the run's neighbouring relation", "ok": not bad, "details": bad}


# --- this run and the earlier ones ---------------------------------------------------------------------------
def this_run_ids(run: RunData) -> set[str]:
    """The strings a ledger entry's ``run`` may hold for this run: the directory as given and resolved, and
    whatever the server wrote into its own ledger entries."""
    ids = {str(run.path), str(run.path.absolute())}
    with contextlib.suppress(OSError):
        ids.add(str(run.path.resolve()))
    ids.update(str(e["run"]) for ledger in run.ledgers.values() for e in ledger.entries if e.get("run"))
    return ids


def _of_this_run(entry: Mapping[str, Any], ids: set[str], cid: str) -> bool:
    run = entry.get("run")
    return (run is None or str(run) in ids) and str(entry.get("client", cid)) == cid


def prior_runs(run: RunData) -> dict[str, dict[str, Any]]:
    """Per client: the earlier runs on its records that its owner's budget counts, and their epsilon."""
    ids = this_run_ids(run)
    clients = (run.summary or {}).get("clients") or {}
    out: dict[str, dict[str, Any]] = {}
    for cid in sorted(set(clients) | set(run.client_ledgers), key=natural_key):
        info = clients.get(cid) if isinstance(clients.get(cid), dict) else {}
        listed = [str(r) for r in info.get("prior_runs") or [] if isinstance(r, str | int | float)]
        entries = run.client_ledgers[cid].entries if cid in run.client_ledgers else []
        others: list[str] = []
        for e in entries:
            if not _of_this_run(e, ids, cid) and str(e.get("run")) not in others:
                others.append(str(e.get("run")))
        sources = sorted({str(e["data_source"]) for e in entries if e.get("data_source")})
        out[cid] = {"prior_epsilon": finite(info.get("prior_epsilon")), "prior_runs": listed,
                    "other_runs_in_ledger": others, "data_source": ", ".join(sources) or None}
    return out


# --- reconciliation: the server's ledger against each client's own ---------------------------------------------
def _epsilon(entries: Sequence[Mapping[str, Any]], delta: float | None, accountant: str,
             ) -> tuple[float | None, str]:
    """(epsilon of these entries under their relation at the run's delta, why not when None)."""
    if not entries:
        return 0.0, ""
    relations = ledger_relations(entries)
    if len(relations) > 1:
        return None, "its entries mix neighbouring relations"
    use_delta = delta if delta is not None else finite(entries[-1].get("delta"))
    if use_delta is None:
        return None, "no delta known"
    try:
        return eps_of([release_from_dict(dict(e)) for e in entries], use_delta, accountant,
                      next(iter(relations))), ""
    except (ValueError, TypeError) as exc:
        return None, str(exc)


def reconcile(run: RunData, delta: float | None, accountant: str) -> dict[str, Any]:
    """Each client's epsilon in the server's ledger, in its own ledger (this run) and over all its runs."""
    ids = this_run_ids(run)
    rows = []
    for cid in sorted(run.client_ledgers, key=natural_key):
        own: Ledger = run.client_ledgers[cid]
        entries = own.entries
        mine = [e for e in entries if _of_this_run(e, ids, cid)]
        server = run.ledgers[cid].entries if cid in run.ledgers else []
        eps_server, why_server = _epsilon(server, delta, accountant)
        eps_run, why_run = _epsilon(mine, delta, accountant)
        eps_all, why_all = _epsilon(entries, delta, accountant)
        notes = [f"{side} ledger: {why}" for side, why in (("server", why_server), ("client", why_run)) if why]
        server_rel = {entry_relation(e) for e in server}
        mine_rel = {entry_relation(e) for e in mine}
        if server_rel and mine_rel and server_rel != mine_rel:
            notes.append(f"the server accounts {', '.join(sorted(server_rel))} but the client "
                         f"{', '.join(sorted(mine_rel))}")
        below = (eps_server is not None and eps_run is not None and eps_server < eps_run
                 and not agrees(eps_server, eps_run))
        rows.append({"client": cid, "ledger_path": str(run.client_ledger_paths.get(cid, own.path or "")),
                     "server_epsilon": eps_server, "server_releases": len(server),
                     "client_epsilon_run": eps_run, "client_releases_run": len(mine),
                     "client_epsilon_all": eps_all, "client_releases_all": len(entries),
                     "relative_difference": relative_difference(eps_server, eps_run),
                     "server_below_client": below, "ok": not below and not notes, "notes": notes})
    missing = sorted((c for c in run.client_ledger_paths if c not in run.client_ledgers), key=natural_key)
    return {"rows": rows, "no_ledger": missing, "tolerance": REL_TOL,
            "note": ("epsilon recomputed at the run's delta with the run's accountant, each ledger under its own "
                     "neighbouring relation; a client's ledger may hold earlier runs on the same records, and only "
                     "this run's entries (those naming this run, or no run) are compared with the server's.")}


def reconcile_check(table: Mapping[str, Any]) -> dict[str, Any] | None:
    """The check: None when no client ledger was found (nothing to compare)."""
    if not table["rows"]:
        return None
    bad = []
    for row in table["rows"]:
        if row["server_below_client"]:
            if row["server_releases"]:
                bad.append(f"{row['client']}: the server's ledger says epsilon {row['server_epsilon']:.6g} "
                           f"({row['server_releases']} releases) but the client's own ledger says "
                           f"{row['client_epsilon_run']:.6g} for this run ({row['client_releases_run']} releases)")
            else:
                bad.append(f"{row['client']}: the server has no ledger for it (epsilon 0) but the client's own "
                           f"ledger says {row['client_epsilon_run']:.6g} for this run "
                           f"({row['client_releases_run']} releases)")
        for note in row["notes"]:
            bad.append(f"{row['client']}: not compared: {note}")
    return {"name": "the server's ledger is never below a client's own ledger", "ok": not bad, "details": bad}


# --- the NOT PRIVATE stamp -------------------------------------------------------------------------------------
def _stamped(record: Mapping[str, Any]) -> bool:
    return record.get("privacy") == NOT_PRIVATE_STAMP


def stamps_found(run: RunData) -> list[str]:
    """Which of the run's files carry the NOT PRIVATE stamp (any line of them)."""
    where = [f"ledgers/{cid}.jsonl" for cid, led in run.ledgers.items() if any(_stamped(e) for e in led.entries)]
    if any(_stamped(row) for row in run.metrics):
        where.append("metrics.jsonl")
    if _stamped(run.summary or {}):
        where.append("summary.json")
    return where


def stamp_check(run: RunData, deterministic_noise: bool) -> dict[str, Any] | None:
    """deterministic-noise = true: every ledger line (server's, and the clients' own for this run) and
    every metrics row must say NOT PRIVATE; a stamp where the config has none is as inconsistent.
    None for a run with neither (the check would only say the words in a private run's report)."""
    found = stamps_found(run)
    if not deterministic_noise:
        if not found:
            return None
        return {"name": f"no file is stamped {NOT_PRIVATE_STAMP} unless the run config says so", "ok": False,
                "details": [f"config.json says deterministic-noise = false but {', '.join(found)} carry the "
                            f"{NOT_PRIVATE_STAMP} stamp"]}
    bad = []
    ids = this_run_ids(run)
    for label, ledgers, only_this_run in (("ledgers", run.ledgers, False),
                                          ("client ledger", run.client_ledgers, True)):
        for cid, ledger in ledgers.items():
            entries = [e for e in ledger.entries if not only_this_run or _of_this_run(e, ids, cid)]
            lacking = [e.get("round") for e in entries if not _stamped(e)]
            if lacking:
                bad.append(f"{label} {cid}: {len(lacking)} of {len(entries)} entries (rounds "
                           f"{', '.join(str(r) for r in lacking[:10])}) lack \"privacy\": \"{NOT_PRIVATE_STAMP}\"")
    lacking_rows = [row.get("round") for row in run.metrics if not _stamped(row)]
    if lacking_rows:
        bad.append(f"metrics.jsonl: {len(lacking_rows)} of {len(run.metrics)} rows lack the stamp")
    if run.summary is not None and not (_stamped(run.summary) or run.summary.get("not_private") is True):
        bad.append("summary.json does not mark the run as not private")
    return {"name": f"a deterministic-noise run is stamped {NOT_PRIVATE_STAMP} on every ledger line and metrics row",
            "ok": not bad, "details": bad}
