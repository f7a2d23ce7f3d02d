"""A user's own data as the in-memory ``Dataset`` every client and the server use: dispatch, checks, splits.

``load_custom(spec)`` reads the source ``spec.kind`` names (CSV, Parquet, npz, image folder, hf-disk, or a
``package.module:loader`` plug-in), checks it (``UserData`` protocol, shapes, label range) and returns a
``CustomDataset``: a ``datasets.Dataset`` (so clients.py's partitions, splits and sizes work unchanged)
with ``client_ids`` when ``partition = "by-column"``.

The server's test set is the source's own (``test-data-path``, an npz's ``x_test``, a ``test`` folder or
split, a plug-in's ``test``); without one, ``test-fraction`` of each client's records (seeded by
``seed``, at least one record left to train) is held out and pooled - a simulation-only convenience, as
in ``synthetic``: in a real federation the server has no access to the clients' records. With
``test-fraction = 0`` and no test source the test set is empty (server evaluation reports nan).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.simulations.data.by_column import partition_by_values
from dpfl.simulations.data.datasets import DataError, Dataset
from dpfl.simulations.data.files import load_hf_disk, load_imagefolder, load_npz
from dpfl.simulations.data.plugin_loader import load_plugin
from dpfl.simulations.data.spec import DataSpec
from dpfl.simulations.data.tabular import load_tabular
from dpfl.simulations.data.user_data import UserData, check_tensors, to_tensors

BY_COLUMN = "by-column"


@dataclass(frozen=True, eq=False)
class CustomDataset(Dataset):
    """A ``Dataset`` from a user's source; ``client_ids[k]`` names natural partition k (by-column)."""

    client_ids: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None


def _stamp(path: str) -> tuple[int, int]:
    """(mtime_ns, size) of a local path, so an edited file is read again; (0, 0) when absent."""
    try:
        st = os.stat(Path(path).expanduser())
    except OSError:
        return 0, 0
    return st.st_mtime_ns, st.st_size


def _read(spec: DataSpec) -> UserData:
    if spec.kind in ("csv", "parquet"):
        return load_tabular(spec)
    if spec.kind == "npz":
        return load_npz(spec)
    if spec.kind == "imagefolder":
        return load_imagefolder(spec)
    if spec.kind == "hf-disk":
        return load_hf_disk(spec)
    return load_plugin(spec.kind, dict(spec.options))


def _holdout(groups: tuple[np.ndarray, ...], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): round(fraction * n) of each group held out, at least one kept."""
    rng = np.random.default_rng([seed, 0x7E57])
    train, test = [], []
    for g in groups:
        n_test = 0 if len(g) < 2 or fraction <= 0 else min(len(g) - 1, math.floor(len(g) * fraction + 0.5))
        order = rng.permutation(g)
        test.append(order[:n_test])
        train.append(order[n_test:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def build_dataset(data: UserData, spec: DataSpec, *, partition: str = "") -> CustomDataset:
    """Checked in-memory tensors, the held-out test set and (for by-column) the natural partition."""
    origin = data.description or spec.kind
    x, y = to_tensors(data.train, data.input_shape, what="train")
    check_tensors(x, y, data.input_shape, data.num_classes, origin=origin, what="train")
    n = len(y)
    names: tuple[str, ...] | None = None
    groups: tuple[np.ndarray, ...] = (np.arange(n, dtype=np.int64),)
    if partition == BY_COLUMN:
        if data.train_clients is None:
            raise DataError(f"partition = 'by-column' needs a client column: set client-column (csv, parquet, "
                            f"hf-disk), save a 'client' array (npz), or return train_clients (plug-in); "
                            f"{origin} has none")
        names, groups = partition_by_values(np.asarray(data.train_clients, dtype=object),
                                            column=f"client column {spec.client_column or 'client'!r}")
    if data.test is not None:
        tx, ty = to_tensors(data.test, data.input_shape, what="test")
        check_tensors(tx, ty, data.input_shape, data.num_classes, origin=origin, what="test")
        train_idx = np.arange(n, dtype=np.int64)
    else:
        train_idx, test_idx = _holdout(groups, spec.test_fraction, spec.seed)
        tx, ty = x[torch.from_numpy(test_idx)], y[torch.from_numpy(test_idx)]
    natural = None
    if names is not None:
        new_index = np.full(n, -1, dtype=np.int64)
        new_index[train_idx] = np.arange(len(train_idx))
        natural = tuple(np.sort(new_index[g][new_index[g] >= 0]) for g in groups)
        empty = [names[k] for k, part in enumerate(natural) if len(part) == 0]
        if empty:
            raise DataError(f"client(s) {', '.join(empty)} have no training records; drop them or give them data")
    if data.test is None:
        keep = torch.from_numpy(train_idx)
        x, y = x[keep], y[keep]
    return CustomDataset(spec.kind, x, y, tx, ty, tuple(data.input_shape), int(data.num_classes), natural,
                         client_ids=names, class_names=data.class_names)


@lru_cache(maxsize=4)
def _load(spec: DataSpec, partition: str, stamps: tuple[tuple[int, int], ...]) -> CustomDataset:
    del stamps  # part of the cache key only
    return build_dataset(_read(spec), spec, partition=partition)


def load_custom(spec: DataSpec, *, partition: str = "") -> CustomDataset:
    """The user's data as a ``CustomDataset``, cached per process (re-read when its files change)."""
    return _load(spec, partition, (_stamp(spec.path), _stamp(spec.test_path)))


def load_custom_from_config(cfg: Mapping[str, Any]) -> CustomDataset:
    """``load_custom`` for run-config keys (``DataSpec.from_config`` and ``partition``)."""
    return load_custom(DataSpec.from_config(cfg), partition=str(cfg.get("partition", "")))
