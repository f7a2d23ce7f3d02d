"""A ledger that was edited, truncated, emptied or deleted is refused, never read as a fresh start (issue 13)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from dpfl.client import ledger_store
from dpfl.client.ledger_store import (
    INDEX_FILE,
    ClientLedgerTamperedError,
    LedgerConflictError,
    index_record,
    load_ledger,
    remember,
)
from dpfl.privacy import DpSgdRelease, GaussianRelease, Ledger, epsilon
from dpfl.privacy.ledger import GENESIS, LedgerError, LedgerTamperedError
from dpfl.privacy.ledger_chain import BUILTIN_ACCOUNTANTS, entry_hash
from dpfl.privacy.rundata import load_run

DELTA = 1e-5


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _pay(ledger: Ledger, r: int, *, delta: float = DELTA, accountant: str = "pld", run: str = "runs/a",
         sigma: float = 1.0) -> None:
    """Pay as the ClientApp does: epsilon composed over every earlier release in the ledger."""
    release = DpSgdRelease(sigma, 0.02, 50, round=r)
    eps = epsilon([*ledger.releases, release], delta, accountant)
    ledger.append(release, delta=delta, accountant=accountant, epsilon=eps, run=run, neighbouring="add-remove")


def _paid(tmp_path: Path, rounds: int = 3) -> Path:
    """A client ledger of ``rounds`` entries written through the store (so its state index knows it)."""
    path = tmp_path / "state" / "client-000.jsonl"
    ledger = load_ledger(_context(), path)
    for r in range(1, rounds + 1):
        _pay(ledger, r)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _refused(path: Path, needle: str, ctx: Context | None = None) -> str:
    with pytest.raises(ClientLedgerTamperedError, match=needle) as info:
        load_ledger(ctx or _context(), path)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message and "restore it from a backup" in message
    assert "never delete" in message and "refuses to train" in message
    assert isinstance(info.value, LedgerConflictError) and isinstance(info.value, LedgerTamperedError)
    return message


# -- what the chain and the fields catch ------------------------------------------------------------------
def test_the_index_records_every_append(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    ledger = Ledger.load(path, check_epsilon=True)
    assert index_record(path) == {"count": 3, "head": ledger.head}
    assert _lines(path)[0]["prev_hash"] == GENESIS
    assert [e["prev_hash"] for e in _lines(path)[1:]] == [e["hash"] for e in _lines(path)[:-1]]
    assert all(entry_hash(e) == e["hash"] for e in _lines(path))
    assert len(load_ledger(_context(), path)) == 3


def test_edited_sigma_is_detected(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    entries = _lines(path)
    entries[1]["noise_multiplier"] = 5.0  # a larger sigma: a smaller epsilon, if it were believed
    _write(path, entries)
    _refused(path, r"entry 2 \(round 2\)'s hash does not match its content: the file was edited")
    with pytest.raises(LedgerTamperedError, match="entry 2"):
        Ledger.load(path)  # every reader sees it, the report's included


def test_edited_epsilon_is_detected_by_the_hash_and_by_re_deriving_it(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    entries = _lines(path)
    entries[-1]["epsilon"] /= 2
    _write(path, entries)
    _refused(path, "entry 3 .*hash does not match")
    # a forger who re-hashes the chain and rewrites the index still meets the accountant
    prev = GENESIS
    for e in entries:
        e["prev_hash"] = prev
        e["hash"] = prev = entry_hash(e)
    _write(path, entries)
    index = json.loads((path.parent / INDEX_FILE).read_text())
    index["ledgers"][path.name]["head"] = prev
    (path.parent / INDEX_FILE).write_text(json.dumps(index))
    Ledger.load(path)  # the chain itself is consistent now ...
    _refused(path, r"entry 3 \(round 3\) says epsilon .* but its 3 release\(s\) give")  # ... the number is not


def test_deleted_middle_line_is_detected(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    entries = _lines(path)
    _write(path, [entries[0], entries[2]])
    _refused(path, r"entry 2 \(round 3\) does not follow entry 1's hash: entries before it were deleted")


@pytest.mark.parametrize("invalid", [{"round": 0}, {"steps": 2.5}, {"delta": 1.0}, {"epsilon": -1.0},
                                     {"accountant": "gdp"}, {"neighbouring": "sideways"}, {"hash": "xyz"}])
def test_every_field_is_validated(tmp_path: Path, invalid: dict) -> None:
    path = _paid(tmp_path, 2)
    entries = _lines(path)
    entries[0].update(invalid)
    _write(path, entries)
    key = next(iter(invalid))
    with pytest.raises(LedgerError, match=f"client-000.jsonl:1: .*{key.replace('_', ' ')}"):
        Ledger.load(path)
    with pytest.raises(LedgerConflictError, match="client-000.jsonl:1"):
        load_ledger(_context(), path)


def test_epsilon_infinite_or_round_zero_is_never_recorded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="epsilon"):
        ledger.append(DpSgdRelease(1.0, 0.1, 5, 1), delta=DELTA, accountant="pld", epsilon=float("inf"))
    with pytest.raises(ValueError, match="round 0"):
        ledger.append(DpSgdRelease(1.0, 0.1, 5, 0), delta=DELTA, accountant="pld", epsilon=1.0)
    with pytest.raises(ValueError, match="accountant"):
        ledger.append(DpSgdRelease(1.0, 0.1, 5, 1), delta=DELTA, accountant="gdp", epsilon=1.0)
    with pytest.raises(ValueError, match="overwrite"):
        ledger.append(DpSgdRelease(1.0, 0.1, 5, 1), delta=DELTA, accountant="pld", epsilon=1.0, hash="0" * 64)
    assert len(ledger) == 0 and not (tmp_path / "l.jsonl").exists()
    from dpfl.privacy.accountants import ACCOUNTANT_REGISTRY
    assert set(BUILTIN_ACCOUNTANTS) <= set(ACCOUNTANT_REGISTRY)


# -- what only the state index catches ------------------------------------------------------------------------
def test_truncated_ledger_is_detected_via_the_index(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    _write(path, _lines(path)[:2])
    Ledger.load(path, check_epsilon=True)  # a valid chain on its own: only the index knows
    msg = _refused(path, "the ledger holds 2 entries but the state index .* says 3: it was truncated")
    assert INDEX_FILE in msg


def test_deleted_ledger_is_detected_via_the_index(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    path.unlink()
    _refused(path, "the ledger is missing but the state index .* says it held 3 entries: it was deleted")
    assert not path.exists()  # nothing recreated from zero


def test_emptied_ledger_is_detected(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    path.write_text("")
    _refused(path, "the ledger is empty but the state index .* says 3")
    assert path.read_text() == ""


def test_replaced_ledger_is_detected(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    other = Ledger(tmp_path / "other.jsonl")
    for r in (1, 2, 3):
        _pay(other, r, sigma=3.0)
    path.write_text((tmp_path / "other.jsonl").read_text())  # a valid chain, honest epsilons, other releases
    _refused(path, "its head does not match the state index .*: the ledger was rewritten or replaced")


def test_deleted_or_damaged_index_is_detected(tmp_path: Path) -> None:
    path = _paid(tmp_path)
    index = path.parent / INDEX_FILE
    text = index.read_text()
    index.write_text(text[:-5])
    _refused(path, "ledger-index.json: the state index is unreadable")
    index.unlink()
    _refused(path, "the ledger holds 3 chained entries but the state index .* has no record of it")
    index.write_text(text)
    assert len(load_ledger(_context(), path)) == 3


def test_more_than_one_entry_ahead_of_the_index_is_refused(tmp_path: Path) -> None:
    path = _paid(tmp_path, 2)
    outside = Ledger.load(path)  # no after_write: the index never hears of these
    _pay(outside, 3)
    _pay(outside, 4)
    _refused(path, "the ledger holds 4 entries but the state index .* says 2: entries were added outside dpfl")


def test_a_crash_between_the_ledger_write_and_the_index_write_is_accepted_and_repaired(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _paid(tmp_path, 2)
    ledger = load_ledger(_context(), path)

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(ledger_store, "_write_index", crash)
    with pytest.raises(OSError, match="power cut"):
        _pay(ledger, 3)  # the ledger is durable, its index record is not
    monkeypatch.undo()
    assert len(ledger) == 3 and len(Ledger.load(path)) == 3  # the entry stays: it is on disk
    assert index_record(path)["count"] == 2
    again = load_ledger(_context(), path)
    assert len(again) == 3 and index_record(path) == {"count": 3, "head": again.head}  # repaired
    _pay(again, 4)
    assert index_record(path)["count"] == 4 and len(load_ledger(_context(), path)) == 4


def test_a_faithful_copy_in_context_state_still_restores_a_deleted_ledger(tmp_path: Path) -> None:
    ctx, path = _context(), tmp_path / "state" / "client-000.jsonl"
    ledger = load_ledger(ctx, path)
    for r in (1, 2):
        _pay(ledger, r)
    remember(ctx, ledger)
    path.unlink()
    assert load_ledger(ctx, path) == ledger and Ledger.load(path) == ledger  # restored, not reset
    stale = _context()
    remember(stale, Ledger.from_jsonl("".join(json.dumps(e) + "\n" for e in ledger.entries[:1])))
    path.unlink()
    _refused(path, "missing", stale)  # a copy short of what the index recorded cannot restore it


# -- honest ledgers ---------------------------------------------------------------------------------------------
def test_an_honest_multi_run_ledger_loads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hospital.jsonl"
    ledger = load_ledger(_context(), path)
    for r in (1, 2, 3):
        _pay(ledger, r, run="runs/a")
    for r in (1, 2):  # a second run on the same records, at another delta and accountant: composes all five
        _pay(ledger, r, run="runs/b", delta=1e-6, accountant="rdp")
    ledger.append(GaussianRelease(2.0, 0.5, 1, 3), delta=1e-6, accountant="rdp", run="runs/b",
                  epsilon=epsilon([*ledger.releases, GaussianRelease(2.0, 0.5, 1, 3)], 1e-6, "rdp"))
    again = load_ledger(_context(), path)
    assert again == ledger and len(again) == 6 and again.head == ledger.head
    assert Ledger.load(path, expect=(6, ledger.head), check_epsilon=True) == ledger


def test_a_legacy_ledger_is_adopted_then_chained(tmp_path: Path) -> None:
    path = tmp_path / "state" / "client-000.jsonl"
    path.parent.mkdir()
    honest = Ledger()
    for r in (1, 2):
        _pay(honest, r)
    legacy = [{k: v for k, v in e.items() if k not in ("hash", "prev_hash")} for e in honest.entries]
    _write(path, legacy)  # as an older dpfl wrote it: no hashes, no index
    ledger = load_ledger(_context(), path)
    assert len(ledger) == 2 and index_record(path) == {"count": 2, "head": ledger.head}  # adopted
    assert ledger.head == honest.head  # the virtual chain is the one a chained ledger would have
    _pay(ledger, 3)
    entries = _lines(path)
    assert "hash" not in entries[0] and entries[2]["prev_hash"] == honest.head
    assert len(load_ledger(_context(), path)) == 3
    _write(path, [entries[1], entries[2]])  # a legacy line deleted: the first chained entry no longer follows
    _refused(path, "entry 2 .* does not follow")
    _write(path, [*entries, legacy[0]])  # an unchained line after chained ones
    with pytest.raises(LedgerTamperedError, match="entry 4 .*has no hash but follows chained entries"):
        Ledger.load(path)


# -- the server's keeper API ---------------------------------------------------------------------------------------
def test_a_keeper_of_heads_verifies_with_expect(tmp_path: Path) -> None:
    path = tmp_path / "ledgers" / "client-000.jsonl"
    ledger = Ledger(path)
    for r in (1, 2, 3):
        _pay(ledger, r)
    count, head = len(ledger), ledger.head
    assert Ledger.load(path, expect=(count, head)) == ledger
    Ledger.load(path).verify_against(2, ledger.head_at(2), ahead=1)  # a charge after the checkpoint
    assert len(Ledger.load(path, expect=(2, ledger.head_at(2)), ahead=1)) == 3
    with pytest.raises(LedgerTamperedError, match="says 1: entries were added outside dpfl"):
        Ledger.load(path, expect=(1, ledger.head_at(1)), ahead=1)
    with pytest.raises(LedgerTamperedError, match="holds 3 entries but the recorded head says 2"):
        Ledger.load(path, expect=(2, ledger.head_at(2)))
    _write(path, _lines(path)[:1])
    with pytest.raises(LedgerTamperedError, match="truncated"):
        Ledger.load(path, expect=(count, head))
    path.unlink()
    with pytest.raises(LedgerTamperedError, match="missing but 3 entries were recorded"):
        Ledger.load(path, expect=(count, head))
    assert Ledger().head == GENESIS


def test_the_run_directory_reader_names_a_tampered_client_ledger(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "ledgers").mkdir(parents=True)
    (run / "client-state").mkdir()
    own = run / "client-state" / "client-000.jsonl"
    own.write_text(_paid(tmp_path, 2).read_text())
    entries = _lines(own)
    entries[0]["noise_multiplier"] = 9.0
    _write(own, entries)
    data = load_run(run)
    assert "client-000" not in data.client_ledgers
    assert any("client-000" in w and "the file was edited" in w for w in data.warnings), data.warnings


# -- a federation: a ledger damaged between two runs on the same state directory ------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_clients_whose_ledgers_were_damaged_between_runs_do_not_train(tmp_path: Path) -> None:
    from test_owner_policy import entries, run, write_policy

    state = tmp_path / "state"
    policy = write_policy(tmp_path / "policy.toml", state)
    first = run(tmp_path, "first", policy)
    assert json.loads((first.run_path / "summary.json").read_text())["rounds_completed"] == 2
    files = {cid: state / f"hospital-{cid}.jsonl" for cid in ("client-000", "client-001", "client-002")}
    assert all(len(entries(p)) == 2 for p in files.values())
    edited = entries(files["client-000"])
    edited[0]["noise_multiplier"] *= 10  # edit sigma
    _write(files["client-000"], edited)
    files["client-001"].write_text(files["client-001"].read_text().splitlines(keepends=True)[0])  # truncate
    files["client-002"].unlink()  # delete
    before = {cid: p.read_text() if p.exists() else None for cid, p in files.items()}

    server_log, handler = logging.getLogger("dpfl.server"), _Lines()
    server_log.addHandler(handler)
    try:
        second = run(tmp_path, "second", policy)
    finally:
        server_log.removeHandler(handler)
    summary = json.loads((second.run_path / "summary.json").read_text())
    assert summary["rounds_completed"] == 0 and "nothing was trained" in summary["stop_reason"]
    assert {cid: p.read_text() if p.exists() else None for cid, p in files.items()} == before  # no reset
    assert not any(entries(p) for p in (second.run_path / "ledgers").glob("*.jsonl"))
    logged = handler.lines  # the server's log: each client's refusal, in one line
    for cid, needle in (("client-000", "hospital-client-000.jsonl: entry 1 (round 1)'s hash does not match its "
                                       "content: the file was edited"),
                        ("client-001", "hospital-client-001.jsonl: the ledger holds 1 entry but the state index"),
                        ("client-002", "hospital-client-002.jsonl: the ledger is missing but the state index")):
        server_saw = [line for line in logged if f"refused this run (ledger conflict): {cid}: " in line]
        assert server_saw and needle in server_saw[0] and "restore it from a backup" in server_saw[0], logged[-20:]
