"""The partition cache returns what the partitioner returned, recomputes anything it cannot trust, and
can be turned off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpfl.simulations.data import partition_cache
from dpfl.simulations.data.partitions import check_partition, partition_indices


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(partition_cache.ENV, str(tmp_path))
    return tmp_path


def _check(labels: np.ndarray):
    return lambda parts: check_partition(parts, len(labels), "dirichlet")


def _compute_counter(labels: np.ndarray) -> tuple[list[int], object]:
    calls: list[int] = []

    def compute() -> list[np.ndarray]:
        calls.append(1)
        return partition_indices(labels, 5, "dirichlet", seed=3, dirichlet_alpha=0.5)
    return calls, compute


def test_second_call_is_served_from_disk_and_equal(cache: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    calls, compute = _compute_counter(labels)
    first = partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    second = partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    assert len(calls) == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = partition_cache.cached_partitions(labels, ("other",), compute, _check(labels))  # another entry
    assert len(calls) == 2 and len(other) == 5


def test_corrupt_or_inconsistent_entries_are_recomputed(cache: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 10, 500)
    calls, compute = _compute_counter(labels)
    want = partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    (entry,) = (cache / "partitions").glob("*.npz")
    entry.write_bytes(b"not an npz file")
    again = partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    assert all(np.array_equal(a, b) for a, b in zip(want, again, strict=True))
    np.savez(entry, p0=np.arange(10), p1=np.arange(10))  # readable, but records at two clients
    partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    assert len(calls) == 3


def test_off_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(partition_cache.ENV, "off")
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    labels = np.arange(100) % 10
    calls, compute = _compute_counter(labels)
    partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    partition_cache.cached_partitions(labels, ("p",), compute, _check(labels))
    assert len(calls) == 2 and not list(tmp_path.rglob("*.npz"))
