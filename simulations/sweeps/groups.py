"""Seed groups and the Pareto front of a sweep's rows, and how a swept value is written in tables and plots.

Points that differ only in seed are one setting, reported as mean ± sd; the Pareto front is the set of
private settings not dominated in (lower epsilon, higher accuracy).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpfl.simulations.sweeps.results import OK
from dpfl.simulations.sweeps.spec import PRIVACY_KEYS, SweepSpec, is_privacy_axis


def fmt_value(value: Any) -> str:
    """A swept value as tables show it (linked axes as k=v pairs, baselines' privacy values as '-')."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd of the finite values (sd 0 for one value; None, None for none)."""
    vals = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


@dataclass
class Group:
    """Points that differ only in seed: one setting, several seeds, reported as mean ± sd."""

    key: str
    kind: str
    params: dict[str, Any]
    setting: str  # the non-privacy part of params: a private group and its baseline share it
    ids: list[str] = field(default_factory=list)
    n_ok: int = 0
    eps_mean: float | None = None
    eps_sd: float | None = None
    acc_mean: float | None = None
    acc_sd: float | None = None
    best_mean: float | None = None
    curve: list[float] = field(default_factory=list)  # mean accuracy per round
    pareto: bool = False

    @property
    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if v is not None}
        return "; ".join(f"{k}={fmt_value(v)}" for k, v in shown.items()) or "base"


def privacy_axes(spec: SweepSpec | None) -> set[str]:
    """Swept parameters that only change the DP mechanism: a setting's baseline ignores them."""
    if spec is None:
        return set()
    axes = {label for label, values in spec.grid.items() if is_privacy_axis(label, values)}
    if spec.random is not None:
        axes |= {k for k in spec.random.params if k in PRIVACY_KEYS}
    return axes


def group_rows(rows: Sequence[Mapping[str, Any]], private_axes: set[str]) -> list[Group]:
    """Rows grouped by everything but the seed, with mean ± sd, and the Pareto front marked."""
    groups: dict[str, Group] = {}
    for row in rows:
        params = {k: v for k, v in row["params"].items() if k != "seed"}
        setting = {k: v for k, v in params.items() if k not in private_axes}
        key = json.dumps([row["kind"], params], sort_keys=True, default=str)
        g = groups.setdefault(key, Group(key=key, kind=row["kind"], params=params,
                                         setting=json.dumps(setting, default=str)))
        g.ids.append(row["id"])
    by_id = {r["id"]: r for r in rows}
    for g in groups.values():
        members = [by_id[i] for i in g.ids
                   if by_id[i]["status"] in OK and by_id[i]["final_accuracy"] is not None]
        g.n_ok = len(members)
        g.acc_mean, g.acc_sd = mean_sd([m["final_accuracy"] for m in members])
        g.best_mean, _ = mean_sd([m["best_accuracy"] for m in members])
        if g.kind == "private":
            g.eps_mean, g.eps_sd = mean_sd([m["epsilon"] for m in members])
        curves = [[a for a in m["accuracy_by_round"] if isinstance(a, int | float)] for m in members]
        length = min((len(c) for c in curves), default=0)
        g.curve = [statistics.fmean(c[i] for c in curves) for i in range(length)]
    out = list(groups.values())
    for g in pareto_front(out):
        g.pareto = True
    return out


def pareto_front(groups: Sequence[Group]) -> list[Group]:
    """Private groups not dominated in (epsilon low, accuracy high), sorted by epsilon."""
    cands = [g for g in groups if g.kind == "private" and g.eps_mean is not None and g.acc_mean is not None]
    front = []
    for g in cands:
        dominated = any(
            h is not g and h.eps_mean <= g.eps_mean and h.acc_mean >= g.acc_mean  # type: ignore[operator]
            and (h.eps_mean < g.eps_mean or h.acc_mean > g.acc_mean)  # type: ignore[operator]
            for h in cands)
        if not dominated:
            front.append(g)
    return sorted(front, key=lambda g: g.eps_mean)  # type: ignore[arg-type, return-value]
