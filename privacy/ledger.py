"""A ledger: the append-only, durable list of one party's releases.

Written with a temp file, fsync and an atomic rename before the result it pays for leaves the
party, so a crash leaves either the old ledger or the new one, never a torn one. Entries are never
removed or rewritten: a ledger is data.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from privacy.releases import Release, release_from_dict


class LedgerError(RuntimeError):
    """A ledger file is unreadable or would lose entries."""


class Ledger:
    def __init__(self, path: str | Path | None = None, entries: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = list(entries or [])

    @classmethod
    def from_jsonl(cls, text: str, path: str | Path | None = None) -> Ledger:
        entries = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                where = f"{path}:{n}" if path else f"line {n}"
                raise LedgerError(f"ledger {where} is corrupt ({exc.msg}); it is never repaired silently: "
                                  "restore it from a backup or inspect it by hand") from None
            release_from_dict(entry)  # validates the release fields
            entries.append(entry)
        return cls(path, entries)

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        p = Path(path)
        return cls.from_jsonl(p.read_text(), p)

    @property
    def entries(self) -> tuple[dict[str, Any], ...]:
        return tuple(self._entries)

    @property
    def releases(self) -> list[Release]:
        return [release_from_dict(e) for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e, sort_keys=True) + "\n" for e in self._entries)

    def append(self, release: Release, *, delta: float, accountant: str, epsilon: float, **extra: Any) -> dict:
        entry = {**release.to_dict(), "delta": float(delta), "accountant": accountant, "epsilon": float(epsilon),
                 **extra}
        self._entries.append(entry)
        try:
            self.save()
        except BaseException:
            self._entries.pop()
            raise
        return entry

    def save(self) -> None:
        """Write the whole ledger durably; refuses to write if the file on disk is not a prefix of it."""
        if self.path is None:
            return
        if self.path.exists():
            on_disk = Ledger.load(self.path)._entries
            if self._entries[: len(on_disk)] != on_disk:
                raise LedgerError(f"{self.path} holds entries this ledger does not: refusing to overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_jsonl())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
