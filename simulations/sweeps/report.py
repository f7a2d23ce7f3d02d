"""Sweep results and report: results.csv/json, seed groups (mean ± sd), the Pareto front, plots, and
report.md + a self-contained report.html (plots embedded as base64 PNG, no external resources).

The report states which epsilon applies to the selected model: the tuning epsilon of the whole sweep,
not the epsilon of the selected run alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpfl.simulations.sweeps.sweep import SweepSpec, Tuning

CSV_FIELDS = ("id", "kind", "status", "final_accuracy", "best_accuracy", "best_round", "epsilon", "delta",
              "noise_multiplier", "rounds_completed", "stop_reason", "wall_seconds", "seed", "trial",
              "run_dir", "error", "warning")
OK = ("ok", "stopped")


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


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


# --- results tables ---------------------------------------------------------------------------------------
def write_results(out: Path, rows: Sequence[Mapping[str, Any]], *, axes: Sequence[str]) -> list[Path]:
    """results.csv (one row per point: parameters, accuracy, epsilon at delta, wall time, status) and
    results.json (the same rows with per-round curves). A baseline's epsilon is "inf" in the CSV, null in
    JSON."""
    csv_path, json_path = out / "results.csv", out / "results.json"
    fields = ["id", "kind", "status", *axes, *CSV_FIELDS[3:]]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat: dict[str, Any] = {k: row.get(k) for k in CSV_FIELDS}
            for axis in axes:
                value = row["params"].get(axis)
                flat[axis] = json.dumps(value) if isinstance(value, dict) else (
                    "" if value is None else value)
            if row["not_private"] and row["status"] in OK:
                flat["epsilon"] = "inf"
            writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
    json_path.write_text(json.dumps({"axes": list(axes), "rows": list(rows)}, indent=1, default=str) + "\n")
    return [csv_path, json_path]


# --- groups and the Pareto front --------------------------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
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


def privacy_axes(spec: SweepSpec | None, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    from dpfl.simulations.sweeps.sweep import PRIVACY_KEYS, is_privacy_axis

    if spec is None:
        return set()
    axes = {label for label, values in spec.grid.items() if is_privacy_axis(label, values)}
    if spec.random is not None:
        axes |= {k for k in spec.random.params if k in PRIVACY_KEYS}
    return axes


def group_rows(rows: Sequence[Mapping[str, Any]], private_axes: set[str]) -> list[Group]:
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
        g.acc_mean, g.acc_sd = _mean_sd([m["final_accuracy"] for m in members])
        g.best_mean, _ = _mean_sd([m["best_accuracy"] for m in members])
        if g.kind == "private":
            g.eps_mean, g.eps_sd = _mean_sd([m["epsilon"] for m in members])
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


# --- plots ------------------------------------------------------------------------------------------------
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
                m, sd = _mean_sd([r["final_accuracy"] for r in members
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


# --- report -----------------------------------------------------------------------------------------------
def _point_table(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    head = ["point", "kind", "status", *axes, "final acc", "best acc", "ε", "δ", "σ", "rounds", "wall s"]
    body = []
    for r in rows:
        eps = "∞ (no DP)" if r["not_private"] and r["status"] in OK else _num(r["epsilon"])
        body.append([r["id"], r["kind"], r["status"], *(fmt_value(r["params"].get(a)) for a in axes),
                     _num(r["final_accuracy"]), _num(r["best_accuracy"]), eps, _num(r["delta"], 3),
                     fmt_value(r["noise_multiplier"]) if r["noise_multiplier"] is not None else "",
                     str(r["rounds_completed"] or ""), _num(r["wall_seconds"], 3)])
    return head, body


def _group_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "kind", "runs ok", "ε (mean ± sd)", "final acc (mean ± sd)", "best acc", "Pareto"]
    body = []
    order = sorted(groups, key=lambda g: (g.setting, g.kind != "baseline", g.eps_mean or 0.0))
    for g in order:
        eps = "∞ (no DP)" if g.kind == "baseline" else (
            f"{g.eps_mean:.3f} ± {g.eps_sd:.3f}" if g.eps_mean is not None else "")
        acc = f"{g.acc_mean:.4f} ± {g.acc_sd:.4f}" if g.acc_mean is not None else ""
        body.append([g.label, g.kind, f"{g.n_ok}/{len(g.ids)}", eps, acc, _num(g.best_mean),
                     "yes" if g.pareto else ""])
    return head, body


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}
.guarantee{border-left:4px solid #2a7;background:#f2fbf6;padding:.6em 1em}
.warn{border-left:4px solid #c33;background:#fdf3f3;padding:.6em 1em}img{max-width:100%}
code{background:#f4f4f4}"""


def write_report(out: Path, spec: SweepSpec | None, rows: Sequence[Mapping[str, Any]],
                 tuning: Tuning | None) -> list[Path]:
    """report.md (plots as files under plots/) and report.html (the same, plots embedded)."""
    from dpfl.simulations.sweeps.sweep import _axes

    axes = _axes(spec) if spec is not None else []
    priv_axes = privacy_axes(spec, rows)
    groups = group_rows(rows, priv_axes)
    rules = spec.random.params.items() if spec and spec.random else []
    random_numeric = {k for k, r in rules if "low" in r}
    plots: dict[str, tuple[str, bytes | None]] = {}
    if any(g.kind == "private" and g.eps_mean is not None for g in groups) or any(g.acc_mean for g in groups):
        plots["accuracy_vs_epsilon"] = ("Accuracy vs ε (Pareto front circled; dashed: non-private baseline)",
                                        plot_accuracy_vs_epsilon(groups))
        plots["accuracy_vs_rounds"] = ("Accuracy vs rounds, one line per ε", plot_accuracy_vs_rounds(groups))
    effect = plot_parameter_effects(rows, axes, priv_axes, random_numeric)
    if effect is not None:
        plots["parameter_effects"] = ("Effect of each swept parameter", effect)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    for name, (_, data) in plots.items():
        if data is not None:
            (plot_dir / f"{name}.png").write_bytes(data)

    ok = sum(r["status"] in OK for r in rows)
    failed = [r for r in rows if r["status"] not in OK]
    name = spec.name if spec else out.name
    mode = spec.mode if spec else "grid"
    summary = (f"{len(rows)} points ({sum(r['kind'] == 'private' for r in rows)} private, "
               f"{sum(r['kind'] == 'baseline' for r in rows)} non-private baselines), {ok} finished, "
               f"{len(failed)} failed; mode: {mode}")
    if tuning and tuning.trials is not None:
        summary += f", K = {tuning.trials} trials drawn ({tuning.distribution}, mean {tuning.mean_trials:g})"
    sel = next((r for r in rows if tuning and r["id"] == tuning.selected), None)
    sel_lines: list[str] = []
    if sel is not None:
        params = "; ".join(f"{k}={fmt_value(v)}" for k, v in sel["params"].items())
        sel_lines.append(f"Selected point: {sel['id']} ({params}), final test accuracy "
                         f"{_num(sel['final_accuracy'])}.")
    tun_head = ["", "value"]
    tun_body: list[list[str]] = []
    if tuning is not None:
        tun_body = [["ε that applies to the selected model", _num(tuning.epsilon)],
                    ["δ", _num(tuning.delta, 3)],
                    ["how", tuning.method],
                    ["private runs composed", str(tuning.private_runs)],
                    ["ε of the selected run alone (ignores tuning; NOT its guarantee)",
                     _num(tuning.selected_epsilon_alone)]]
    notes = list(tuning.notes) if tuning else []
    point_head, point_body = _point_table(rows, axes)
    group_head, group_body = _group_table(groups)
    fail_head = ["point", "kind", *axes, "error"]
    fail_body = [[r["id"], r["kind"], *(fmt_value(r["params"].get(a)) for a in axes), r["error"]]
                 for r in failed]
    reading = ("ε is sample-level DP at each client, composed over every round the client trained in; "
               "a sweep point's ε is the max over clients at the run's δ. Accuracy is measured by the "
               "server on its test set. Points that differ only in seed are grouped (mean ± sd). The "
               "Pareto front is the set of private settings not dominated in (lower ε, higher accuracy). "
               "Selection uses server-side test accuracy only and never picks a non-private baseline; the "
               "baselines carry no guarantee.")

    md = [f"# Sweep report: {name}", "", summary, "", "## Privacy of the selected result", ""]
    md += [tuning.statement if tuning else "No tuning accounting.", ""]
    md += [*sel_lines, ""] if sel_lines else []
    if tun_body:
        md += [_md_table(tun_head, tun_body), ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += ["## Plots", ""]
    for pname, (title, data) in plots.items():
        if data is not None:
            md += [f"### {title}", "", f"![{title}](plots/{pname}.png)", ""]
    md += ["## Settings (seeds grouped)", "", _md_table(group_head, group_body), "", "## All points", "",
           _md_table(point_head, point_body), ""]
    if failed:
        md += ["## Failed points", "", _md_table(fail_head, fail_body), ""]
    md += ["## How to read this", "", reading, ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    body = [f"<h1>Sweep report: {html.escape(name)}</h1>", f"<p>{html.escape(summary)}</p>",
            "<h2>Privacy of the selected result</h2>"]
    klass = "guarantee" if tuning and tuning.epsilon is not None else "warn"
    statement = tuning.statement if tuning else "No tuning accounting."
    sel_html = "".join(f"<p>{html.escape(s)}</p>" for s in sel_lines)
    body.append(f"<div class='{klass}'><p>{html.escape(statement)}</p>{sel_html}</div>")
    if tun_body:
        body.append(_html_table(tun_head, tun_body))
    if notes:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Plots</h2>")
    for title, data in plots.values():
        if data is not None:
            b64 = base64.b64encode(data).decode()
            body.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                        f"src='data:image/png;base64,{b64}'>")
    body += ["<h2>Settings (seeds grouped)</h2>", _html_table(group_head, group_body), "<h2>All points</h2>",
             _html_table(point_head, point_body)]
    if failed:
        body += ["<h2>Failed points</h2>", _html_table(fail_head, fail_body)]
    body += ["<h2>How to read this</h2>", f"<p>{html.escape(reading)}</p>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Sweep report: {html.escape(name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    html_path = out / "report.html"
    html_path.write_text(page)
    return [md_path, html_path]
