"""Ledgers are durable, append-only and never silently repaired; budgets are checked before a release."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from dpfl.privacy import (
    BudgetCheck,
    DpSgdRelease,
    GaussianRelease,
    Ledger,
    LedgerError,
    check_budget,
    effective_budget,
    epsilon,
)

DELTA = 1e-5


def _fill(ledger: Ledger, rounds: int = 3) -> list[DpSgdRelease]:
    releases = []
    for r in range(1, rounds + 1):
        release = DpSgdRelease(1.0, 0.05, 20, r)
        releases.append(release)
        ledger.append(release, delta=DELTA, accountant="pld", epsilon=epsilon(releases, DELTA), client="c-1")
    return releases


def test_append_reload_equality(tmp_path: Path) -> None:
    path = tmp_path / "ledgers" / "c-1.jsonl"
    ledger = Ledger(path)
    releases = _fill(ledger)
    assert path.exists() and len(ledger) == 3
    again = Ledger.load(path)
    assert again == ledger and again.entries == ledger.entries and again.releases == releases
    assert path.read_text() == ledger.to_jsonl() == Ledger.from_jsonl(path.read_text()).to_jsonl()
    first = json.loads(path.read_text().splitlines()[0])
    body = {"round": 1, "mechanism": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.05,
            "steps": 20, "delta": DELTA, "accountant": "pld",
            "epsilon": epsilon(releases[:1], DELTA), "client": "c-1",
            "prev_hash": hashlib.sha256(b"dpfl-ledger-chain-v1").hexdigest()}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert first == {**body, "hash": digest}  # SHA-256 of the canonical JSON without "hash", chained
    second = json.loads(path.read_text().splitlines()[1])
    assert second["prev_hash"] == digest and again.head == json.loads(path.read_text().splitlines()[2])["hash"]
    eps = [e["epsilon"] for e in again.entries]
    assert eps == sorted(eps) and eps[-1] == epsilon(again.releases, DELTA)
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left behind


def test_mixed_mechanisms_and_in_memory_ledgers() -> None:
    ledger = Ledger()
    ledger.append(GaussianRelease(1.0, 0.1, 1, 1), delta=DELTA, accountant="rdp", epsilon=0.5)
    ledger.append(DpSgdRelease(1.0, 0.1, 5, 2), delta=DELTA, accountant="rdp", epsilon=0.9)
    assert ledger.path is None
    copy = Ledger.from_jsonl(ledger.to_jsonl())
    assert copy == ledger
    assert [type(r) for r in copy.releases] == [GaussianRelease, DpSgdRelease]


def test_entries_are_a_read_only_view(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
    _fill(ledger, 1)
    ledger.entries[0]["epsilon"] = 0.0
    ledger.entries.clear()
    assert len(ledger) == 1 and ledger.entries[0]["epsilon"] > 0


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda text: text[:-9], "truncated"),  # the last line cut mid-write
    (lambda text: text.replace("\n", "\n{oops\n", 1), ":2"),  # garbage inside
    (lambda text: text.replace("\n", "\n\n", 1), "blank line"),
    (lambda text: text + '{"round": 4}\n', "lacks"),
    (lambda text: text + "[1, 2]\n", "JSON object"),
    (lambda text: text.replace('"sample_rate": 0.05', '"sample_rate": 1.5', 1), "sample rate"),
])
def test_corrupt_file_is_an_error_never_silently_dropped(tmp_path: Path, damage, needle: str) -> None:
    path = tmp_path / "l.jsonl"
    _fill(Ledger(path))
    path.write_text(damage(path.read_text()))
    with pytest.raises(LedgerError, match=needle):
        Ledger.load(path)


def test_append_only_refuses_to_rewrite_history(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(Ledger(path), 2)
    before = path.read_text()
    stale = Ledger(path)  # a fresh ledger at the same path: writing it would drop two entries
    with pytest.raises(LedgerError, match="not a prefix"):
        stale.append(DpSgdRelease(1.0, 0.05, 20, 1), delta=DELTA, accountant="pld", epsilon=1.0)
    assert path.read_text() == before and len(stale) == 0
    # two copies of one ledger: the first to append wins, the other must reload
    a, b = Ledger.load(path), Ledger.load(path)
    a.append(DpSgdRelease(1.0, 0.05, 20, 3), delta=DELTA, accountant="pld", epsilon=2.0)
    with pytest.raises(LedgerError):
        b.append(DpSgdRelease(2.0, 0.05, 20, 3), delta=DELTA, accountant="pld", epsilon=2.0)
    assert Ledger.load(path) == a


def test_a_failed_write_leaves_the_old_file_and_no_entry(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    _fill(ledger, 2)
    before = path.read_text()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ledger.append(DpSgdRelease(1.0, 0.05, 20, 3), delta=DELTA, accountant="pld", epsilon=3.0)
    monkeypatch.undo()
    assert path.read_text() == before and len(ledger) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.jsonl"]


def test_append_validates_what_it_records(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
    release = DpSgdRelease(1.0, 0.05, 20, 1)
    with pytest.raises(ValueError, match="overwrite"):
        ledger.append(release, delta=DELTA, accountant="pld", epsilon=1.0, steps=3)
    with pytest.raises(ValueError, match="delta"):
        ledger.append(release, delta=0.0, accountant="pld", epsilon=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        ledger.append(release, delta=DELTA, accountant="pld", epsilon=float("nan"))
    assert len(ledger) == 0 and not (tmp_path / "l.jsonl").exists()


# --- budgets --------------------------------------------------------------------------------------------
def test_budget_is_checked_before_the_release() -> None:
    releases = [DpSgdRelease(1.0, 0.05, 20, r) for r in range(1, 4)]
    nxt = DpSgdRelease(1.0, 0.05, 20, 4)
    now, after = epsilon(releases, DELTA), epsilon([*releases, nxt], DELTA)
    ok = check_budget(releases, nxt, DELTA, budget=after)
    assert ok == BudgetCheck(True, now, after, after, ok.reason) and "within budget" in ok.reason
    no = check_budget(releases, nxt, DELTA, budget=(now + after) / 2)
    assert not no.allowed and "budget" in no.reason and no.epsilon_after == after
    assert check_budget(releases, nxt, DELTA, budget=0).allowed
    assert check_budget([], nxt, DELTA, budget=-1).epsilon_now == 0.0
    assert not check_budget(releases, nxt, DELTA, budget=(now + after) / 2, accountant="rdp").allowed
    with pytest.raises(ValueError, match="budget"):
        check_budget(releases, nxt, DELTA, budget=float("nan"))
    assert effective_budget(3.0, 0.0) == 3.0 and effective_budget(0.0, 2.0) == 2.0
    assert effective_budget(3.0, 2.0) == 2.0 and effective_budget(0.0, 0.0) == 0.0
