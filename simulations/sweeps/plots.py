"""The sweep report's plots as PNG bytes: accuracy vs ε (Pareto front), vs rounds, and per swept parameter.

matplotlib is imported on first use with the Agg backend: a sweep on a headless node must not need a
display, and importing the sweep package must not pay for matplotlib.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dpfl.simulations.sweeps.groups import Group, fmt_value, mean_sd, pareto_front
from dpfl.simulations.sweeps.results import OK


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _settings(groups: Sequence[Group]) -> list[str]:
    seen: list[str] = []
    for g in groups:
        if g.setting not in seen:
            seen.append(g.setting)
    return seen


def _setting_label(setting: str) -> str:
    data = json.loads(setting)
    shown = {k: v for k, v in data.items() if v is not None}
    return "; ".join(f"{k}={fmt_value(v)}" for k, v in shown.items()) or "base setup"


def plot_accuracy_vs_epsilon(groups: Sequence[Group]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    settings = _settings(groups)
    colors = plt.get_cmap("tab10")
    eps_all = [g.eps_mean for g in groups if g.kind == "private" and g.eps_mean]
    for i, setting in enumerate(settings):
        color = colors(i % 10)
        label = _setting_label(setting) if len(settings) > 1 else "DP runs"
        priv = sorted((g for g in groups if g.setting == setting and g.kind == "private"
                       and g.eps_mean is not None and g.acc_mean is not None), key=lambda g: g.eps_mean)  # type: ignore[arg-type, return-value]
        if priv:
            ax.errorbar([g.eps_mean for g in priv], [g.acc_mean for g in priv],
                        yerr=[g.acc_sd or 0 for g in priv], xerr=[g.eps_sd or 0 for g in priv], fmt="o-",
                        color=color, capsize=3, label=label, alpha=0.85)
        for g in groups:
            if g.setting == setting and g.kind == "baseline" and g.acc_mean is not None:
                ax.axhline(g.acc_mean, color=color, linestyle="--", linewidth=1,
                           label=f"non-private (ε = ∞){'' if len(settings) == 1 else ': ' + label}")
                if g.acc_sd:
                    ax.axhspan(g.acc_mean - g.acc_sd, g.acc_mean + g.acc_sd, color=color, alpha=0.08)
    front = pareto_front(groups)
    if front:
        ax.step([g.eps_mean for g in front], [g.acc_mean for g in front], where="post", color="crimson",
                linewidth=1.5, alpha=0.7)
        ax.scatter([g.eps_mean for g in front], [g.acc_mean for g in front], s=140, facecolors="none",
                   edgecolors="crimson", linewidths=2, zorder=5, label="Pareto front")
    if eps_all and max(eps_all) / max(min(eps_all), 1e-9) > 8:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ticks = sorted({float(f"{e:.2g}") for e in eps_all})
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ε at δ (max over clients; mean over seeds)")
    ax.set_ylabel("final test accuracy (mean ± sd over seeds)")
    ax.set_title("Accuracy vs privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def plot_accuracy_vs_rounds(groups: Sequence[Group]) -> bytes:
    plt = _pyplot()
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    priv = [g for g in groups if g.kind == "private" and g.curve and g.eps_mean]
    eps = [g.eps_mean for g in priv]
    cmap = plt.get_cmap("viridis")
    norm: Any = None
    if eps:
        lo, hi = min(eps), max(eps)  # type: ignore[type-var]
        norm = LogNorm(lo, hi) if lo > 0 and hi / lo > 8 else Normalize(lo, hi if hi > lo else lo + 1)
    for g in sorted(priv, key=lambda g: g.eps_mean):  # type: ignore[arg-type, return-value]
        label = f"ε = {g.eps_mean:.2f}" + (f" ({g.label})" if len(priv) <= 8 else "")
        ax.plot(range(1, len(g.curve) + 1), g.curve, marker=".", color=cmap(norm(g.eps_mean)), label=label)
    labelled = False
    for g in groups:
        if g.kind == "baseline" and g.curve:
            ax.plot(range(1, len(g.curve) + 1), g.curve, linestyle="--", color="black", alpha=0.6,
                    label=None if labelled or len(priv) > 8 else "non-private (ε = ∞)")
            labelled = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if norm is not None and len(priv) > 8:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="ε")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("Accuracy vs rounds, per ε")
    ax.grid(alpha=0.3)
    if len(priv) <= 8:
        ax.legend(fontsize=7)
    return _png(fig)


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, fmt_value(value))


def plot_parameter_effects(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], private_axes: set[str],
                           random_numeric: set[str]) -> bytes | None:
    """Final accuracy by value of each swept parameter (mean ± sd over the private points with that value;
    baselines as hollow squares where the parameter is not a privacy one)."""
    shown = [a for a in axes if len({json.dumps(r["params"].get(a), default=str) for r in rows}) > 1]
    if not shown:
        return None
    plt = _pyplot()
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axs = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    ok = [r for r in rows if r["status"] in OK and r["final_accuracy"] is not None]
    for ax, axis in zip(axs.flat, shown, strict=False):
        for kind, style in (("private", {"fmt": "o", "color": "tab:blue"}),
                            ("baseline", {"fmt": "s", "color": "gray", "mfc": "none"})):
            if kind == "baseline" and axis in private_axes:
                continue
            members = [r for r in ok if r["kind"] == kind and not (kind == "private" and r["not_private"])]
            if axis in random_numeric:
                xs = [r["params"].get(axis) for r in members]
                ax.plot(xs, [r["final_accuracy"] for r in members], style["fmt"], color=style["color"],
                        mfc=style.get("mfc", style["color"]), label=kind, alpha=0.8)
                continue
            values = sorted({json.dumps(r["params"].get(axis), default=str) for r in members},
                            key=lambda v: _sort_key(json.loads(v)))
            xs, ys, sds = [], [], []
            for v in values:
                m, sd = mean_sd([r["final_accuracy"] for r in members
                                  if json.dumps(r["params"].get(axis), default=str) == v])
                xs.append(fmt_value(json.loads(v)))
                ys.append(m)
                sds.append(sd or 0)
            if xs:
                ax.errorbar(xs, ys, yerr=sds, capsize=3, label=kind, **style)
        ax.set_title(axis, fontsize=9)
        ax.set_ylabel("final accuracy", fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axs.flat)[len(shown):]:
        ax.set_visible(False)
    fig.suptitle("Effect of each swept parameter (mean ± sd)", fontsize=10)
    fig.tight_layout()
    return _png(fig)
