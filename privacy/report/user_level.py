"""The report's user-level part (privacy-unit = client): ledgers/server.jsonl re-derived and explained.

Every line of the central ledger is recomputed here with dp-accounting's PLD directly (the composition of the
ledger's own Poisson-subsampled Gaussians, nothing taken from dpfl's accountants), and compared with the epsilon
the server booked and with metrics.jsonl and summary.json; a disagreement fails the report's verdict. The
section says in plain words what user-level DP protects, what the server is trusted with, and why no round's
cohort is shown.
"""

from __future__ import annotations

from typing import Any

import dp_accounting

from dpfl.privacy.calibration import FIXED_COHORT_RDP_ORDERS
from dpfl.privacy.report.jsonsafe import finite
from dpfl.privacy.rundata import RunData

PLD_INTERVAL = 1e-4  # dp-accounting's PLD discretisation for the independent recomputation
TOLERANCE = 0.01  # relative; the target: every central epsilon within 1 % of dp-accounting PLD

PLAIN_WORDS = (
    "User-level differential privacy protects a whole client (a phone, a hospital, a user) at once: everything "
    "the run released - every global model and every metric computed on the server's test data - would be "
    "almost as likely had any one client never taken part, whatever and however many records it holds. "
    "Each round the server drew a random cohort (every client independently with probability q; or, with fixed "
    "cohorts, exactly q x N clients, and then neighbours replace one client), each sampled "
    "client clipped its model update to norm C on its own machine, and the server added Gaussian noise of "
    "standard deviation z x C to the sum before dividing by the expected cohort q x N.")
TRUST = (
    "Trust model: central DP. The server receives the clipped updates in the clear and is trusted to add the "
    "noise and to keep the cohort secret; the amplification by sampling holds only against observers who do not "
    "learn who was sampled, so this report shows the expected cohort, never a round's participants or their "
    "number.")


FIXED = "gaussian-fixed-cohort"  # privacy.releases.FixedCohortGaussianRelease.MECHANISM


def _event(e: dict[str, Any]) -> dp_accounting.DpEvent:
    sigma = float(e["noise_multiplier"])  # noise std / C
    if e.get("mechanism") == FIXED:  # replace-one: one client moves the clipped sum by up to 2C
        population = int(e["population"])
        sampled: dp_accounting.DpEvent = dp_accounting.SampledWithoutReplacementDpEvent(
            population, round(float(e["sample_rate"]) * population), dp_accounting.GaussianDpEvent(sigma / 2))
    else:
        sampled = dp_accounting.PoissonSampledDpEvent(float(e["sample_rate"]), dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(sampled, int(e["steps"]))


def _independent_epsilons(entries: list[dict[str, Any]], delta: float) -> list[float]:
    """Cumulative epsilon after every entry from dp-accounting alone: PLD for Poisson cohorts (add/remove),
    RDP under replace-one for fixed-size cohorts (PLD has no event for sampling without replacement)."""
    fixed = any(e.get("mechanism") == FIXED for e in entries)
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
    accountant: Any = (dp_accounting.rdp.RdpAccountant(FIXED_COHORT_RDP_ORDERS, replace_one) if fixed
                       else dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL))
    out: list[float] = []
    for e in entries:
        accountant.compose(_event(e))
        out.append(float(accountant.get_epsilon(delta)))
    return out


def build_user_level(run: RunData) -> dict[str, Any] | None:
    """The user-level part of report.json, or None when the run is not user-level."""
    cfg, summary = run.config, run.summary or {}
    if cfg.get("privacy-unit") != "client":
        return None
    resolved = run.resolved
    entries = list(run.user_ledger.entries) if run.user_ledger is not None else []
    delta = finite(entries[-1].get("delta")) if entries else finite(resolved.get("user-delta"))
    failures: list[str] = []
    if run.user_ledger is None:
        failures.append("ledgers/server.jsonl is missing or unreadable: the user-level releases cannot be "
                        "re-checked")
    recomputed = _independent_epsilons(entries, delta) if entries and delta else []
    rows = []
    for e, independent in zip(entries, recomputed, strict=True):
        booked = float(e["epsilon"])
        # the same accountant as the recomputation must agree within 1 %; another one (prv, rdp on Poisson
        # cohorts) is a different upper bound and must only never be below dp-accounting's PLD
        same = (e.get("accountant") == "rdp") if e.get("mechanism") == FIXED else (e.get("accountant") == "pld")
        off = (abs(booked - independent) if same else independent - booked) > TOLERANCE * max(independent, 1e-12)
        if off:
            failures.append(f"server.jsonl round {e.get('round')}: epsilon {booked:.6g} but dp-accounting "
                            f"gives {independent:.6g}")
        rows.append({"round": e.get("round"), "epsilon": booked, "recomputed": independent,
                     "noise_multiplier": e.get("noise_multiplier"), "sample_rate": e.get("sample_rate"),
                     "clip_norm": e.get("clip_norm"), "update_noise_multiplier": e.get("update_noise_multiplier")})
    final = rows[-1]["epsilon"] if rows else 0.0
    for where, value in (("summary.json user_epsilon", summary.get("user_epsilon")),
                         ("metrics.jsonl's last user_epsilon",
                          run.metrics[-1].get("user_epsilon") if run.metrics else None)):
        v = finite(value)
        if v is not None and rows and abs(v - final) > 1e-9 * max(final, 1.0):
            failures.append(f"{where} is {v:.6g} but the ledger's last epsilon is {final:.6g}")
    leaked = [r.get("round") for r in run.metrics if r.get("participants") is not None]
    if leaked:
        failures.append(f"metrics.jsonl publishes the number of participants in round(s) {leaked[:5]}: the cohort "
                        "must not be published under user-level DP")
    first = entries[0] if entries else {}
    return {
        "epsilon": final, "delta": delta, "accountant": first.get("accountant", cfg.get("accountant")),
        "rounds": rows, "population": first.get("population", cfg.get("num-clients")),
        "expected_cohort": first.get("expected_cohort", resolved.get("expected-cohort")),
        "sample_rate": first.get("sample_rate", cfg.get("fraction-train")),
        "noise_multiplier": first.get("noise_multiplier", resolved.get("user-noise-multiplier")),
        "target_epsilon": finite(cfg.get("user-target-epsilon")) or 0.0,
        "budget": finite(cfg.get("user-epsilon-budget")) or 0.0,
        "adaptive": bool(cfg.get("adaptive-clipping")), "clipped_count_stddev": first.get("clipped_count_stddev"),
        "record_level_too": bool(cfg.get("dp", True)),
        "plain_words": PLAIN_WORDS, "trust": TRUST,
        "check": {"name": "ledgers/server.jsonl: every epsilon equals dp-accounting's PLD of the ledger's own "
                          "releases, and summary/metrics agree and publish no cohort",
                  "ok": not failures, "details": failures},
        "sampling": "fixed" if first.get("mechanism") == FIXED else "poisson",
        "neighbouring": first.get("neighbouring", "add-remove"),
        "python": _python(rows, delta, fixed=first.get("mechanism") == FIXED),
    }


ACCOUNTANT_LINES = {  # the snippet's accountant and event, per cohort kind
    False: ("acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)\n",
            "    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(\n"
            "        e['sample_rate'], dp_accounting.GaussianDpEvent(e['noise_multiplier'])), e['steps']))\n"),
    True: ("orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]\n"
           "acc = dp_accounting.rdp.RdpAccountant(orders, dp_accounting.NeighboringRelation.REPLACE_ONE)\n",
           "    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(\n"
           "        e['population'], round(e['sample_rate'] * e['population']),\n"
           "        dp_accounting.GaussianDpEvent(e['noise_multiplier'] / 2)), e['steps']))"
           "  # replace-one: sensitivity 2C\n"),
}


def _python(rows: list[dict[str, Any]], delta: float | None, *, fixed: bool) -> str:
    """dp-accounting alone, reading the ledger file: what a privacy officer runs to check the number (PLD for
    Poisson cohorts; RDP under replace-one for fixed cohorts, whose noise multiplier is relative to 2C)."""
    if not rows or delta is None:
        return ""
    accountant, compose = ACCOUNTANT_LINES[fixed]
    return ("import json, dp_accounting\n" + accountant
            + "for line in open('ledgers/server.jsonl'):\n    e = json.loads(line)\n" + compose
            + f"print(acc.get_epsilon({delta!r}))  # {rows[-1]['epsilon']:.6g} in the ledger\n")
