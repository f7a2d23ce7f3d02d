"""The ``by-column`` natural partition: one client per distinct value of a client column, with safe names.

A client's name becomes a file name (its ledger, ``ledgers/<client>.jsonl``, and its own state folder),
so it is made safe: ``site-`` followed by the value lowercased with every character outside
``[a-z0-9._-]`` replaced by ``-`` (at most 40 of them). When that changes the value (case, spaces,
accents, length) an 8-hex-digit SHA-256 suffix of the exact value is added, so two values never share a
name and a client's name depends on its own value only: adding a site never renames another one (its
ledger of earlier runs stays its own). Clients are ordered by their value, as text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from dpfl.simulations.data.datasets import DataError

PREFIX = "site-"
MAX_SLUG = 40
_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def client_name(value: str) -> str:
    """The safe, stable file name of the client whose client-column value is ``value``."""
    text = str(value)
    slug = _UNSAFE.sub("-", text.lower()).strip("-.")[:MAX_SLUG].strip("-.")
    if slug == text and slug:
        return PREFIX + slug
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{PREFIX}{slug}-{digest}" if slug else f"{PREFIX}{digest}"


def partition_by_values(values: Sequence[str] | np.ndarray, *, column: str = "client column",
                        ) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """(client names, record indices of each client): one client per distinct value, ordered by value.

    Every record lands at exactly one client; a blank value is an error (which client owns the record?)."""
    texts = np.asarray([str(v) for v in values], dtype=object)
    if len(texts) == 0:
        raise DataError(f"{column} has no records: there is nothing to partition")
    blank = np.flatnonzero([not t.strip() or t.lower() in ("nan", "none", "<na>") for t in texts])
    if len(blank):
        raise DataError(f"{column} is empty in {len(blank)} record(s) (first: record {int(blank[0])}): give "
                        f"every record its client, or drop those records")
    distinct = sorted(set(texts.tolist()))
    names = tuple(client_name(v) for v in distinct)
    if len(set(names)) != len(names):  # a 32-bit hash collision between two lossy values
        raise DataError(f"two values of {column} map to the same client name; rename one of them")
    where = {v: k for k, v in enumerate(distinct)}
    owner = np.fromiter((where[t] for t in texts), dtype=np.int64, count=len(texts))
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(distinct) + 1))
    parts = tuple(np.sort(order[bounds[k]:bounds[k + 1]]).astype(np.int64) for k in range(len(distinct)))
    return names, parts
