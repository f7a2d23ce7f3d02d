"""A disk cache of partitions, so that flwr-datasets (and the `datasets` library under it, ~2-4 s to import
on this machine) runs once per partition setting instead of once per process and run.

Entries are keyed by a hash of the labels and every partition parameter plus the flwr-datasets version,
written atomically, and checked on read (every record at exactly one client); anything unreadable or
inconsistent is recomputed, never trusted. ``DPFL_CACHE_DIR`` moves the cache (default
``~/.cache/dpfl``); ``DPFL_CACHE_DIR=off`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger("dpfl.data")
ENV = "DPFL_CACHE_DIR"


def cache_dir() -> Path | None:
    value = os.environ.get(ENV, "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "dpfl"


def _key(labels: np.ndarray, params: tuple) -> str:
    try:
        version = metadata.version("flwr-datasets")
    except metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        version = "unknown"
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(labels).tobytes())
    h.update(repr((str(labels.dtype), params, version)).encode())
    return h.hexdigest()[:32]


def cached_partitions(labels: np.ndarray, params: tuple, compute: Callable[[], list[np.ndarray]],
                      check: Callable[[list[np.ndarray]], None]) -> list[np.ndarray]:
    """``compute()``'s partitions for ``(labels, params)``, from the cache when an entry exists that
    ``check`` (which raises on a bad partition) accepts."""
    directory = cache_dir()
    if directory is None:
        return compute()
    path = directory / "partitions" / f"{_key(labels, params)}.npz"
    parts: list[np.ndarray] | None
    try:
        with np.load(path) as stored:
            parts = [stored[f"p{k}"] for k in range(len(stored.files))]
    except (OSError, ValueError, KeyError):
        parts = None  # missing or unreadable: compute it
    if parts is not None:
        try:
            check(parts)
            return parts
        except (ValueError, RuntimeError) as exc:  # the check's DataError, or arrays it cannot compare
            log.debug("partition cache entry %s is inconsistent (%s); recomputing", path, exc)
    parts = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{f"p{k}": p for k, p in enumerate(parts)})
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home must not stop a run
        log.debug("could not write the partition cache (%s); continuing without it", exc)
    return parts
