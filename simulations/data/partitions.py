"""Partitions: which records each client holds, from flwr-datasets partitioners (every record at one client).

Partitioners run on a label-only table, so only indices move; client data are index selections of the
shared tensors. A record at two clients would break per-client accounting, so every partition is checked.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from dpfl.simulations.data.datasets import DataError

PARTITIONS = ("iid", "dirichlet", "shards")
MIN_PARTITION_SIZE = 10  # Dirichlet partitions below this are resampled; DP on tiny clients is hopeless


def _run_partitioner(partitioner: Any, table: Any, num_partitions: int) -> list[np.ndarray]:
    partitioner.dataset = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dirichlet resampling warns on each retry; we report failure once
        parts = [partitioner.load_partition(k)["idx"] for k in range(num_partitions)]  # one column: fast
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_indices(labels: np.ndarray, num_partitions: int, scheme: str, *, seed: int,
                      dirichlet_alpha: float = 0.5, shards_per_client: int = 2) -> list[np.ndarray]:
    """Record indices of each partition (sorted), from flwr-datasets partitioners; same seed, same result.

    - ``iid``: a seeded shuffle, then ``IidPartitioner`` (sizes differ by at most one).
    - ``dirichlet``: ``DirichletPartitioner`` with label proportions ~ Dir(alpha) and self-balancing (as in
      NIID-Bench: a client already above the average size takes no more records), resampled until every
      client has at least min(10, N // (2 * num_partitions)) records.
    - ``shards``: McMahan et al. 2017's label-sorted shards via ``ShardPartitioner``; shard size
      ceil(N / (num_partitions * shards_per_client)) with the last shard kept, so every record is used
      (when records do not divide evenly some clients get one shard fewer).
    """
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    labels = np.asarray(labels)
    n = int(labels.shape[0])
    if num_partitions < 1:
        raise DataError(f"num-clients must be >= 1, got {num_partitions}")
    if num_partitions > n:
        raise DataError(f"{num_partitions} clients but only {n} records: use at most {n} clients")
    if scheme not in PARTITIONS:
        raise DataError(f"unknown partition scheme {scheme!r}; known: {', '.join(PARTITIONS)}")
    table = HFDataset.from_dict({"label": labels.tolist(), "idx": np.arange(n).tolist()})
    try:
        if scheme == "iid":
            parts = _run_partitioner(IidPartitioner(num_partitions), table.shuffle(seed=seed), num_partitions)
        elif scheme == "dirichlet":
            if not dirichlet_alpha > 0:
                raise DataError(f"dirichlet-alpha must be > 0, got {dirichlet_alpha}")
            min_size = min(MIN_PARTITION_SIZE, max(1, n // (2 * num_partitions)))
            partitioner = DirichletPartitioner(num_partitions, partition_by="label",
                                               alpha=float(dirichlet_alpha), min_partition_size=min_size,
                                               self_balancing=True, seed=seed)
            try:
                parts = _run_partitioner(partitioner, table, num_partitions)
            except (ValueError, ZeroDivisionError) as exc:
                raise DataError(
                    f"partition=dirichlet with dirichlet-alpha={dirichlet_alpha} could not give each of "
                    f"{num_partitions} clients at least {min_size} of {n} records ({exc}); raise "
                    "dirichlet-alpha, use fewer clients, or another seed") from None
        else:
            if shards_per_client < 1:
                raise DataError(f"shards-per-client must be >= 1, got {shards_per_client}")
            shards = num_partitions * shards_per_client
            if shards > n:
                raise DataError(f"partition=shards needs num-clients x shards-per-client = {shards} shards "
                                f"but there are only {n} records; lower either")
            partitioner = ShardPartitioner(num_partitions, partition_by="label",
                                           shard_size=math.ceil(n / shards), keep_incomplete_shard=True,
                                           seed=seed)
            parts = _run_partitioner(partitioner, table, num_partitions)
    except ValueError as exc:
        raise DataError(f"partition={scheme} could not split {n} records over {num_partitions} clients: "
                        f"{exc}") from None
    check_partition(parts, n, scheme)
    return parts


def check_partition(parts: list[np.ndarray], n: int, scheme: str) -> None:
    """Every record at exactly one client: a record at two clients would break per-client accounting."""
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if len(flat) != n or not np.array_equal(np.sort(flat), np.arange(n)):
        raise DataError(f"partition={scheme} did not assign each of the {n} records to exactly one client "
                        "(degenerate partitioner output); try a larger dirichlet-alpha or fewer clients")
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partition={scheme} left clients {empty[:10]} without records; use fewer clients")
