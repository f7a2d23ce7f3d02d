"""The privacy report: files, numbers equal to the run's, banners, early stop, re-checks, and a real browser."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, SKIP_REASON, colourful_pixels, screenshot, visible_images

from dpfl.privacy.accountants import epsilon_all, epsilon_per_release
from dpfl.privacy.releases import DpSgdRelease
from dpfl.privacy.report import accounting as report_accounting
from dpfl.privacy.report import write_report
from dpfl.privacy.report.document import build_document

DELTA = 1e-5
CLIENT_SCHEDULES: dict[str, Any] = {  # client: (sigma, q, steps per round, rounds it trained in) or releases
    "client-0": (1.1, 0.05, 20, [1, 2, 3, 4]),
    "client-1": (1.1, 0.05, 20, [1, 2, 4]),  # dropped in round 3
    "client-2": (1.1, 0.08, 13, [1, 3, 4]),  # not sampled in round 2
}


def _releases(schedule: Any) -> list[DpSgdRelease]:
    if isinstance(schedule, list):
        return schedule
    sigma, q, steps, trained = schedule
    return [DpSgdRelease(sigma, q, steps, r) for r in trained]


def make_run(root: Path, *, name: str = "run", schedules: dict[str, Any] | None = None, rounds: int = 4,
             dp: bool = True, deterministic_noise: bool = False, private_metrics: bool = False,
             stop_after: int | None = None, budget: float = 0.0) -> Path:
    """A run directory as the server writes it, with real epsilons from privacy.accountants (pld)."""
    schedules = CLIENT_SCHEDULES if schedules is None else schedules
    run = root / name
    (run / "ledgers").mkdir(parents=True)
    done = rounds if stop_after is None else stop_after
    statement = ["NOT PRIVATE: dp=false, this run has no differential-privacy guarantee."] if not dp else [
        "Sample-level DP for each client's records, composed over every round that client trained in."]
    if private_metrics:
        statement.append("private-metrics=true: clients also sent loss/accuracy computed on their private data; "
                         "the guarantee does NOT cover those values.")
    config = {"dataset": "digits", "model": "mlp", "num-clients": len(schedules), "num-server-rounds": rounds,
              "fraction-train": 1.0, "min-train-clients": 1, "local-epochs": 1, "batch-size": 32,
              "learning-rate": 0.1, "dp": dp, "noise-multiplier": 1.1, "max-grad-norm": 1.0, "target-epsilon": 0.0,
              "epsilon-budget": budget, "max-participations": 0, "delta": 0.0, "accountant": "pld", "seed": 42,
              "deterministic-noise": deterministic_noise, "private-metrics": private_metrics,
              "fraction-evaluate": 0.0, "partition": "iid", "dirichlet-alpha": 0.5,
              "resolved": {"delta": DELTA, "max-participations": rounds}, "privacy-statement": statement}
    (run / "config.json").write_text(json.dumps(config, indent=2))

    eps_after: dict[str, dict[int, float]] = {}
    trained_in = {cid: [r.round for r in _releases(sch)] for cid, sch in schedules.items()}
    for cid, schedule in schedules.items():
        releases = [r for r in _releases(schedule) if r.round <= done]
        trained = [r.round for r in releases]
        if not dp or not trained:
            continue
        cumulative = epsilon_per_release(releases, DELTA, "pld")
        lines = [json.dumps({**rel.to_dict(), "delta": DELTA, "accountant": "pld", "epsilon": eps, "client": cid})
                 for rel, eps in zip(releases, cumulative, strict=True)]
        (run / "ledgers" / f"{cid}.jsonl").write_text("\n".join(lines) + "\n")
        eps_after[cid] = dict(zip(trained, cumulative, strict=True))

    def eps_at(cid: str, r: int) -> float | None:
        past = [e for rr, e in eps_after.get(cid, {}).items() if rr <= r]
        return past[-1] if past else None

    rows = []
    for r in range(1, done + 1):
        eps = {c: e for c in schedules if (e := eps_at(c, r)) is not None} if dp else {}
        events = [{"client": "client-1", "event": "dropped", "reason": "no reply within the round timeout"}] \
            if r == 3 and "client-1" in schedules else []
        rows.append({"round": r, "accuracy": 0.5 + 0.1 * r, "loss": 1.0 / r if r != 2 else float("nan"),
                     "epsilon_max": max(eps.values(), default=0.0) if dp else None, "epsilon": eps,
                     "delta": DELTA, "participants": sum(1 for c in schedules if r in trained_in[c]),
                     "seconds": 1.5, "events": events})
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))  # NaN as Python writes it

    final = {c: eps_at(c, done) or 0.0 for c in schedules} if dp else {}
    clients = {}
    for cid, trained in trained_in.items():
        n = len([r for r in trained if r <= done])
        status, reason, events = "active", "", []
        if cid == "client-1" and done >= 3:
            events = [{"round": 3, "event": "dropped", "reason": "no reply within 600.0 s"}]
        if stop_after is not None:
            status, reason = "exhausted", f"budget exhausted: epsilon would exceed budget {budget:g}"
            events.append({"round": stop_after + 1, "event": "declined (budget)", "reason": reason})
        clients[cid] = {"participations": n, "status": status, "reason": reason, "epsilon": final.get(cid, 0.0),
                        "events": events, "last_release": None}
    summary = {
        "rounds_completed": done, "num_server_rounds": rounds,
        "stop_reason": "" if stop_after is None else
        f"round {stop_after + 1}: only 0 of {len(schedules)} connected clients may still train "
        "(min-train-clients is 1); the others are out of budget, at their participation cap or gone",
        "final_accuracy": rows[-1]["accuracy"], "final_loss": rows[-1]["loss"],
        "epsilon_max": max(final.values(), default=0.0) if dp else None, "delta": DELTA, "accountant": "pld",
        "epsilon_per_client": final, "clients": clients, "wall_seconds": 12.0,
        "not_private": (not dp) or deterministic_noise, "privacy_statement": statement,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


@pytest.fixture(scope="module")
def normal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = make_run(tmp_path_factory.mktemp("normal"))
    write_report(run)
    return run, json.loads((run / "report" / "report.json").read_text())


def test_files_are_written_and_valid(normal: tuple[Path, dict[str, Any]]) -> None:
    run, report = normal
    out = run / "report"
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["accuracy_per_round.png", "accuracy_vs_epsilon.png", "epsilon_per_round.png"]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in report.json"))

    md = (out / "report.md").read_text()
    for heading in ("## At a glance", "## 1. Privacy mechanism", "## 2. ε per client per round",
                    "## 3. Federation ε, budgets and events", "## 4. Accuracy", "## 5. Accountants side by side",
                    "## 6. Reproduction"):
        assert heading in md
    for png in pngs:
        assert f"](plots/{png})" in md

    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 3
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)  # nothing loaded from anywhere
    assert "NOT PRIVATE" not in html and "NOT PRIVATE" not in md


def test_numbers_equal_the_run(normal: tuple[Path, dict[str, Any]]) -> None:
    run, report = normal
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    eps = report["epsilon"]
    assert eps["rounds"] == [1, 2, 3, 4]
    assert eps["clients"] == ["client-0", "client-1", "client-2"]
    for i, row in enumerate(rows):
        for cid in eps["clients"]:
            assert eps["per_client"][cid][i] == row["epsilon"].get(cid)
        assert eps["stats"]["max"][i] == row["epsilon_max"]
        assert eps["stats"]["median"][i] == statistics.median(row["epsilon"].get(c, 0.0) for c in eps["clients"])
    fed = report["federation"]
    assert fed["epsilon"] == summary["epsilon_max"] and fed["delta"] == DELTA and fed["accountant"] == "pld"
    top = max(summary["epsilon_per_client"].values())
    assert fed["argmax_clients"] == [c for c, e in summary["epsilon_per_client"].items() if e == top]
    assert not fed["stopped_early"] and fed["stop_text"] == "ran all 4 rounds"
    assert {c["client"]: c["epsilon"] for c in report["clients"]} == summary["epsilon_per_client"]
    assert {c["client"]: c["participations"] for c in report["clients"]} == {
        "client-0": 4, "client-1": 3, "client-2": 3}
    assert report["events"] == [{"round": 3, "client": "client-1", "event": "dropped",
                                 "reason": "no reply within the round timeout"}]
    training = report["training"]["rounds"]
    assert [t["accuracy"] for t in training] == [row["accuracy"] for row in rows]
    assert training[1]["loss"] is None  # NaN in metrics.jsonl becomes null
    assert [t["epsilon_max"] for t in training] == [row["epsilon_max"] for row in rows]
    assert report["mechanism"]["delta"] == DELTA and report["mechanism"]["delta_source"] == "auto"
    assert report["mechanism"]["privacy_statement"] == summary["privacy_statement"]

    md = (run / "report" / "report.md").read_text()
    assert f"{summary['epsilon_max']:.4f}" in md and "client-1" in md and "dropped" in md


def test_accountants_recomputed_once_per_distinct_ledger(normal: tuple[Path, dict[str, Any]]) -> None:
    run, report = normal
    acc = report["accountants"]
    assert acc["ok"] and report["accounting_ok"] and not acc["mismatches"]
    assert all(c["ok"] for c in report["checks"])
    # client-0 trained 4 times; client-1 and client-2 3 times each but with different q: 3 distinct ledgers
    assert [d["clients"] for d in acc["distinct"]] == [["client-0"], ["client-1"], ["client-2"]]
    sigma, q, steps, trained = CLIENT_SCHEDULES["client-2"]
    expected = epsilon_all([DpSgdRelease(sigma, q, steps, r) for r in trained], DELTA)
    row = next(c for c in acc["clients"] if c["client"] == "client-2")
    assert row["recomputed"] == expected
    assert row["reported"] == pytest.approx(expected["pld"], rel=1e-12)
    assert expected["pld"] <= expected["rdp"]


def test_identical_ledgers_are_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schedules = {f"c{i}": (1.0, 0.1, 5, [1, 2, 3]) for i in range(25)}
    run = make_run(tmp_path, schedules=schedules, rounds=3)
    calls = []
    real = report_accounting.epsilon_all
    monkeypatch.setattr(report_accounting, "epsilon_all", lambda *a, **k: calls.append(a) or real(*a, **k))
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    assert len(report["accountants"]["distinct"]) == 1 and len(report["accountants"]["clients"]) == 25
    assert len(calls) == 2  # the ledger once, and the single-release CLI equivalent once
    # many clients: band plot, top-10 table in the documents, full table in report.json
    assert report["epsilon"]["plot_mode"] == "band" and report["epsilon"]["table_mode"] == "top-10"
    assert len(report["epsilon"]["table_clients"]) == 10 and len(report["epsilon"]["per_client"]) == 25
    md = (run / "report" / "report.md").read_text()
    assert "full table is in report.json" in md


def test_tampered_ledger_is_flagged(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "ledgers" / "client-2.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[-1]["epsilon"] *= 1 + 1e-4
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    assert not report["accounting_ok"] and not report["accountants"]["ok"]
    assert any(m.startswith("client-2") for m in report["accountants"]["mismatches"])
    assert "ACCOUNTING MISMATCH" in (run / "report" / "report.html").read_text()


def test_early_stop_and_declines_are_shown(tmp_path: Path) -> None:
    run = make_run(tmp_path, stop_after=2, budget=3.0)
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    fed = report["federation"]
    assert fed["stopped_early"] and fed["rounds_completed"] == 2 and fed["budget"] == 3.0
    assert fed["stop_text"].startswith("stopped early after round 2 of 4: round 3: only 0 of 3")
    declines = [e for e in report["events"] if e["event"].startswith("declined")]
    assert {e["client"] for e in declines} == set(CLIENT_SCHEDULES) and {e["round"] for e in declines} == {3}
    c0 = next(c for c in report["clients"] if c["client"] == "client-0")
    assert c0["status"] == "exhausted" and c0["remaining"] == pytest.approx(3.0 - c0["epsilon"])
    for name in ("report.md", "report.html"):
        text = (run / "report" / name).read_text()
        assert "stopped early after round 2 of 4" in text and "declined (budget)" in text


@pytest.mark.parametrize("kind", ["dp-off", "deterministic-noise", "private-metrics"])
def test_not_private_banner(tmp_path: Path, kind: str) -> None:
    run = make_run(tmp_path, dp=kind != "dp-off", deterministic_noise=kind == "deterministic-noise",
                   private_metrics=kind == "private-metrics")
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    banner = report["banner"]
    assert banner is not None and banner["title"].startswith("NOT PRIVATE")
    assert banner["not_private"] == (kind != "private-metrics")
    md, html = (run / "report" / "report.md").read_text(), (run / "report" / "report.html").read_text()
    assert "> ## ⚠ NOT PRIVATE" in md and 'class="banner"' in html
    if kind == "private-metrics":
        assert any("private-metrics" in line and "excludes" in line for line in banner["lines"])
    if kind == "dp-off":
        assert report["federation"]["epsilon"] is None and report["epsilon"]["clients"] == []
        assert not (run / "report" / "plots" / "epsilon_per_round.png").exists()
        assert html.count("data:image/png;base64,") == 1  # accuracy only


def test_missing_summary_still_reports(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "summary.json").unlink()
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 5, "accur')  # torn write
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["federation"]["stopped_early"] and not report["federation"]["finished"]
    assert any("summary.json" in w for w in report["warnings"]) and any("torn" in w for w in report["warnings"])
    assert report["accounting_ok"]


def test_reproduction_command_line(normal: tuple[Path, dict[str, Any]]) -> None:
    run, report = normal
    by_ledger = {d["id"]: d for d in report["accountants"]["distinct"]}
    for rep in report["reproduction"]:
        sched = rep["schedule"][0]
        assert rep["uniform"] and rep["total_steps"] == sched["steps_per_round"] * sched["rounds"]
        assert rep["command"] == (f"dpfl privacy epsilon --sample-rate {sched['sample_rate']!r} --noise-multiplier "
                                  f"{sched['noise_multiplier']!r} --steps {rep['total_steps']} --delta {DELTA!r} "
                                  "--accountant all")
        exact = rep["pld_discretization"] is not None  # else only close to dpfl's own PLD grid
        for name, value in rep["command_output"].items():  # one release of the total steps: the same numbers
            assert value == pytest.approx(by_ledger[rep["ledger"]]["recomputed"][name], rel=1e-9 if exact else 1e-3)
        assert rep["command_matches"] == exact or rep["command_matches"]
    assert "dpfl privacy epsilon --sample-rate" in (run / "report" / "report.md").read_text()
    cli = Path(__file__).resolve().parents[1] / "simulations" / "cli" / "main.py"
    if not cli.exists():
        pytest.skip("simulations/cli/main.py is not there: cannot run the printed command line")
    rep = report["reproduction"][-1]
    args = shlex.split(rep["command"])[1:]
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args, "--json"], capture_output=True,
                          text=True, cwd=cli.parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epsilon"] == pytest.approx(rep["command_output"], rel=1e-9)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=SKIP_REASON)
def test_html_renders_in_headless_chromium(normal: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = normal
    html = (run / "report" / "report.html").read_text()
    # 1. every <img> decodes and is drawn at a readable size
    assert visible_images(html, tmp_path)[:2] == (3, 3)
    # 2. the report itself (CSP intact) shows its plots: the screenshot holds most of the plots' coloured pixels
    png = screenshot(html, tmp_path)
    in_plots = sum(colourful_pixels(p) for p in (run / "report" / "plots").glob("*.png"))
    assert colourful_pixels(png) >= 0.7 * in_plots > 0


def test_changing_schedules_are_reproduced(tmp_path: Path) -> None:
    """Steps that change between rounds still fit one command line (same sigma and q); a changed sigma does not,
    and the generated dp-accounting / Opacus snippet reproduces the ledger's numbers."""
    schedules = {"steps-change": [DpSgdRelease(1.0, 0.1, n, r) for r, n in ((1, 10), (2, 12), (3, 12))],
                 "sigma-change": [DpSgdRelease(s, 0.1, 10, r) for r, s in ((1, 1.0), (2, 1.3), (3, 1.3))]}
    run = make_run(tmp_path, schedules=schedules, rounds=3)
    write_report(run)
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["accounting_ok"]
    reps = {rep["clients"][0]: rep for rep in report["reproduction"]}
    steps = reps["steps-change"]
    assert not steps["uniform"] and steps["total_steps"] == 34 and steps["command_matches"]
    assert [(x["steps_per_round"], x["rounds"]) for x in steps["schedule"]] == [(10, 1), (12, 2)]
    sigma = reps["sigma-change"]
    assert sigma["command"] is None and sigma["command_output"] is None
    # the document prints one full snippet (the ledger with the federation's epsilon) and, for the others, the
    # three lines to put in its place: run that combination for the sigma-change ledger
    _, sections = build_document(report)
    codes = [b[2] for sec in sections for b in sec.blocks if b[0] == "code" and b[1] == "python"]
    full, short = sorted(codes, key=lambda c: "import" not in c)
    assert full == reps["steps-change"]["python"] and "import" not in short
    program = full[: full.index("delta = ")] + short + "\n" + full[full.index("# Composition only"):]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(program, {})
    printed = dict(line.split() for line in out.getvalue().splitlines())
    recomputed = next(d for d in report["accountants"]["distinct"] if d["clients"] == ["sigma-change"])["recomputed"]
    rel = 1e-9 if sigma["pld_discretization"] is not None else 1e-3
    for name in ("pld", "rdp", "prv"):
        assert float(printed[name]) == pytest.approx(recomputed[name], rel=rel), name
    assert "no single command line" in (run / "report" / "report.md").read_text()
