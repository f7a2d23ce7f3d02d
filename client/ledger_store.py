"""A client's own privacy ledger: in ``context.state`` and durably on disk, its length and head in a state index.

In deployment every message runs in a fresh process and a SuperNode keeps ``context.state`` in
memory only, so the disk copy is the authority; the in-memory copy covers runs without a state
directory. The two must agree (one a prefix of the other): the longer one wins and is written
back, anything else is refused, because a ledger is never silently rolled back.

Tamper evidence: each ledger is hash-chained (``privacy/ledger_chain.py``), and its directory holds a state
index, ``ledger-index.json`` (ledger file name -> ``{"count", "head"}``), rewritten atomically after every
append, inside the same directory lock: the ledger first, then the index. Every load (each terms query and
train instruction) verifies the chain and every field, re-derives the stored epsilons, and compares the
ledger with its index record, so an edited, truncated, emptied, deleted or replaced ledger is refused with
``ClientLedgerTamperedError`` - a ``LedgerConflictError``, which the ClientApp answers as a decline with
``wire.LEDGER_CONFLICT`` and a one-line reason - instead of restarting that client's epsilon from zero:

- a ledger exactly one entry ahead of its record (a crash between the two writes) is accepted and the
  record repaired; behind it, off it, or more than one ahead is refused;
- a ledger missing, emptied or cut short while ``context.state`` holds a copy that extends the record is
  restored from that copy (nothing is lost, as before);
- a chained ledger the index has no record of is refused (the index was deleted, or the file copied in);
  a legacy ledger (written before the chain: no hashes) with no record is adopted - recorded as it is - and
  chained from on its next append (``ledger_chain``: its entries get virtual hashes).

What this cannot see: the ledger and its index (or the whole directory) deleted or rewritten together. Keep
backups of the state directory; restore from them, never reset.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context

from dpfl.privacy.ledger import Ledger, LedgerError, LedgerTamperedError, directory_lock
from dpfl.privacy.ledger_chain import is_hash, tampered

STATE_KEY = "dpfl-ledger"
INDEX_FILE = "ledger-index.json"
INDEX_FORMAT = "dpfl-ledger-index/1"


class LedgerConflictError(RuntimeError):
    """The on-disk ledger and the in-memory one disagree: training would risk losing releases."""


class ClientLedgerTamperedError(LedgerConflictError, LedgerTamperedError):
    """The client's ledger on disk was edited, truncated, emptied, deleted or replaced: it refuses to train."""


def ledger_path(state_dir: str, client_id: str) -> Path | None:
    return Path(state_dir) / f"{client_id}.jsonl" if state_dir else None


def index_path(ledger_file: Path) -> Path:
    """The state index that records the length and head of ``ledger_file`` (beside it)."""
    return ledger_file.parent / INDEX_FILE


# -- the state index -------------------------------------------------------------------------------------
def read_index(directory: Path, checking: str = "") -> dict[str, tuple[int, str]]:
    """{ledger file name: (count, head)} of a state directory ({} when it has no index); a damaged index is a
    LedgerTamperedError (it is the evidence against truncation, so it is never rebuilt silently).
    ``checking``: the ledger file the index is read for, named in that error."""
    path = directory / INDEX_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("ledgers"),
                                                                                           dict):
            raise ValueError(f"expected an object with format {INDEX_FORMAT!r} and ledgers")
        out: dict[str, tuple[int, str]] = {}
        for name, rec in data["ledgers"].items():
            count, head = (rec.get("count"), rec.get("head")) if isinstance(rec, dict) else (None, None)
            if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0 and is_hash(head)):
                raise ValueError(f"the record of {name!r} is not {{count >= 0, head: SHA-256 hex}}")
            out[str(name)] = (count, str(head))
        return out
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        why = f"the state index is unreadable ({exc})" + (f", so {checking} cannot be checked" if checking else "")
        raise tampered(path, f"{why}: it was edited or damaged") from None


def _write_index(directory: Path, index: dict[str, tuple[int, str]]) -> None:
    """Atomically (temp file, fsync, rename, fsync of the directory); the caller holds the directory lock."""
    body = {"format": INDEX_FORMAT,
            "ledgers": {name: {"count": c, "head": h} for name, (c, h) in sorted(index.items())}}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{INDEX_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(body, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / INDEX_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _record_head(ledger: Ledger) -> None:
    """``Ledger.after_write``: record the ledger's new length and head (inside its write's directory lock)."""
    assert ledger.path is not None
    index = read_index(ledger.path.parent, ledger.path.name)
    if index.get(ledger.path.name) != (len(ledger), ledger.head):
        index[ledger.path.name] = (len(ledger), ledger.head)
        _write_index(ledger.path.parent, index)


def _extends(ledger: Ledger, record: tuple[int, str]) -> bool:
    count, head = record
    return len(ledger) >= count and ledger.head_at(count) == head


# -- loading ---------------------------------------------------------------------------------------------
def _index_problem(disk: Ledger | None, path: Path, record: tuple[int, str] | None) -> LedgerTamperedError | None:
    where = f"the state index {index_path(path)}"
    if record is None:
        chained = disk is not None and any("hash" in e for e in disk.entries)
        if chained:
            return tampered(path, f"the ledger holds {len(disk or [])} chained entries but {where} has no record "
                                  "of it: the index was deleted or edited, or the ledger was copied here")
        return None
    if disk is None:
        if record[0] == 0:
            return None
        return tampered(path, f"the ledger is missing but {where} says it held {record[0]} entries: it was deleted")
    try:
        disk.verify_against(*record, ahead=1, recorded=where)  # one ahead: a crash before the index write
    except LedgerTamperedError as exc:
        return exc
    return None


def _reconcile(memory: Ledger, path: Path) -> Ledger:
    """Inside the directory lock: the ledger to use, checked against the state index, which is repaired."""
    index = read_index(path.parent, path.name)
    record = index.get(path.name)
    disk = Ledger.load(path, check_epsilon=True) if path.exists() else None
    problem = _index_problem(disk, path, record)
    if problem is not None:
        # A faithful copy in context.state (it extends what the index recorded, and what is left on disk is a
        # prefix of it) restores the disk copy: nothing is lost. Anything else is refused.
        if not (record is not None and _extends(memory, record)
                and (disk is None or memory.entries[: len(disk)] == disk.entries)):
            raise problem
        disk = None
    if disk is not None and len(disk) >= len(memory):
        if disk.entries[: len(memory)] != memory.entries:
            raise LedgerConflictError(f"ledger in memory is not a prefix of {path}; refusing to train")
        chosen = disk
    else:
        chosen = memory
        if len(memory):
            # The disk copy is behind (deleted or never written): restore it. save() refuses to overwrite a
            # disk copy that is not a prefix of the one in memory.
            try:
                memory.save(lock_held=True)
            except LedgerError as exc:
                raise LedgerConflictError(f"{exc}; refusing to train") from None
    if len(chosen) and record != (len(chosen), chosen.head):
        index[path.name] = (len(chosen), chosen.head)  # one ahead, adopted legacy, or restored: record it
        _write_index(path.parent, index)
    return chosen


def load_ledger(context: Context, path: Path | None) -> Ledger:
    """The client's ledger, reconciled between context.state and disk (the longer copy wins) and verified
    against the state index; every later append records its new length and head there."""
    record = context.state.config_records.get(STATE_KEY)
    try:
        memory = Ledger.from_jsonl(str(record["jsonl"]) if record is not None else "", path=path)
    except LedgerError as exc:
        raise ClientLedgerTamperedError(f"the ledger copy in context.state is not valid ({exc}); refusing "
                                        "to train") from None
    if path is None:
        return memory
    if not path.parent.is_dir():
        if not len(memory):
            memory.after_write = _record_head
            return memory  # nothing was ever written here; the first append creates the directory
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with directory_lock(path.parent):
            ledger = _reconcile(memory, path)
    except LedgerConflictError:
        raise
    except LedgerError as exc:
        raise ClientLedgerTamperedError(f"{exc}; this client refuses to train until then") from None
    ledger.after_write = _record_head
    return ledger


def remember(context: Context, ledger: Ledger) -> None:
    """Mirror the ledger into context.state (after it is durable on disk)."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"jsonl": ledger.to_jsonl()})


def index_record(ledger_file: Path) -> dict[str, Any] | None:
    """The state index's record of ``ledger_file`` as ``{"count", "head"}`` (None when it has none)."""
    rec = read_index(ledger_file.parent, ledger_file.name).get(ledger_file.name)
    return None if rec is None else {"count": rec[0], "head": rec[1]}
