"""A ledger: the append-only, durable list of one party's releases.

It is written (temp file, fsync, atomic rename, fsync of the directory) *before* the result it pays for
leaves the party, so a crash leaves the old ledger or the new one, never a torn one, and a release is
never unaccounted for. Entries are never removed or rewritten: a ledger is evidence, so a file that
cannot be read in full is an error to look at, not something to repair silently.
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dpfl.privacy.releases import Release, release_from_dict

__all__ = ["ENTRY_KEYS", "Ledger", "LedgerError"]

ENTRY_KEYS = ("round", "mechanism", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
              "epsilon")


class LedgerError(RuntimeError):
    """A ledger file is unreadable, or a write would lose or rewrite entries."""


def _check_entry(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise LedgerError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise LedgerError(f"{where}: entry lacks {', '.join(missing)}")
    try:
        release_from_dict(entry)
    except ValueError as exc:
        raise LedgerError(f"{where}: {exc}") from None
    return entry


class Ledger:
    """Append-only, durable list of one party's releases with the cumulative eps after each."""

    def __init__(self, path: str | Path | None = None) -> None:
        """``path``: the JSONL file this ledger is written to on every append; None: in memory only."""
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_jsonl(cls, text: str, path: str | Path | None = None) -> Ledger:
        """Parse JSONL text; any unreadable line (a torn write, a hand edit) is an error, never skipped."""
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
        return ledger

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        """Read an existing ledger file (FileNotFoundError if there is none)."""
        p = Path(path)
        return cls.from_jsonl(p.read_text(encoding="utf-8"), p)

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
        clash = sorted(set(extra) & set(ENTRY_KEYS))
        if clash:
            raise ValueError(f"extra fields {clash} would overwrite the release's own fields")
        if not (0 < delta < 1):
            raise ValueError(f"delta {delta!r} is not valid: expected a number in (0, 1)")
        if not (isinstance(epsilon, int | float) and not math.isnan(epsilon) and epsilon >= 0):
            raise ValueError(f"epsilon {epsilon!r} is not valid: expected a number >= 0")
        entry = {**release.to_dict(), "delta": float(delta), "accountant": str(accountant),
                 "epsilon": float(epsilon), **extra}
        entry = json.loads(json.dumps(entry))  # what a reload will see (and fails now if not JSON-able)
        self._entries.append(entry)
        try:
            self.save()
        except BaseException:
            self._entries.pop()
            raise
        return copy.deepcopy(entry)

    def save(self) -> None:
        """Write the whole ledger durably. Refuses if the file on disk holds entries this ledger does not
        (append-only: what is on disk must be a prefix of what is written)."""
        if self.path is None:
            return
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)  # one writer per directory: check-then-write is atomic
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
        finally:
            os.close(dir_fd)  # also releases the lock
