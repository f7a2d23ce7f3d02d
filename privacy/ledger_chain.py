"""The tamper evidence of a ledger: every entry's fields checked, a SHA-256 hash chain, the stored epsilons re-derived.

Each entry carries ``prev_hash`` (the previous entry's ``hash``; ``GENESIS`` for the first) and ``hash``, the
SHA-256 of the canonical JSON (sorted keys, compact separators, ASCII, no NaN) of the entry without ``hash``.
An edited entry no longer matches its own hash; a deleted, inserted or reordered entry breaks the link of the
one after it. What a chain alone cannot see - the last entries cut off, the whole file deleted or emptied, or
a file rewritten and re-hashed from scratch - is caught by comparing the ledger's length and head (the hash of
its last entry) with a copy kept elsewhere: the client's state index (``client/ledger_store.py``), the
server's roster checkpoint. The hash is not a signature: someone who can rewrite the ledger *and* that copy
can forge both; it makes edits evident, it does not make them impossible.

Legacy ledgers (written before the chain): entries without ``hash``/``prev_hash`` are accepted only as a
prefix - every entry before the first chained one - and get a *virtual* hash, computed as if they had been
chained from ``GENESIS``; the first chained entry links to the last virtual hash, so appending to a legacy
ledger protects its old entries as well. An unchained entry after a chained one is an insertion and refused.
A keeper of heads sees a legacy ledger's head like any other (it is the last virtual hash).

Stored epsilons: entry i's ``epsilon`` is the cumulative epsilon of releases 1..i (earlier runs included) at
entry i's delta, accountant and relation, which is how the client and the server write it. ``check_epsilons``
re-derives it for the last entry of each distinct (accountant, delta, relation) and refuses a ledger whose
stored number differs (relative tolerance ``EPSILON_RTOL``).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import sys
from collections.abc import Sequence
from typing import Any

from dpfl.privacy._pld import ADD_REMOVE, REPLACE_ONE

__all__ = [
    "BUILTIN_ACCOUNTANTS", "EPSILON_RTOL", "GENESIS", "HASH_KEYS", "LedgerError", "LedgerTamperedError",
    "canonical_json", "chain_heads", "check_entry_fields", "check_epsilons", "entry_hash", "is_hash",
]

GENESIS = hashlib.sha256(b"dpfl-ledger-chain-v1").hexdigest()  # the prev_hash of a ledger's first entry
HASH_KEYS = ("prev_hash", "hash")
EPSILON_RTOL = 1e-6  # a stored epsilon further than this (relative) from the re-derived one is refused
# The accountants a ledger may name when privacy.accountants (and so any registered extra one) is not loaded:
# registering another one imports that module, and then its registry is used instead.
BUILTIN_ACCOUNTANTS = ("pld", "prv", "rdp")
_RELATIONS = (ADD_REMOVE, REPLACE_ONE)
_FIX = "restore it from a backup; never delete, empty or reset a ledger (that would reset the epsilon it records)"


class LedgerError(RuntimeError):
    """A ledger file is unreadable, or a write would lose or rewrite entries."""


class LedgerTamperedError(LedgerError):
    """A ledger was edited, truncated, emptied, deleted or replaced after it was written."""


def tampered(where: object, what: str) -> LedgerTamperedError:
    """The one-line error: which file, what is wrong, what to do."""
    return LedgerTamperedError(f"{where}: {what}; {_FIX}")


def canonical_json(entry: dict[str, Any]) -> str:
    """What an entry's hash covers: every field but ``hash``, canonically serialised."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash`` (its ``prev_hash`` included)."""
    return hashlib.sha256(canonical_json(entry).encode("ascii")).hexdigest()


def is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _known_accountants() -> tuple[str, ...]:
    module = sys.modules.get("dpfl.privacy.accountants")  # loaded whenever an extra accountant is registered
    return tuple(module.ACCOUNTANT_REGISTRY) if module is not None else BUILTIN_ACCOUNTANTS


def check_entry_fields(entry: dict[str, Any]) -> None:
    """ValueError naming the first field of a ledger entry that is not valid (the release's own fields are
    checked by ``release_from_dict`` before this)."""
    r = entry["round"]
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
        raise ValueError(f"round {r!r} is not valid: expected an integer >= 1")
    s = entry["noise_multiplier"]
    if not (_real(s) and math.isfinite(s) and s >= 0):
        raise ValueError(f"noise multiplier {s!r} is not valid: expected a finite number >= 0")
    steps = entry["steps"]
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps {steps!r} is not valid: expected an integer >= 1")
    d = entry["delta"]
    if not (_real(d) and 0 < d < 1):
        raise ValueError(f"delta {d!r} is not valid: expected a number in (0, 1)")
    e = entry["epsilon"]
    if not (_real(e) and math.isfinite(e) and e >= 0):
        raise ValueError(f"epsilon {e!r} is not valid: expected a finite number >= 0")
    accountant, known = entry["accountant"], _known_accountants()
    if accountant not in known:
        raise ValueError(f"accountant {accountant!r} is not known: expected one of {', '.join(known)}")
    relation = entry.get("neighbouring", ADD_REMOVE)
    if relation not in _RELATIONS:
        raise ValueError(f"neighbouring {relation!r} is not known: expected one of {', '.join(_RELATIONS)}")
    for key in HASH_KEYS:
        if key in entry and not is_hash(entry[key]):
            raise ValueError(f"{key} {entry[key]!r} is not a SHA-256 hex digest")
    if ("hash" in entry) != ("prev_hash" in entry):
        raise ValueError("entry has only one of prev_hash and hash")


def chain_heads(entries: Sequence[dict[str, Any]], where: object) -> list[str]:
    """The head after each entry (its hash; virtual for a legacy prefix), the chain verified on the way:
    LedgerTamperedError at the first entry that was edited, or whose predecessor was removed or moved."""
    heads: list[str] = []
    head = GENESIS
    chained = False
    for n, entry in enumerate(entries, start=1):
        label = f"entry {n} (round {entry.get('round')})"
        if "hash" not in entry:
            if chained:
                raise tampered(where, f"{label} has no hash but follows chained entries: it was added by hand")
            head = entry_hash({**entry, "prev_hash": head})  # legacy: as if it had been chained
        else:
            chained = True
            if entry_hash(entry) != entry["hash"]:
                raise tampered(where, f"{label}'s hash does not match its content: the file was edited")
            if entry["prev_hash"] != head:
                before = "the start of the ledger" if n == 1 else f"entry {n - 1}'s hash"
                raise tampered(where, f"{label} does not follow {before}: entries before it were deleted, "
                                      "inserted or reordered")
            head = entry["hash"]
        heads.append(head)
    return heads


def check_epsilons(entries: Sequence[dict[str, Any]], where: object) -> None:
    """Re-derive the stored epsilon of the last entry of each (accountant, delta, relation) with that accountant
    over every release up to it; LedgerTamperedError if one differs (LedgerError if it cannot be computed)."""
    if not entries:
        return
    from dpfl.privacy.accountants import epsilon  # torch and Opacus: only when a ledger is re-checked
    from dpfl.privacy.releases import release_from_dict

    releases = [release_from_dict(e) for e in entries]
    last: dict[tuple[str, float, str], int] = {}
    for i, e in enumerate(entries):
        last[(str(e["accountant"]), float(e["delta"]), str(e.get("neighbouring", ADD_REMOVE)))] = i
    for (accountant, delta, relation), i in sorted(last.items(), key=lambda kv: kv[1]):
        stored = float(entries[i]["epsilon"])
        try:
            derived = epsilon(releases[: i + 1], delta, accountant, neighbouring=relation)
        except ValueError as exc:
            raise LedgerError(f"{where}: entry {i + 1}'s epsilon cannot be re-derived: {exc}") from None
        if not math.isclose(stored, derived, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
            raise tampered(where, f"entry {i + 1} (round {entries[i].get('round')}) says epsilon {stored!r} but "
                                  f"its {i + 1} release(s) give {derived!r} ({accountant}, delta {delta:g}, "
                                  f"{relation}): the ledger was edited (or written by a different accountant "
                                  "version - compare before restoring)")
