"""The report's reading order, as format-neutral blocks that the markdown and HTML renderers share.

One layout for both formats means the two documents cannot drift apart: they differ only in syntax.
Blocks: ("h3", text), ("p", text), ("banner", title, lines), ("note", text), ("list", items),
("kv", rows), ("table", headers, rows), ("img", plot name, alt text), ("code", language, text).
Text may contain `code spans` (backticks), which both renderers understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpfl.privacy.accountants import ACCOUNTANTS
from dpfl.privacy.report.accounting import interval_text
from dpfl.privacy.report.audit import audit_rows, glance_text

Block = tuple[Any, ...]
DASH = "—"
MANY_CLIENTS = 20  # more: the accountants table shows distinct ledgers instead of every client


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def f_eps(v: float | None) -> str:
    return DASH if v is None else f"{v:.4f}"


def f_num(v: float | None, digits: int = 4) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def f_g(v: Any) -> str:
    return DASH if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def f_rel(v: float | None) -> str:
    return DASH if v is None else f"{v:.1e}"


def limit_label(fed: dict[str, Any]) -> str:
    """"Target ε" when only calibration set the limit, "Budget" when epsilon-budget did: a calibration
    target is where σ was aimed, a budget is a hard refusal line; the report must not call one the other."""
    return "Target ε" if fed.get("budget_source") == "target-epsilon" else "Budget"


def release_text(r: dict[str, Any]) -> str:
    """σ, q and steps of one round's release (section 6's schedules), for "At a glance"."""
    schedules = [s for rep in r.get("reproduction") or [] for s in rep["schedule"]]
    if not schedules:
        return DASH
    sigmas = sorted({s["noise_multiplier"] for s in schedules})
    qs = sorted({s["sample_rate"] for s in schedules})
    steps = sorted({s["steps_per_round"] for s in schedules})

    def span(vals: list, fmt: str) -> str:
        return format(vals[0], fmt) if len(vals) == 1 else f"{format(vals[0], fmt)} to {format(vals[-1], fmt)}"

    return (f"σ = {span(sigmas, '.4g')}, q = {span(qs, '.4g')}, {span(steps, 'd')} DP-SGD steps per round "
            f"({r['federation']['accountant']} accountant)")


def _short_hash(entry: Any) -> str:
    if isinstance(entry, dict):
        digest = entry.get("sha256")
        return f"`{entry.get('path')}`" + (f" (sha256 {digest[:12]}...)" if digest else " (unreadable)")
    return str(entry)


def inputs_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """What was trained: the dataset (kind, paths, content hashes) and the model (spec, parameters)."""
    inputs = r["run"].get("inputs") or {}
    data, model = inputs.get("dataset") or {}, inputs.get("model") or {}
    rows = []
    if data:
        parts = [f"{data.get('kind')} ({data.get('source')})"]
        parts += [f"{what}: {_short_hash(data[what])}" for what in ("train", "test", "schema") if what in data]
        rows.append(("Data", "; ".join(parts)))
    if model:
        rows.append(("Model", f"`{model.get('spec')}` ({model.get('class')}), {model.get('parameters'):,} "
                              f"parameters" + ("; Opacus' fix applied" if model.get("opacus-fix-applied") else "")))
    return rows


SOFTWARE = (("dpfl", "dpfl"), ("torch", "PyTorch"), ("opacus", "Opacus"), ("flwr", "Flower"),
            ("dp-accounting", "dp-accounting"))


def software_text(r: dict[str, Any]) -> str:
    """The library versions the run was trained and accounted with (config.json ``environment``)."""
    env = r["run"].get("environment") or {}
    if not env:
        return "not recorded (config.json has no environment)"
    parts = [f"{label} {env.get(key) or 'unknown'}" for key, label in SOFTWARE]
    parts.append(f"Python {env.get('python') or 'unknown'}")
    if env.get("git-revision"):
        parts.append(f"git {str(env['git-revision'])[:12]}")
    if env.get("device"):
        parts.append(f"device {env['device']}")
    return ", ".join(parts)


def _accuracy_text(r: dict[str, Any]) -> str:
    data = (r["run"].get("inputs") or {}).get("dataset") or {}
    if data.get("source") != "built-in" and "test" not in data and data.get("train") and not isinstance(
            data.get("train"), dict):
        return "none: the server holds no test records (each client holds its own data; no test-data-path)"
    return f_num(r["training"]["final_accuracy"])


def _glance(r: dict[str, Any]) -> Section:
    fed, mech, acc = r["federation"], r["mechanism"], r["accountants"]
    n_bad = len(acc["mismatches"]) + sum(len(c["details"]) for c in r["checks"])
    check = ("OK: every ε re-derived from the ledgers and every cross-check passed" if r["accounting_ok"]
             else f"FAILED: MISMATCH ({n_bad} issues, listed above and in section 5)")
    if not mech["dp"]:
        check = ("OK: every user-level ε re-derived from ledgers/server.jsonl" if r.get("user_level") and
                 r["accounting_ok"] else "nothing to check: no DP, no ledgers" if not r.get("user_level")
                 else "FAILED: see section 7")
    eps_text = (f"{f_eps(fed['epsilon'])} at δ = {f_g(fed['delta'])} ({fed['accountant']}; max over clients)"
                if fed["epsilon"] is not None else "none: no DP guarantee (dp = false)")
    ul = r.get("user_level")
    guarantee = ("sample-level (ε, δ)-DP for every record" if mech["dp"] else "")
    if ul:
        guarantee = "user-level (ε, δ)-DP for every client" + (f"; and {guarantee}" if guarantee else "")
    rows = [
        *([("User-level ε", user_level_text(ul))] if ul else []),
        ("Federation ε" if not ul else "Record-level ε", eps_text if mech["dp"] or not ul
         else "none: no record-level DP-SGD (dp = false)"),
        ("Guarantee", "NOT PRIVATE" if mech["not_private"] else guarantee
         + (", EXCEPT the values named in the banner above" if r["banner"] else "")),
        ("Neighbouring relation", (("replace one whole client (user-level, fixed cohorts)"
                                    if ul.get("neighbouring") == "replace-one" else
                                    "add/remove one whole client (user-level)") if ul else "")
         + ("; record level: " if ul and mech["dp"] else "")
         + (mech.get("neighbouring_text", "add/remove one record") if mech["dp"] or not ul else "")),
        *([("Release per client per round", release_text(r))] if mech["dp"] else []),
        *inputs_rows(r),
        ("Clients", str(len(r["clients"]))),
        ("Rounds", f"{fed['rounds_completed']} of {fed['num_server_rounds']}"),
        ("Run", fed["stop_text"]),
        ("Final test accuracy", _accuracy_text(r)),
        ("Accounting re-check", check),
        *([("Empirical audit", glance_text(r["audit"]))] if r.get("audit") else []),
        ("Software", software_text(r)),
        ("Run directory", f"`{r['run']['directory']}`"),
        ("Report generated", r["generated"]),
    ]
    blocks: list[Block] = []
    if r["banner"]:
        blocks.append(("banner", r["banner"]["title"], r["banner"]["lines"]))
    verdict = r.get("verdict") or {}
    if mech["dp"] and not r["accounting_ok"]:
        failures = verdict.get("failures") or ["see section 5"]
        more = [f"... and {len(failures) - 10} more (report.json, `verdict.failures`)"] if len(failures) > 10 else []
        blocks.append(("banner", verdict.get("title") or "ACCOUNTING CHECK FAILED",
                       ["The run's files disagree: do not rely on the ε below until this is explained.",
                        *failures[:10], *more]))
    if fed.get("no_round_ran"):
        blocks.append(("note", f"No round ran: {fed['stop_reason'] or 'no reason recorded'}"))
    for w in r["warnings"]:
        blocks.append(("note", f"Warning: {w}"))
    blocks.append(("kv", rows))
    return Section("At a glance", blocks)


def user_level_text(ul: dict[str, Any]) -> str:
    return (f"{f_eps(ul['epsilon'])} at δ = {f_g(ul['delta'])} ({ul['accountant']}; one whole client; expected "
            f"cohort {f_g(ul['expected_cohort'])} of {f_g(ul['population'])} clients, q = {f_g(ul['sample_rate'])}, "
            f"σ = {f_num(ul['noise_multiplier'])})")


def _user_level(r: dict[str, Any]) -> Section | None:
    ul = r.get("user_level")
    if not ul:
        return None
    blocks: list[Block] = [("p", ul["plain_words"]), ("p", ul["trust"])]
    rows = [("User-level ε", user_level_text(ul)),
            ("Noise multiplier", f"{f_num(ul['noise_multiplier'])}" + (
                f" (calibrated to user-target-epsilon {f_g(ul['target_epsilon'])} over the run's rounds)"
                if ul["target_epsilon"] else " (configured)")),
            ("Clipping", "adaptive (Andrew et al. 2021): C follows the target quantile of update norms from a "
                         f"noised count (std {f_g(ul['clipped_count_stddev'])}); the count and the update sum are one "
                         "Gaussian release with the noise multiplier above" if ul["adaptive"] else "fixed"),
            ("User-level budget", f"ε = {f_g(ul['budget'])}" if ul["budget"] else "none"),
            ("Record-level guarantee too", "yes: sections 2 to 6 (DP-SGD at each client)" if ul["record_level_too"]
             else "no (dp = false)")]
    blocks.append(("kv", rows))
    blocks.append(("table", ["round", "ε (ledger)", "ε (dp-accounting PLD, recomputed)", "σ", "q", "clip norm C"],
                   [[f_g(x["round"]), f_eps(x["epsilon"]), f_eps(x["recomputed"]), f_num(x["noise_multiplier"]),
                     f_g(x["sample_rate"]), f_num(x["clip_norm"])] for x in ul["rounds"]]))
    if ul["python"]:
        blocks += [("p", "With dp-accounting alone, from the run directory:"), ("code", "python", ul["python"])]
    return Section("7. User-level DP: one client's guarantee", blocks)


def _audit(r: dict[str, Any]) -> Section | None:
    a = r.get("audit")
    if not a:
        return None
    blocks: list[Block] = []
    if a["violation"]:
        blocks.append(("banner", "AUDIT: MEASURED ε ABOVE THE ACCOUNTANT'S",
                       ["The canaries were guessed better than any mechanism with the ledger's ε allows.",
                        "The code does not do what its ledger says: do not rely on this run's ε."]))
    blocks += [("p", a["explained"]), ("kv", audit_rows(a)), ("img", "audit", "Canary scores, included vs excluded")]
    return Section("8. Empirical privacy audit", blocks)


def _mechanism(r: dict[str, Any]) -> Section:
    m = r["mechanism"]
    if not m["dp"]:
        lead = "Record level: " if r.get("user_level") else "Nothing is protected: "
        blocks: list[Block] = [("p", lead + m["how"]), ("p", "Privacy statement recorded by "
                               "the server (config.json):"), ("list", m["privacy_statement"])]
        return Section("1. Privacy mechanism", blocks)
    rows = [
        ("What is protected", m["protected"]),
        ("Neighbouring relation", m.get("neighbouring_text", "add/remove one record")),
        ("Unit of privacy", m["unit"]),
        ("Mechanism", m["how"]),
        ("Composition", m["composition"]),
        ("δ", f"{f_g(m['delta'])} ({m['delta_source']}). {m['delta_explanation']}"),
        ("Accountant", f"{m['accountant']}: {m['accountant_description']}"),
        ("Federation ε", m["assumption"]),
    ]
    blocks = [("kv", rows), ("p", "The guarantee does NOT cover:"), ("list", m["excludes"])]
    if m["privacy_statement"]:
        blocks += [("p", "Privacy statement recorded by the server (config.json):"),
                   ("list", m["privacy_statement"])]
    return Section("1. Privacy mechanism", blocks)


def _epsilon(r: dict[str, Any]) -> Section:
    e = r["epsilon"]
    if not e["clients"]:
        text = "No ε: differential privacy was off."
        if r["mechanism"]["dp"]:
            text = ("No ε: no client released anything" + (f" (no round ran: {r['federation']['stop_reason']})"
                                                           if r["federation"].get("no_round_ran") else "") + ".")
        return Section("2. ε per client per round", [("p", text)])
    blocks: list[Block] = [("p", e["note"])]
    if "epsilon" in r["plots"]:
        alt = "epsilon per client per round" + (" (min/median/max band)" if e["plot_mode"] == "band" else "")
        blocks.append(("img", "epsilon", alt))
    shown = e["table_clients"]
    many = e["table_mode"] != "all"
    headers = ["round", *shown] + (["min", "median", "max"] if many else [])
    rows = []
    for i, rnd in enumerate(e["rounds"]):
        row = [str(rnd)] + [f_eps(e["per_client"][c][i]) for c in shown]
        if many:
            row += [f_eps(e["stats"][s][i]) for s in ("min", "median", "max")]
        rows.append(row)
    if many:
        blocks.append(("p", f"Showing the {len(shown)} clients with the largest final ε of "
                            f"{len(e['clients'])}, plus min / median / max over all clients; the full table "
                            "is in report.json (`epsilon.per_client`)."))
    blocks.append(("table", headers, rows))
    return Section("2. ε per client per round", blocks)


def _federation(r: dict[str, Any]) -> Section:
    fed = r["federation"]
    blocks: list[Block] = []
    if fed["epsilon"] is not None:
        who = ", ".join(fed["argmax_clients"][:5]) + (" ..." if len(fed["argmax_clients"]) > 5 else "")
        blocks.append(("p", f"Federation ε = {f_eps(fed['epsilon'])} at δ = {f_g(fed['delta'])} "
                            f"({fed['accountant']}): the maximum over {len(r['clients'])} clients, reached "
                            f"by {who}."))
    else:
        blocks.append(("p", "No federation ε: differential privacy was off."))
    if fed["stopped_early"]:
        blocks.append(("note", f"Run {fed['stop_text']}"))
    else:
        blocks.append(("p", f"The run {fed['stop_text']}."))
    budget = (f"ε = {f_g(fed['budget'])} per client (from {fed['budget_source']})" if fed["budget"]
              else "none configured (epsilon-budget = 0 and target-epsilon = 0)")
    blocks.append(("kv", [(limit_label(fed), budget),
                          ("Max participations per client", f_g(fed["max_participations"]))]))
    limit = limit_label(fed)
    headers = ["client", "status", "participations", "ε", "target ε" if limit == "Target ε" else "budget",
               "remaining", "reason"]
    rows = [[c["client"], c["status"], f_g(c["participations"]), f_eps(c["epsilon"]), f_g(c["budget"]),
             f_eps(c["remaining"]), c["reason"] or ""] for c in r["clients"]]
    blocks += [("h3", "Status per client" if limit == "Target ε" else "Budget status per client"),
               ("table", headers, rows)]
    blocks += _earlier_runs(r)
    blocks.append(("h3", "Events by round"))
    if r["events"]:
        blocks.append(("table", ["round", "client", "event", "reason"],
                       [[str(ev["round"]) if ev["round"] > 0 else "before round 1", ev["client"], ev["event"],
                         ev["reason"]] for ev in r["events"]]))
    else:
        blocks.append(("p", "No client dropped, failed or declined in any round."))
    return Section("3. Federation ε, budgets and events", blocks)


def _earlier_runs(r: dict[str, Any]) -> list[Block]:
    """Per client, the earlier runs on the same records that its owner's budget counts."""
    rows = [c for c in r["clients"] if c.get("prior_runs") or c.get("other_runs_in_ledger")
            or (c.get("prior_epsilon") or 0) > 0]
    if not rows:
        return []
    table = [[c["client"], c.get("data_source") or DASH, f_eps(c.get("prior_epsilon")),
              ", ".join(f"`{x}`" for x in c.get("prior_runs") or []) or DASH,
              ", ".join(f"`{x}`" for x in c.get("other_runs_in_ledger") or []) or DASH] for c in rows]
    return [("h3", "Earlier runs on the same records"),
            ("p", "These clients' records were used in earlier runs too. The ε in this report is this run's; the "
                  "owner's budget (max-epsilon in its privacy policy) covers all of them: every release of the "
                  "records, in this run and in the earlier runs listed, composes in the client's own ledger and "
                  "is checked against that budget before each release."),
            ("table", ["client", "data source", "prior ε (client reported)", "earlier runs that count",
                       "other runs in its ledger"], table)]


def _training(r: dict[str, Any]) -> Section:
    t = r["training"]
    blocks: list[Block] = [("p", t["note"] + ".")]
    for name, alt in (("accuracy", "test accuracy and loss per round"),
                      ("accuracy_vs_epsilon", "test accuracy against ε")):
        if name in r["plots"]:
            blocks.append(("img", name, alt))
    if not t["rounds"]:
        fed = r["federation"]
        blocks.append(("p", f"No round ran: {fed['stop_reason'] or 'no reason recorded'}. The model was never "
                            "trained; nothing was released."))
        return Section("4. Accuracy", blocks)
    rows = [[str(x["round"]), f_num(x["accuracy"]), f_num(x["loss"]), f_eps(x["epsilon_max"]),
             f_g(x["participants"]), f_num(x["seconds"], 1)] for x in t["rounds"]]
    blocks.append(("table", ["round", "accuracy", "loss", "federation ε", "participants", "seconds"], rows))
    return Section("4. Accuracy", blocks)


def _accountants(r: dict[str, Any]) -> Section:
    acc = r["accountants"]
    blocks: list[Block] = []
    if not acc["distinct"]:
        blocks.append(("p", "No ledger holds a release: no ε to recompute."))
        if acc["mismatches"]:
            blocks.append(("banner", "ACCOUNTING MISMATCH", acc["mismatches"]))
    else:
        blocks += _accountant_table(acc)
    blocks += _reconciliation(r)
    if r["checks"]:
        items = [f"{'OK' if c['ok'] else 'FAIL'}: {c['name']}"
                 + ("" if c["ok"] else ": " + "; ".join(c["details"][:5])) for c in r["checks"]]
        failed = [c["name"] for c in r["checks"] if not c["ok"]]
        if failed:
            blocks.append(("banner", "CROSS-CHECK FAILED", failed))
        blocks += [("p", "Cross-checks between the run's files:"), ("list", items)]
    return Section("5. Accountants side by side", blocks)


def _accountant_table(acc: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [("p", (
        "Each client's ledger recomputed with all three accountants at the run's δ, under its own neighbouring "
        "relation. `reported` is the ε the "
        f"run wrote in the ledger (its accountant); a relative difference above {acc['tolerance']:g} is a "
        f"bug. {len(acc['distinct'])} distinct ledger(s) among {len(acc['clients'])} client(s), each "
        f"computed once; {acc['prefix_check']}."))]
    left_out = sorted({f"{name}: {why}" for d in acc["distinct"] for name, why in (d.get("left_out") or {}).items()})
    if left_out:
        blocks.append(("p", "Left out (shown as —): " + "; ".join(left_out) + "."))
    if acc["mismatches"]:
        blocks.append(("banner", "ACCOUNTING MISMATCH", acc["mismatches"]))
    headers = ["reported", *ACCOUNTANTS, "rel. difference", "check"]
    if len(acc["clients"]) <= MANY_CLIENTS:
        rows = [[c["client"], c["ledger"], c.get("neighbouring") or DASH, str(c["releases"]), f_eps(c["reported"]),
                 *[f_eps(c["recomputed"].get(a)) for a in ACCOUNTANTS],
                 f_rel(c["relative_difference"]), "OK" if c["ok"] else "MISMATCH"] for c in acc["clients"]]
        blocks.append(("table", ["client", "ledger", "relation", "releases", *headers], rows))
    else:
        by_ledger: dict[str, list[dict[str, Any]]] = {}
        for c in acc["clients"]:
            by_ledger.setdefault(c["ledger"], []).append(c)
        rows = []
        for d in acc["distinct"]:
            cs = by_ledger[d["id"]]
            reported = sorted({c["reported"] for c in cs if c["reported"] is not None})
            worst = max((c["relative_difference"] or 0.0 for c in cs), default=None)
            rows.append([d["id"], d.get("neighbouring") or DASH, str(len(cs)), str(d["releases"]),
                         " / ".join(f_eps(v) for v in reported) or DASH,
                         *[f_eps(d["recomputed"].get(a)) for a in ACCOUNTANTS], f_rel(worst),
                         "OK" if all(c["ok"] for c in cs) else "MISMATCH"])
        mixed = [c for c in acc["clients"] if c["ledger"] == "mixed"]
        if mixed:
            rows.append(["mixed", "mixed", str(len(mixed)), DASH, DASH, *[DASH for _ in ACCOUNTANTS], DASH,
                         "MISMATCH"])
        blocks.append(("table", ["ledger", "relation", "clients", "releases", *headers], rows))
    return blocks


def _reconciliation(r: dict[str, Any]) -> list[Block]:
    """The server's ledger against each client's own (which may also hold earlier runs)."""
    rec = r.get("reconciliation") or {}
    if not r["mechanism"]["dp"]:
        return []
    blocks: list[Block] = [("h3", "The server's ledger against the clients' own ledgers")]
    if not rec.get("rows"):
        blocks.append(("p", "No client ledger was found in this run directory (client-ledgers.json or "
                            "client-state/): the server's ledgers could not be compared with the clients' own."))
        return blocks
    blocks.append(("p", "The server charges each client when it sends the instruction, so its ledger must never "
                        f"be below the client's own. {rec['note'][0].upper()}{rec['note'][1:]}"))
    rows = [[x["client"], f"{f_eps(x['server_epsilon'])} ({x['server_releases']})",
             f"{f_eps(x['client_epsilon_run'])} ({x['client_releases_run']})",
             f"{f_eps(x['client_epsilon_all'])} ({x['client_releases_all']})",
             "OK" if x["ok"] else "SERVER BELOW CLIENT" if x["server_below_client"] else "NOT COMPARED"]
            for x in rec["rows"]]
    blocks.append(("table", ["client", "server ledger ε (releases)", "client ledger ε, this run (releases)",
                             "client ledger ε, all runs (releases)", "check"], rows))
    if rec.get("no_ledger"):
        blocks.append(("p", "No own ledger on disk (never trained on these records): "
                            + ", ".join(rec["no_ledger"]) + "."))
    return blocks


def _configuration(r: dict[str, Any]) -> list[Block]:
    m = r["mechanism"]
    params = [(f"`{k}`", _used_value(r, k, v)) for k, v in m["parameters"].items()]
    params += [(f"resolved `{k}`", f_g(v)) for k, v in m["resolved"].items()]
    return [("h3", "Run configuration (config.json)"), ("kv", params)] if params else []


def _used_value(r: dict[str, Any], key: str, value: Any) -> str:
    """A configured value, or the value actually used when calibration replaced it (marked as such)."""
    target = r["mechanism"]["parameters"].get("target-epsilon") or 0
    if key == "noise-multiplier" and r["mechanism"]["dp"] and target > 0:
        sigmas = sorted({s["noise_multiplier"] for rep in r.get("reproduction") or [] for s in rep["schedule"]})
        used = (f"{sigmas[0]:.6g}" if len(sigmas) == 1 else f"{sigmas[0]:.6g} to {sigmas[-1]:.6g}") if sigmas \
            else DASH
        return f"{used} (calibrated to target-epsilon {f_g(target)}; the configured {f_g(value)} was not used)"
    return f_g(value)


def _reproduction(r: dict[str, Any]) -> Section:
    if not r["reproduction"]:
        return Section("6. Reproduction", [("p", "No releases: nothing to reproduce."), *_configuration(r)])
    blocks: list[Block] = [("p", (
        "The exact parameters behind every ε above, per distinct ledger (the sample rate q and the steps per "
        "round follow from each client's record count, batch size and local epochs)."))]
    top = set(r["federation"]["argmax_clients"])
    full = next((rep for rep in r["reproduction"] if top & set(rep["clients"])), r["reproduction"][0])
    for rep in r["reproduction"]:
        clients = ", ".join(rep["clients"][:10]) + (f" and {len(rep['clients']) - 10} more"
                                                     if len(rep["clients"]) > 10 else "")
        blocks.append(("h3", f"Ledger {rep['ledger']}: {clients}"))
        rows = [[s["mechanism"], repr(s["noise_multiplier"]), repr(s["sample_rate"]),
                 str(s["steps_per_round"]), str(s["rounds"])] for s in rep["schedule"]]
        blocks.append(("table", ["mechanism", "σ (noise multiplier)", "q (sample rate)", "steps per round",
                                 "rounds"], rows))
        relation = rep.get("neighbouring", "add-remove")
        blocks.append(("kv", [("δ", repr(rep["delta"])), ("accountant", rep["accountant"]),
                              ("neighbouring relation", relation), ("releases", str(rep["rounds"]))]))
        if rep["command"]:
            out = rep["command_output"]
            how = (f"{rep['steps_per_round']} per round x {rep['rounds']} rounds" if rep["uniform"]
                   else "the sum of every round's steps")
            blocks += [("p", f"Every release has the same σ and q, so one DP-SGD run of {rep['total_steps']} "
                             f"steps ({how}) has the same ε (composition only depends on the total steps):"),
                       ("code", "bash", rep["command"]),
                       ("p", ("which prints " + ", ".join(f"{k} ε = {v:.6g}" for k, v in out.items())
                              + (" (the ledger's values)." if rep["command_matches"] else
                                 " (the ledger's values up to the accountants' discretisation)."))
                        if out else "(this dpfl's accountants could not compute it under this relation)")]
        else:
            blocks.append(("p", "σ or q changes between rounds, so no single command line reproduces this "
                                "ledger; use the Python below."))
        if relation != "add-remove":
            blocks.append(("p", f"Under {relation} the snippet has no RDP or PRV lines: dp-accounting's RDP "
                                "accountant refuses replace-one for Poisson sampling, so PLD alone accounts it."))
        libraries = "dp-accounting and Opacus" if relation == "add-remove" else "dp-accounting"
        if rep is full or relation != full.get("neighbouring", "add-remove"):
            which = " (this ledger holds the federation's ε)" if rep is full else ""
            blocks += [("p", f"With {libraries} alone{which}:"), ("code", "python", rep["python"])]
        else:
            schedule = ", ".join(f"({s['noise_multiplier']!r}, {s['sample_rate']!r}, {s['steps_per_round']}, "
                                 f"{s['rounds']})" for s in rep["schedule"])
            blocks += [("p", f"With {libraries} alone: the Python of ledger {full['ledger']} with "
                             "these three lines instead of its own (every ledger's full snippet is in "
                             "report.json, `reproduction`):"),
                       ("code", "python", f"delta = {rep['delta']!r}\n"
                                          f"interval = {interval_text(rep['pld_discretization'])}\n"
                                          f"schedule = [{schedule}]")]
    return Section("6. Reproduction", blocks + _configuration(r))


def build_document(report: dict[str, Any]) -> tuple[str, list[Section]]:
    """(title, sections) in reading order."""
    title = f"Privacy report: {report['run']['id']}" + (" (NOT PRIVATE)" if report.get("privacy") else "")
    sections = [_glance(report), _mechanism(report), _epsilon(report), _federation(report),
                _training(report), _accountants(report), _reproduction(report), _user_level(report), _audit(report)]
    return title, [sec for sec in sections if sec is not None]
