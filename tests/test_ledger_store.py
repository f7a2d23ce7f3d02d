"""A client's ledger copies (context.state and disk) are reconciled, never rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from dpfl.client.ledger_store import LedgerConflictError, load_ledger, remember
from dpfl.privacy import DpSgdRelease, Ledger, epsilon


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _pay(ledger: Ledger, r: int) -> None:
    release = DpSgdRelease(1.0, 0.01, 100, round=r)  # the epsilon as the ClientApp writes it (re-derived on load)
    ledger.append(release, delta=1e-5, accountant="pld", epsilon=epsilon([*ledger.releases, release], 1e-5))


def test_deleted_disk_copy_is_restored_from_memory(tmp_path: Path) -> None:
    ctx, path = _context(), tmp_path / "client-000.jsonl"
    ledger = load_ledger(ctx, path)
    assert len(ledger) == 0 and not path.exists()  # nothing paid, nothing written
    _pay(ledger, 1)
    remember(ctx, ledger)
    path.unlink()
    again = load_ledger(ctx, path)
    assert len(again) == 1 and path.exists() and len(Ledger.load(path)) == 1


def test_longer_disk_copy_wins_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "client-000.jsonl"
    ledger = load_ledger(_context(), path)
    _pay(ledger, 1)
    _pay(ledger, 2)
    assert len(load_ledger(_context(), path)) == 2  # a fresh process has empty context.state


def test_disagreeing_copies_refuse_to_train(tmp_path: Path) -> None:
    ctx, path = _context(), tmp_path / "client-000.jsonl"
    ledger = load_ledger(ctx, path)
    _pay(ledger, 1)
    remember(ctx, ledger)
    other = Ledger(path=None)
    _pay(other, 7)
    _pay(other, 8)
    path.write_text(other.to_jsonl())
    with pytest.raises(LedgerConflictError):
        load_ledger(ctx, path)
    path.write_text("")
    _pay(other, 9)
    memory_longer = _context()
    remember(memory_longer, other)
    Ledger.load(path)  # empty file: a prefix of anything, ...
    with pytest.raises(LedgerConflictError, match="empty"):  # ... but the state index says it held round 1
        load_ledger(memory_longer, path)
    _pay(ledger, 2)
    _pay(ledger, 3)
    path.write_text("")
    faithful = _context()
    remember(faithful, ledger)  # a copy that extends what the index recorded: restored from memory
    assert len(load_ledger(faithful, path)) == 3 and Ledger.load(path) == ledger


def test_shorter_disk_copy_that_disagrees_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "client-000.jsonl"
    disk = Ledger(path)
    _pay(disk, 5)
    memory = Ledger(path=None)
    for r in (1, 2, 3):
        _pay(memory, r)
    ctx = _context()
    remember(ctx, memory)
    with pytest.raises(LedgerConflictError):
        load_ledger(ctx, path)
    assert Ledger.load(path).entries == disk.entries  # history on disk untouched
