"""A ledger: the append-only, durable list of one party's releases.

It is written (temp file, fsync, atomic rename, fsync of the directory) *before* the result it pays for
leaves the party, so a crash leaves the old ledger or the new one, never a torn one, and a release is
never unaccounted for. Entries are never removed or rewritten: a ledger is evidence, so a file that
cannot be read in full is an error to look at, not something to repair silently.

Tamper evidence (``privacy/ledger_chain.py``): every entry is checked field by field when read and carries
``prev_hash`` and ``hash``, a SHA-256 chain, so an edited, deleted, inserted or reordered entry is an error
(``LedgerTamperedError``). Truncation, deletion or a re-hashed rewrite only show against a copy of the
ledger's length and head kept elsewhere: its keeper records ``len(ledger)`` and ``ledger.head`` after every
append (the ``after_write`` hook runs inside the write's directory lock) and passes them back as
``Ledger.load(path, expect=(count, head))`` or ``ledger.verify_against(count, head)``. ``check_epsilon=True``
also re-derives the stored epsilons (``ledger_chain.check_epsilons``); the run directory's readers leave it off
because the privacy report re-derives and reports every epsilon itself. Entries written before the chain
(no ``hash``) are read as a legacy prefix and chained from (see ``ledger_chain``).
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dpfl.privacy.ledger_chain import (
    GENESIS,
    HASH_KEYS,
    LedgerError,
    LedgerTamperedError,
    chain_heads,
    check_entry_fields,
    check_epsilons,
    entry_hash,
    tampered,
)
from dpfl.privacy.releases import Release, release_from_dict

__all__ = ["ENTRY_KEYS", "GENESIS", "Ledger", "LedgerError", "LedgerTamperedError", "directory_lock"]

ENTRY_KEYS = ("round", "mechanism", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
              "epsilon")


def _check_entry(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise LedgerError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise LedgerError(f"{where}: entry lacks {', '.join(missing)}")
    try:
        release_from_dict(entry)
        check_entry_fields(entry)
    except ValueError as exc:
        raise LedgerError(f"{where}: {exc}") from None
    return entry


def _count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


@contextmanager
def directory_lock(directory: Path) -> Iterator[int]:
    """Hold the lock a ledger write takes on its directory (an exclusive flock; the directory must exist);
    yields the directory's fd. Inside it, save with ``lock_held=True``: the lock is not re-entrant."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        yield dir_fd
    finally:
        os.close(dir_fd)  # also releases the lock


class Ledger:
    """Append-only, durable list of one party's releases with the cumulative eps after each."""

    def __init__(self, path: str | Path | None = None) -> None:
        """``path``: the JSONL file this ledger is written to on every append; None: in memory only."""
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []
        self._heads: list[str] = []  # the head after each entry
        self._durable = 0  # how many entries are known to be on disk (read from it or written to it)
        # Called after every durable write, inside the directory lock (so it must not take it again): where
        # a keeper of this ledger's (length, head) records them, e.g. the client's state index.
        self.after_write: Callable[[Ledger], None] | None = None

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_jsonl(cls, text: str, path: str | Path | None = None, *, expect: tuple[int, str] | None = None,
                   ahead: int = 0, check_epsilon: bool = False) -> Ledger:
        """Parse JSONL text; any unreadable line (a torn write, a hand edit) is an error, never skipped.

        Every entry's fields and the hash chain are verified (LedgerTamperedError names the first broken
        entry); ``expect=(count, head)``: the length and head recorded elsewhere must match, the ledger at most
        ``ahead`` entries longer (``verify_against``); ``check_epsilon``: the stored epsilons are re-derived
        (``check_epsilons``)."""
        ledger = cls(path)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last entry
        for n, line in enumerate(lines, start=1):
            where = f"{path or 'ledger'}:{n}"
            if not line.strip():
                raise LedgerError(f"{where}: blank line inside the ledger; it is never repaired silently")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                last = " (the last line: a truncated write?)" if n == len(lines) else ""
                raise LedgerError(f"{where}: not valid JSON{last}: {exc.msg}; the ledger is never repaired "
                                  "silently - restore it from a copy or inspect it by hand") from None
            ledger._entries.append(_check_entry(entry, where))
        ledger._heads = chain_heads(ledger._entries, path or "ledger")
        ledger._durable = len(ledger._entries)
        if expect is not None:
            ledger.verify_against(*expect, ahead=ahead)
        if check_epsilon:
            ledger.check_epsilons()
        return ledger

    @classmethod
    def load(cls, path: str | Path, *, expect: tuple[int, str] | None = None, ahead: int = 0,
             check_epsilon: bool = False) -> Ledger:
        """Read an existing ledger file, verified as ``from_jsonl`` does. With ``expect=(count, head)`` a
        missing file is a LedgerTamperedError when count > 0 (else FileNotFoundError if there is none)."""
        p = Path(path)
        if expect is not None and expect[0] > 0 and not p.exists():
            raise tampered(p, f"the ledger is missing but {expect[0]} entries were recorded for it: it was deleted")
        return cls.from_jsonl(p.read_text(encoding="utf-8"), p, expect=expect, ahead=ahead,
                              check_epsilon=check_epsilon)

    # -- tamper evidence ----------------------------------------------------------------------------
    @property
    def head(self) -> str:
        """The hash of the last entry (``GENESIS`` when empty): with ``len``, what a keeper records."""
        return self._heads[-1] if self._heads else GENESIS

    def head_at(self, count: int) -> str:
        """The head this ledger had when it held its first ``count`` entries."""
        if not 0 <= count <= len(self._entries):
            raise ValueError(f"count {count!r} is not valid: this ledger holds {len(self._entries)} entries")
        return self._heads[count - 1] if count else GENESIS

    def verify_against(self, count: int, head: str, *, ahead: int = 0,
                       recorded: str = "the recorded head") -> None:
        """LedgerTamperedError unless this ledger is the one whose length and head were recorded as
        (``count``, ``head``), or extends it by at most ``ahead`` entries (a crash between writing the
        ledger and recording its head leaves it one ahead). ``recorded`` names the record in the message."""
        n, where = len(self._entries), self.path or "ledger"
        if n < count:
            what = "is empty" if n == 0 else f"holds {_count(n)}"
            raise tampered(where, f"the ledger {what} but {recorded} says {count}: it was truncated or emptied")
        if self.head_at(count) != head:
            at = "its head does" if n == count else f"its first {count} entries do"
            raise tampered(where, f"{at} not match {recorded} ({count} entries, head {head[:12]}...): the ledger "
                                  "was rewritten or replaced")
        if n > count + ahead:
            raise tampered(where, f"the ledger holds {_count(n)} but {recorded} says {count}: entries were "
                                  "added outside dpfl")

    def check_epsilons(self) -> None:
        """Re-derive the stored epsilons (``ledger_chain.check_epsilons``); LedgerTamperedError on a mismatch."""
        check_epsilons(self._entries, self.path or "ledger")

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Copies of the entries: changing them cannot change the ledger."""
        return copy.deepcopy(self._entries)

    @property
    def releases(self) -> list[Release]:
        return [release_from_dict(e) for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ledger) and self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Ledger(path={str(self.path) if self.path else None!r}, entries={len(self._entries)})"

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e, sort_keys=True) + "\n" for e in self._entries)

    # -- writing ------------------------------------------------------------------------------------
    def append(self, release: Release, *, delta: float, accountant: str, epsilon: float,
               **extra: Any) -> dict:
        """Record a release durably (on disk before this returns, when the ledger has a path).

        ``epsilon`` is the cumulative epsilon after this release, as ``accountant`` computed it at ``delta``.
        """
        clash = sorted(set(extra) & {*ENTRY_KEYS, *HASH_KEYS})
        if clash:
            raise ValueError(f"extra fields {clash} would overwrite the release's own fields")
        if not (0 < delta < 1):
            raise ValueError(f"delta {delta!r} is not valid: expected a number in (0, 1)")
        if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"epsilon {epsilon!r} is not valid: expected a finite number >= 0")
        entry = {**release.to_dict(), "delta": float(delta), "accountant": str(accountant),
                 "epsilon": float(epsilon), **extra}
        entry = json.loads(json.dumps(entry))  # what a reload will see (and fails now if not JSON-able)
        try:
            check_entry_fields(entry)
        except ValueError as exc:
            raise ValueError(f"refusing to record it: {exc}") from None
        entry["prev_hash"] = self.head
        entry["hash"] = entry_hash(entry)
        self._entries.append(entry)
        self._heads.append(entry["hash"])
        try:
            self.save()
        except BaseException:
            if self._durable < len(self._entries):  # not written; a failing after_write keeps the entry
                self._entries.pop()
                self._heads.pop()
            raise
        return copy.deepcopy(entry)

    def save(self, *, lock_held: bool = False) -> None:
        """Write the whole ledger durably, then call ``after_write`` (still inside the directory lock). Refuses
        if the file on disk holds entries this ledger does not (append-only: what is on disk must be a prefix
        of what is written). ``lock_held``: the caller holds ``directory_lock`` of the directory already."""
        if self.path is None:
            return
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        if lock_held:
            dir_fd = os.open(directory, os.O_RDONLY)  # for the fsync only: the caller holds the lock
            try:
                self._save_locked(dir_fd)
            finally:
                os.close(dir_fd)
        else:
            with directory_lock(directory) as dir_fd:  # one writer per directory: check-then-write is atomic
                self._save_locked(dir_fd)

    def _save_locked(self, dir_fd: int) -> None:
        assert self.path is not None
        directory = self.path.parent
        if self.path.exists():
            on_disk = Ledger.load(self.path)._entries
            if self._entries[: len(on_disk)] != on_disk:
                raise LedgerError(f"{self.path} holds {len(on_disk)} entries that are not a prefix of "
                                  f"this ledger's {len(self._entries)}: refusing to rewrite history")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_jsonl())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.fsync(dir_fd)
        self._durable = len(self._entries)
        if self.after_write is not None:
            self.after_write(self)
