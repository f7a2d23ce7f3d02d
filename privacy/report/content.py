"""The report as data: every number the markdown and HTML show, computed once, in one JSON-able dict.

Renderers only format what is here, so report.json is the complete record (including the full
per-client per-round epsilon table that the documents abbreviate for large federations).
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime
from typing import Any

from dpfl.privacy.accountants import ACCOUNTANT_REGISTRY, DEFAULT_ACCOUNTANT
from dpfl.privacy.policy import NOT_PRIVATE_STAMP, effective_budget, is_not_private
from dpfl.privacy.report import reconcile as rc
from dpfl.privacy.report.accounting import agrees, expected_from_ledger, group_ledgers, recompute, reproduction
from dpfl.privacy.report.audit import AuditFileError, audit_summary, read_audit
from dpfl.privacy.report.jsonsafe import finite
from dpfl.privacy.report.user_level import build_user_level
from dpfl.privacy.rundata import RunData, natural_key

SCHEMA = "dpfl-report/1"
VERDICT_FAILED = "ACCOUNTING CHECK FAILED"
TABLE_ALL_CLIENTS_MAX = 10  # more clients: the documents show the top 10 by epsilon plus summary rows
PLOT_ALL_CLIENTS_MAX = 20  # more clients: the epsilon plot shows a min/median/max band

ASSUMPTION = ("The federation's epsilon is the maximum over clients: every record lives at exactly one "
              "client under a fixed partition, each client's releases only touch its own records, and all "
              "clients share one delta, so a record's guarantee is its own client's (epsilon, delta).")
STATS = (("min", min), ("median", statistics.median), ("mean", statistics.fmean), ("max", max))
PARAMETER_KEYS = (
    "dataset", "model", "partition", "dirichlet-alpha", "num-clients", "num-server-rounds", "fraction-train",
    "min-train-clients", "local-epochs", "batch-size", "optimizer", "learning-rate", "dp", "noise-multiplier",
    "max-grad-norm", "target-epsilon", "epsilon-budget", "max-participations", "delta", "accountant", "seed",
    "deterministic-noise", "private-metrics", "fraction-evaluate", "aggregation-weights", "neighbouring",
)


def _flag(cfg: dict[str, Any], key: str) -> bool:
    value = cfg.get(key, False)
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


def _delta_explanation(cfg: dict[str, Any], delta: float | None) -> tuple[str, str]:
    configured = finite(cfg.get("delta")) or 0.0
    if delta is None:
        return "unknown", "delta is not recorded in this run directory"
    if configured > 0:
        return "configured", (f"delta = {delta:g} was set in the configuration (delta = {configured:g}); "
                              "it should be well below 1 / (number of records) so that no record is likely "
                              "to be exposed.")
    # delta = 1 / (10 N) rounded down to two significant digits, so N lies in a narrow range
    step = 10.0 ** (math.floor(math.log10(delta)) - 1)
    n_max, n_min = math.floor(1 / (10 * delta)), math.floor(1 / (10 * (delta + step))) + 1
    return "auto", (f"delta = {delta:g} was chosen automatically (delta = 0 in the configuration): "
                    "1 / (10 x the total number of records the clients declared), rounded down to two "
                    f"significant digits, so the clients declared between {n_min:,} and {n_max:,} records; "
                    "far below 1 / (number of records), as it must be.")


def _mechanism(run: RunData, delta: float | None, accountant: str, not_private: bool, relation: str,
               ) -> dict[str, Any]:
    cfg = run.config
    counts = rc.declared_records(run)
    dp = _flag(cfg, "dp") if "dp" in cfg else True
    source, delta_text = _delta_explanation(cfg, delta)
    excludes = ["who took part in which round, timing, and the number of records each client declares "
                "(used for the sample rate and the aggregation weights)"]
    if relation == rc.REPLACE_ONE:
        excludes = ["who took part in which round, timing, and each client's true number of records (public under "
                    "replace-one: the sample rate and the aggregation weights reveal it)"]
    if _flag(cfg, "private-metrics"):
        excludes.insert(0, "the loss/accuracy values clients computed on their private data and sent "
                           "without noise (private-metrics = true)")
    if (finite(cfg.get("fraction-evaluate")) or 0.0) > 0:
        excludes.insert(0, "client-side evaluation metrics computed on private validation data "
                           "(fraction-evaluate > 0)")
    sigma, clip = finite(cfg.get("noise-multiplier")), finite(cfg.get("max-grad-norm"))
    clip_text = f" = {clip:g}" if clip is not None else ""
    target = finite(cfg.get("target-epsilon")) or 0.0
    if target > 0:
        sigma_text = f", calibrated so that each client ends at epsilon <= {target:g}"
    else:
        sigma_text = f", configured {sigma:g}" if sigma else ""
    count = "the true record count n" if relation == rc.REPLACE_ONE else "the declared record count N"
    how = ("Each client trains locally with DP-SGD: every step draws a batch by Poisson sampling (each "
           f"record independently with probability q = batch size / {count}), clips each "
           f"record's gradient to L2 norm C{clip_text}, sums them and adds Gaussian noise of standard "
           f"deviation sigma x C (sigma = noise multiplier{sigma_text}; the ledgers hold the sigma actually "
           "used) before the model update leaves the client. The server only sees noised updates, so the "
           "global model and the server-side test metrics (public test data) are covered by the same "
           "guarantee. " + _randomness_text(cfg))
    return {
        "dp": dp,
        "not_private": not_private,
        "protected": ("Every individual training record held by each client (sample-level differential "
                      "privacy). Whether or not any one record was used, the distribution of everything the "
                      "client sent changes by at most a factor e^epsilon, except with probability delta."),
        "unit": rc.unit_text(relation),
        "neighbouring": relation,
        "neighbouring_text": rc.relation_words(relation, counts),
        "declared_records": counts,
        "how": how if dp else (
            "no record-level DP-SGD (dp = false): clients trained with plain SGD; the run's guarantee is user-level "
            "(section 7)" if cfg.get("privacy-unit") == "client"
            else "dp = false: updates were sent without clipping or noise. No epsilon applies."),
        "composition": ("A client's epsilon composes over every DP-SGD step of every round it trained in, "
                        "never reset between rounds. Each release is written to the client's ledger before "
                        "the update it pays for leaves, and epsilon is always recomputed from the ledger by "
                        "the accountant."),
        "delta": delta,
        "delta_source": source,
        "delta_explanation": delta_text,
        "accountant": accountant,
        "accountant_description": (ACCOUNTANT_REGISTRY[accountant].description if accountant in ACCOUNTANT_REGISTRY
                                   else "unknown accountant"),
        "assumption": ASSUMPTION,
        "excludes": excludes,
        "privacy_statement": list(cfg.get("privacy-statement") or (run.summary or {}).get("privacy_statement")
                                  or []),
        "parameters": {k: cfg[k] for k in PARAMETER_KEYS if k in cfg},
        "resolved": run.resolved,
    }


def _randomness_text(cfg: dict[str, Any]) -> str:
    """Which generator drew the noise and the Poisson batches (docs/noise.md): the report names it because
    the guarantee assumes nobody can predict either."""
    if _flag(cfg, "deterministic-noise"):
        return ("Noise and sampling came from torch's Mersenne Twister seeded from the run's seed "
                "(deterministic-noise = true): predictable, NOT PRIVATE.")
    return ("Noise and sampling came from AES-256-CTR keyed with os.urandom, a fresh key per client, round "
            "and source (privacy/secure_random.py); floating-point and timing attacks on the noise are not "
            "defended (docs/noise.md).")


def _banner(run: RunData, not_private: bool) -> dict[str, Any] | None:
    cfg, lines = run.config, []
    if not_private:
        stamped = rc.stamps_found(run)
        if "dp" in cfg and not _flag(cfg, "dp"):
            lines.append("dp = false: no clipping, no noise. This run has NO differential-privacy guarantee; "
                         "any epsilon shown is meaningless.")
        elif _flag(cfg, "deterministic-noise"):
            lines.append("deterministic-noise = true: the DP noise was derived from the seed, so anyone who "
                         "knows the seed can remove it. The epsilons below describe the mechanism with real "
                         "randomness, NOT this run. For tests only.")
        elif stamped:
            lines.append(f"{', '.join(stamped)} carry the {NOT_PRIVATE_STAMP} stamp (config.json does not say "
                         "why): treat this run as not private.")
        else:
            lines.append("summary.json marks this run as not private.")
    if _flag(cfg, "private-metrics"):
        lines.append("private-metrics = true: clients also sent loss/accuracy computed on their private "
                     "data WITHOUT noise. The guarantee excludes those values; they leak information about "
                     "records.")
    if (finite(cfg.get("fraction-evaluate")) or 0.0) > 0:
        lines.append("fraction-evaluate > 0: client-side evaluation on private validation data was sent "
                     "without noise; the guarantee excludes it.")
    if not lines:
        return None
    title = "NOT PRIVATE" if not_private else "NOT PRIVATE: the guarantee excludes values this run released"
    return {"title": title, "not_private": not_private, "lines": lines}


def _epsilon_table(run: RunData, dp: bool) -> dict[str, Any]:
    rounds = [int(r["round"]) for r in run.metrics]
    seen: set[str] = set(run.ledgers)
    for row in run.metrics:
        seen.update((row.get("epsilon") or {}).keys())
    clients = sorted(seen, key=natural_key) if dp else []
    per_client = {c: [finite((row.get("epsilon") or {}).get(c)) for row in run.metrics] for c in clients}
    final = {c: next((v for v in reversed(vals) if v is not None), 0.0) for c, vals in per_client.items()}
    stats: dict[str, list[float | None]] = {"min": [], "median": [], "mean": [], "max": []}
    for i in range(len(rounds)):
        col = [per_client[c][i] or 0.0 for c in clients]  # not yet sampled: epsilon 0
        for name, fn in STATS:
            stats[name].append(float(fn(col)) if col else None)
    top = sorted(clients, key=lambda c: (-final[c], natural_key(c)))[:TABLE_ALL_CLIENTS_MAX]
    many = len(clients) > TABLE_ALL_CLIENTS_MAX
    return {
        "rounds": rounds, "clients": clients, "per_client": per_client, "final": final, "stats": stats,
        "table_mode": "top-10" if many else "all",
        "table_clients": sorted(top, key=natural_key) if not many else top,
        "plot_mode": "band" if len(clients) > PLOT_ALL_CLIENTS_MAX else "lines",
        "note": ("epsilon after each round as the server recorded it in metrics.jsonl (cumulative over every "
                 "round the client trained in); empty: the client had not been sampled yet (epsilon 0)."),
    }


def _events(run: RunData) -> list[dict[str, Any]]:
    events = [{"round": int(row["round"]), "client": str(e.get("client", "?")),
               "event": str(e.get("event", "")), "reason": str(e.get("reason", ""))}
              for row in run.metrics for e in row.get("events") or []]
    seen = {(e["round"], e["client"], e["event"].split()[0] if e["event"] else "") for e in events}
    for cid, info in ((run.summary or {}).get("clients") or {}).items():
        for e in (info.get("events") if isinstance(info, dict) else None) or []:
            if not isinstance(e, dict):
                continue
            name = str(e.get("event", ""))
            key = (int(finite(e.get("round")) or 0), str(cid), name.split()[0] if name else "")
            if key not in seen:
                seen.add(key)
                events.append({"round": key[0], "client": str(cid), "event": name,
                               "reason": str(e.get("reason", ""))})
    return sorted(events, key=lambda e: (e["round"], natural_key(e["client"])))


def _clients(run: RunData, eps_final: dict[str, float], dp: bool, budget: float) -> list[dict[str, Any]]:
    summary = run.summary or {}
    info = summary.get("clients") or {}
    per_client = summary.get("epsilon_per_client") or {}
    ids = sorted(set(info) | set(per_client) | set(run.ledgers) | set(eps_final), key=natural_key)
    prior, counts = rc.prior_runs(run), rc.declared_records(run)
    rows = []
    for cid in ids:
        c = info.get(cid) if isinstance(info.get(cid), dict) else {}
        ledger = run.ledgers.get(cid)
        eps = None
        if dp:
            last = ledger.entries[-1].get("epsilon") if ledger is not None and len(ledger) else None
            for candidate in (c.get("epsilon"), per_client.get(cid), last, eps_final.get(cid)):
                eps = finite(candidate)
                if eps is not None:
                    break
        participations = c.get("participations", len(ledger) if ledger is not None else None)
        remaining = budget - eps if budget > 0 and eps is not None else None
        rows.append({"client": cid, "status": c.get("status", "unknown (no summary.json)"),
                     "reason": c.get("reason", ""), "participations": participations, "epsilon": eps,
                     "budget": budget if budget > 0 else None, "remaining": remaining,
                     "used_fraction": eps / budget if remaining is not None else None,
                     "rounds_trained": [e.get("round") for e in ledger.entries] if ledger else [],
                     "declared_records": counts.get(cid),
                     **(prior.get(cid) or {"prior_epsilon": None, "prior_runs": [], "other_runs_in_ledger": [],
                                           "data_source": None})})
    return rows


def _federation(run: RunData, clients: list[dict[str, Any]], delta: float | None, accountant: str, dp: bool,
                budget: float) -> dict[str, Any]:
    summary, cfg = run.summary or {}, run.config
    eps = finite(summary.get("epsilon_max")) if run.summary is not None else None
    if eps is None and dp and run.metrics:
        eps = finite(run.metrics[-1].get("epsilon_max"))
    per = [(c["epsilon"], c["client"]) for c in clients if c["epsilon"] is not None]
    top = max((e for e, _ in per), default=None)
    total = int(summary.get("num_server_rounds") or cfg.get("num-server-rounds") or 0)
    done = int(summary.get("rounds_completed", len(run.metrics)))
    reason = str(summary.get("stop_reason") or "")
    if run.summary is None:
        reason = reason or "unknown: summary.json is missing (the run crashed, was killed or still runs)"
    early = bool(reason) or (total > 0 and done < total)
    eb, te = finite(cfg.get("epsilon-budget")) or 0.0, finite(cfg.get("target-epsilon")) or 0.0
    source = ("min(epsilon-budget, target-epsilon)" if eb and te else "epsilon-budget" if eb
              else "target-epsilon" if te else None)
    return {
        "epsilon": eps if dp else None, "delta": delta, "accountant": accountant,
        "argmax_clients": [c for e, c in per if top is not None and e == top],
        "budget": budget if budget > 0 else None, "budget_source": source,
        "max_participations": run.resolved.get("max-participations", cfg.get("max-participations")),
        "rounds_completed": done, "num_server_rounds": total, "stopped_early": early, "stop_reason": reason,
        "stop_text": (f"no round ran (0 of {total}): {reason or 'no reason recorded'}" if done == 0 and early
                      else f"stopped early after round {done} of {total}: {reason or 'no reason recorded'}"
                      if early else f"ran all {total} rounds"),
        "no_round_ran": done == 0,
        "finished": run.summary is not None, "wall_seconds": finite(summary.get("wall_seconds")),
    }


def _training(run: RunData) -> dict[str, Any]:
    summary = run.summary or {}
    rows = [{"round": int(r["round"]), "accuracy": finite(r.get("accuracy")), "loss": finite(r.get("loss")),
             "epsilon_max": finite(r.get("epsilon_max")), "participants": r.get("participants"),
             "seconds": finite(r.get("seconds")), "events": len(r.get("events") or [])} for r in run.metrics]
    last = rows[-1] if rows else {}
    acc = finite(summary.get("final_accuracy")) if "final_accuracy" in summary else last.get("accuracy")
    loss = finite(summary.get("final_loss")) if "final_loss" in summary else last.get("loss")
    return {"rounds": rows, "final_accuracy": acc, "final_loss": loss,
            "note": "accuracy and loss of the global model on the server's test set after each round"}


def _checks(run: RunData, eps: dict[str, Any], fed: dict[str, Any], clients: list[dict[str, Any]],
            delta: float | None, accountant: str, dp: bool, relation: str, reconciliation: dict[str, Any],
            ) -> list[dict[str, Any]]:
    """Cross-checks between the run's files: each failure is a bug in the run, not in the data."""
    if not dp:
        return []
    checks = []
    bad = []
    for i, r in enumerate(eps["rounds"]):
        for cid, values in eps["per_client"].items():
            ledger = run.ledgers.get(cid)
            v = values[i]
            if v is None or ledger is None:
                continue
            expected = expected_from_ledger(ledger, r)
            if not agrees(v, expected) and not (v == 0 and expected == 0):
                bad.append(f"round {r}, {cid}: metrics.jsonl says {v}, the ledger says {expected}")
    checks.append({"name": "metrics.jsonl epsilon per client per round equals the ledgers", "ok": not bad,
                   "details": bad})
    bad = []
    for row in run.metrics:
        values = [finite(v) for v in (row.get("epsilon") or {}).values()]
        m = finite(row.get("epsilon_max"))
        top = max((v for v in values if v is not None), default=0.0)
        if m is not None and not agrees(m, top) and not (m == 0 and top == 0):
            bad.append(f"round {row['round']}: epsilon_max {m} but the largest client epsilon is {top}")
    if fed["epsilon"] is not None:
        top = max((c["epsilon"] for c in clients if c["epsilon"] is not None), default=0.0)
        if not agrees(fed["epsilon"], top) and not (fed["epsilon"] == 0 and top == 0):
            bad.append(f"federation epsilon {fed['epsilon']} but the largest client epsilon is {top}")
    checks.append({"name": "the federation epsilon is the max over clients (every round and at the end)",
                   "ok": not bad, "details": bad})
    bad = []
    per_client = (run.summary or {}).get("epsilon_per_client") or {}
    for cid, v in per_client.items():
        ledger = run.ledgers.get(cid)
        expected = finite(ledger.entries[-1].get("epsilon")) if ledger is not None and len(ledger) else 0.0
        if not agrees(finite(v), expected) and not (finite(v) == 0 and expected == 0):
            bad.append(f"{cid}: summary.json says {v}, the ledger says {expected}")
    checks.append({"name": "summary.json epsilon per client equals the ledgers", "ok": not bad,
                   "details": bad})
    bad = []
    for cid, ledger in run.ledgers.items():
        for e in ledger.entries:
            if delta is not None and not agrees(finite(e.get("delta")), delta):
                bad.append(f"{cid} round {e.get('round')}: delta {e.get('delta')} but the run's delta is "
                           f"{delta}")
            if e.get("accountant", accountant) != accountant:
                bad.append(f"{cid} round {e.get('round')}: accountant {e.get('accountant')} but the run's is "
                           f"{accountant}")
    checks.append({"name": "every ledger entry uses the run's delta and accountant", "ok": not bad,
                   "details": bad})
    checks.append(rc.relation_check(run, relation))
    extra = (rc.reconcile_check(reconciliation), rc.stamp_check(run, _flag(run.config, "deterministic-noise")))
    return checks + [c for c in extra if c is not None]


def _verdict(accountants: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's one answer: every epsilon re-derived and every cross-check passed, or what failed."""
    failures = list(accountants["mismatches"])
    failures += [f"{c['name']}: " + "; ".join(c["details"][:5]) + (" ..." if len(c["details"]) > 5 else "")
                 for c in checks if not c["ok"]]
    return {"ok": not failures, "title": None if not failures else VERDICT_FAILED, "failures": failures}


def build_report(run: RunData) -> dict[str, Any]:
    """The complete report for one run directory, as a JSON-able dict."""
    cfg, summary = run.config, run.summary or {}
    dp = _flag(cfg, "dp") if "dp" in cfg else True
    # Conservative: not private if the summary says so or the config does (either may be missing).
    user_level = build_user_level(run)  # None unless privacy-unit = client
    try:
        audit = audit_summary(read_audit(run.path))  # None unless `dpfl audit` made this run
    except AuditFileError as exc:
        audit = None
        run.warnings.append(str(exc))
    not_private = (bool(summary.get("not_private"))
                   or is_not_private(dp or user_level is not None, _flag(cfg, "deterministic-noise"))
                   or bool(rc.stamps_found(run)))
    delta = finite(run.resolved.get("delta")) or finite(summary.get("delta"))
    if delta is None and run.metrics:
        delta = finite(run.metrics[-1].get("delta"))
    accountant = str(summary.get("accountant") or cfg.get("accountant") or DEFAULT_ACCOUNTANT)
    relation = rc.run_relation(run)
    budget = effective_budget(finite(cfg.get("epsilon-budget")) or 0.0,
                              finite(cfg.get("target-epsilon")) or 0.0)

    eps = _epsilon_table(run, dp)
    clients = _clients(run, eps["final"], dp, budget)
    fed = _federation(run, clients, delta, accountant, dp, budget)
    groups = group_ledgers(run.ledgers, delta or 0.0, accountant) if dp else []
    accountants = recompute(groups, run.ledgers)
    reconciliation = rc.reconcile(run, delta, accountant) if dp else {"rows": [], "no_ledger": [], "note": ""}
    checks = _checks(run, eps, fed, clients, delta, accountant, dp, relation, reconciliation)
    if user_level is not None:
        checks.append(user_level["check"])
    verdict = _verdict(accountants, checks)
    return {
        "schema": SCHEMA,
        **({"privacy": NOT_PRIVATE_STAMP} if not_private else {}),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {"directory": str(run.path), "id": run.path.name, "dataset": cfg.get("dataset"),
                "model": cfg.get("model"), "partition": cfg.get("partition"),
                "num_clients": cfg.get("num-clients"), "inputs": run.config.get("inputs") or {},
                "environment": run.config.get("environment") or {},
                "num_server_rounds": fed["num_server_rounds"], "rounds_completed": fed["rounds_completed"]},
        "warnings": list(run.warnings),
        "banner": _banner(run, not_private),
        "mechanism": _mechanism(run, delta, accountant, not_private, relation),
        "user_level": user_level,
        "audit": audit,
        "epsilon": eps,
        "federation": fed,
        "clients": clients,
        "events": _events(run),
        "training": _training(run),
        "accountants": accountants,
        "reconciliation": reconciliation,
        "checks": checks,
        "accounting_ok": verdict["ok"],
        "verdict": verdict,
        "reproduction": reproduction(groups, {d["id"]: d["recomputed"] for d in accountants["distinct"]}),
        "plots": {},
    }
