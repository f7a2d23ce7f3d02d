"""What one client (its train / validation split) and the server (the test set) get for a run config.

Each client's records are split into local train / validation with a stream seeded by (seed, partition
id). Partitions are cached on disk (simulations.data.partition_cache), everything else per process; treat
the returned tensors as read-only, they are shared between callers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

from dpfl.simulations.data.datasets import DataError, Dataset, load_dataset
from dpfl.simulations.data.partition_cache import cached_partitions
from dpfl.simulations.data.partitions import check_partition, partition_indices
from dpfl.simulations.data.spec import DataSpec, is_custom_dataset

# Defaults of the data keys, equal to simulations/config/options.py (a test keeps them equal); used only when a
# caller passes a partial mapping.
CONFIG_DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "data-path": "", "num-clients": 10, "partition": "iid", "dirichlet-alpha": 0.5,
    "shards-per-client": 2, "validation-fraction": 0.0, "seed": 42, "synthetic-alpha": 1.0,
    "synthetic-beta": 1.0,
}


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local train and validation records."""

    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def true_records(self) -> int:
        """How many records the client trains on: public only under replace-one adjacency."""
        return int(self.train_y.shape[0])


class _DataKey(NamedTuple):
    """The config values data depend on, normalised so irrelevant keys do not split the caches."""

    dataset: str
    data_path: str
    seed: int
    num_clients: int
    partition: str
    dirichlet_alpha: float
    shards_per_client: int
    synthetic_alpha: float
    synthetic_beta: float
    spec: DataSpec | None = None  # a user's own source: csv, parquet, npz, imagefolder, hf-disk, a loader


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    try:
        return cfg[key]
    except KeyError:
        return CONFIG_DEFAULTS[key]


def _data_key(cfg: Mapping[str, Any]) -> _DataKey:
    dataset = str(_get(cfg, "dataset"))
    data_path = str(cfg.get("data-path", "") or cfg.get("data-dir", "") or "")
    key = _DataKey(dataset, data_path, int(_get(cfg, "seed")), int(_get(cfg, "num-clients")),
                   str(_get(cfg, "partition")), float(_get(cfg, "dirichlet-alpha")),
                   int(_get(cfg, "shards-per-client")), float(_get(cfg, "synthetic-alpha")),
                   float(_get(cfg, "synthetic-beta")))
    if dataset == "synthetic":  # the generator's clients are the partition
        return key._replace(partition="natural", dirichlet_alpha=0.0, shards_per_client=0)
    key = key._replace(synthetic_alpha=0.0, synthetic_beta=0.0)
    if is_custom_dataset(dataset):
        key = key._replace(spec=DataSpec.from_config(cfg))
    if key.partition == "by-column":
        return key._replace(dirichlet_alpha=0.0, shards_per_client=0)
    if key.partition != "dirichlet":
        key = key._replace(dirichlet_alpha=0.0)
    if key.partition != "shards":
        key = key._replace(shards_per_client=0)
    return key


def _dataset(key: _DataKey) -> Dataset:
    if key.spec is not None:
        from dpfl.simulations.data.custom import load_custom  # pandas, pyarrow, PIL: only for users' own data

        return load_custom(key.spec, partition=key.partition)
    return load_dataset(key.dataset, key.data_path, seed=key.seed, num_clients=key.num_clients,
                        synthetic_alpha=key.synthetic_alpha, synthetic_beta=key.synthetic_beta)


@lru_cache(maxsize=8)
def _partitions(key: _DataKey) -> tuple[np.ndarray, ...]:
    ds = _dataset(key)
    if ds.natural_partitions is not None:
        if key.partition == "by-column" and len(ds.natural_partitions) != key.num_clients:
            names = getattr(ds, "client_ids", None) or ()
            shown = ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")
            raise DataError(f"the client column names {len(ds.natural_partitions)} client(s) ({shown}) but "
                            f"num-clients={key.num_clients}; set num-clients = {len(ds.natural_partitions)}")
        return ds.natural_partitions
    if key.partition == "natural":
        return _natural_partitions(ds, key.num_clients)
    labels = ds.train_y.numpy()
    params = (key.num_clients, key.partition, key.seed, key.dirichlet_alpha, key.shards_per_client)
    parts = cached_partitions(labels, params, lambda: partition_indices(
        labels, key.num_clients, key.partition, seed=key.seed, dirichlet_alpha=key.dirichlet_alpha,
        shards_per_client=key.shards_per_client), lambda ps: check_partition(ps, len(labels), key.partition))
    return tuple(parts)


def _natural_partitions(ds: Dataset, num_clients: int) -> tuple[np.ndarray, ...]:
    """Each owner's records at one client: owner key modulo the number of clients (a public rule)."""
    if ds.owners is None:
        raise DataError(f"partition = natural: dataset {ds.name!r} names no owners of its records; use iid, "
                        "dirichlet or shards")
    parts = tuple(np.flatnonzero(ds.owners % np.uint64(num_clients) == k).astype(np.int64)
                  for k in range(num_clients))
    empty = [k for k, p in enumerate(parts) if p.size == 0]
    if empty:
        raise DataError(f"partition = natural: client {empty[0]} of {num_clients} gets no records; use fewer clients")
    return parts


def _validation_fraction(cfg: Mapping[str, Any]) -> float:
    fraction = float(_get(cfg, "validation-fraction"))
    if not 0 <= fraction < 1:
        raise DataError(f"validation-fraction must be in [0, 1), got {fraction}")
    return fraction


def _num_val(n: int, fraction: float) -> int:
    """Validation records of a client with n records: round(n * fraction), always leaving one to train."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, math.floor(n * fraction + 0.5))


@lru_cache(maxsize=1024)
def _client_data(key: _DataKey, fraction: float, partition_id: int) -> ClientData:
    ds = _dataset(key)
    parts = _partitions(key)
    if not 0 <= partition_id < len(parts):
        raise DataError(f"partition id {partition_id} is out of range: there are {len(parts)} clients "
                        f"(num-clients={key.num_clients})")
    indices = parts[partition_id]
    order = np.random.default_rng([key.seed, partition_id]).permutation(indices)
    n_val = _num_val(len(order), fraction)
    train, val = torch.from_numpy(np.sort(order[n_val:])), torch.from_numpy(np.sort(order[:n_val]))
    return ClientData(partition_id, ds.train_x[train], ds.train_y[train], ds.train_x[val], ds.train_y[val])


def load_client_data(cfg: Mapping[str, Any], partition_id: int) -> ClientData:
    """Client ``partition_id``'s local train / validation split (cached per process; read-only tensors)."""
    return _client_data(_data_key(cfg), _validation_fraction(cfg), int(partition_id))


def load_test_set(cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    """The server's held-out test set: (x, y, input shape, number of classes).

    When the clients bring their own records (a user data source without ``data-path``) the server reads
    only its own ``test-data-path``; with none it holds no records at all, the test set is empty (no
    server-side accuracy) and the shapes come from ``input-shape`` and the public label set."""
    dataset = str(_get(cfg, "dataset"))
    if is_custom_dataset(dataset) and not str(cfg.get("data-path", "") or cfg.get("data-dir", "") or ""):
        return _server_only_test_set(DataSpec.from_config(cfg), str(cfg.get("input-shape", "") or ""))
    ds = _dataset(_data_key(cfg))
    return ds.test_x, ds.test_y, ds.input_shape, ds.num_classes


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'30' -> (30,), '3x32x32' -> (3, 32, 32); DataError otherwise."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(" ", "").split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise DataError(f"input-shape={text!r} is not valid: expected sizes >= 1 joined by 'x', e.g. 30 or 3x32x32")
    return shape


@lru_cache(maxsize=4)
def _server_only_test_set(spec: DataSpec, input_shape: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...],
                                                                      int]:
    if spec.test_path:
        from dpfl.simulations.data.custom import load_custom

        held_out = dataclasses.replace(spec, path=spec.test_path, test_path="", test_fraction=0.0)
        ds = load_custom(held_out)
        return ds.train_x, ds.train_y, ds.input_shape, ds.num_classes
    if not input_shape:
        raise DataError(f"dataset={spec.kind!r} without data-path: the clients bring their own records and this "
                        f"server holds none; give the server its own held-out set (test-data-path) or the shape of "
                        f"one record (input-shape, e.g. 30 or 3x32x32) and the labels (labels or num-classes)")
    if spec.schema.num_classes < 2:
        raise DataError("a server that holds no records needs the public label set: set labels or num-classes")
    shape = parse_input_shape(input_shape)
    return torch.empty((0, *shape)), torch.empty((0,), dtype=torch.int64), shape, spec.schema.num_classes


def true_sizes(cfg: Mapping[str, Any]) -> list[int]:
    """Every client's true train size, from partition sizes alone: no tensors are copied."""
    fraction = _validation_fraction(cfg)
    return [len(p) - _num_val(len(p), fraction) for p in _partitions(_data_key(cfg))]


def declared_sizes(cfg: Mapping[str, Any]) -> list[int]:
    """Every client's public record count N, the one its sampling rate, steps and FedAvg weight come from.

    Under replace-one adjacency the true count is public. Under add-remove it must not depend on the
    records (a neighbour has one more or one less), so it is ``declared-records`` when set, else the
    nominal share: the dataset's public train size divided by the number of clients. A data owner's privacy
    policy may declare its own N; that one then applies to that client.
    """
    sizes = true_sizes(cfg)
    if cfg.get("neighbouring", "add-remove") == "replace-one":
        return sizes
    declared = int(cfg.get("declared-records", 0)) or sum(sizes) // len(sizes)
    return [declared] * len(sizes)


def natural_client_ids(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The clients the data itself names (``partition = by-column``: ``site-<value>`` of the client column)."""
    ds = _dataset(_data_key(cfg))
    return tuple(getattr(ds, "client_ids", None) or ()) or tuple(
        f"client-{k:03d}" for k in range(len(ds.natural_partitions or ())))


def clients_bring_own_data(cfg: Mapping[str, Any]) -> bool:
    """A user data source without ``data-path``: each client reads its own records, the server none."""
    return is_custom_dataset(str(_get(cfg, "dataset"))) and not str(cfg.get("data-path", "") or
                                                                     cfg.get("data-dir", "") or "")


def server_declared_total(cfg: Mapping[str, Any]) -> int | None:
    """The total public record count the server may use for delta = 1/(10 N): the clients' declared sizes,
    or, when clients bring their own records, ``declared-records`` x clients (None if not declared: the
    run then needs an explicit delta)."""
    if clients_bring_own_data(cfg):
        declared = int(cfg.get("declared-records", 0) or 0)
        return declared * int(_get(cfg, "num-clients")) or None
    return sum(declared_sizes(cfg))
