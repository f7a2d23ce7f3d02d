"""The protocol every user data source returns (``UserData``), checked, and read by record index.

A loader plug-in (``dataset = "package.module:loader"``) is a callable taking the run config (a read-only
mapping of its keys) and returning ``UserData``::

    from dpfl.simulations.data.user_data import UserData

    def loader(config):
        x, y = ...                                   # float32 (N, *input_shape), int64 (N,) in 0..K-1
        return UserData(train=(x, y), input_shape=(12,), num_classes=3,
                        test=(x_test, y_test),       # optional: the server's held-out set
                        train_clients=site_of_each_record)  # optional: for partition = "by-column"

``train`` and ``test`` are either a pair of tensors/arrays ``(x, y)`` or a map-style
``torch.utils.data.Dataset`` whose item ``i`` is ``(x_i, y_i)`` (a dataset that does not fit in memory is
read by index through ``read_by_index``). ``num_classes`` and ``input_shape`` are the public schema:
declare them, do not compute them from the records. Today's training pipeline keeps a client's records
in memory, so a ``Dataset`` is read once, by index, into tensors (``to_tensors``, refused above
``MAX_IN_MEMORY_BYTES``); Poisson sampling straight from a ``Dataset`` by index is later work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from dpfl.simulations.data.datasets import DataError

MAX_IN_MEMORY_BYTES = 8 << 30  # a Dataset larger than this is refused by to_tensors (not yet read lazily)
READ_CHUNK = 4096
Source = tuple[Any, Any] | TorchDataset


@dataclass(frozen=True, eq=False)
class UserData:
    """A user's data: train records (with labels), an optional server test set, and the public schema."""

    train: Source
    input_shape: tuple[int, ...]
    num_classes: int
    test: Source | None = None
    train_clients: Sequence[str] | np.ndarray | None = None  # the client of each train record (by-column)
    class_names: tuple[str, ...] | None = None
    description: str = ""  # where it came from, for messages


def num_records(source: Source) -> int:
    if isinstance(source, tuple):
        return int(len(source[1]))
    return len(source)  # type: ignore[arg-type]


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(dtype)


def read_by_index(source: Source, indices: Sequence[int] | np.ndarray | torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Records ``indices`` of a source as (x float32, y int64): a slice of a pair, or one ``__getitem__``
    per index of a ``Dataset`` (what Poisson-by-index sampling will call once per batch)."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if isinstance(source, tuple):
        x, y = source
        return _as_tensor(x, torch.float32)[idx], _as_tensor(y, torch.int64)[idx]
    if len(idx) == 0:
        x0, _ = source[0]
        return torch.empty((0, *_as_tensor(x0, torch.float32).shape)), torch.empty(0, dtype=torch.int64)
    xs, ys = [], []
    for i in idx.tolist():
        item = source[i]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DataError(f"item {i} of the dataset is a {type(item).__name__}; a data plug-in's Dataset must "
                            f"return (x, y) pairs")
        xs.append(_as_tensor(item[0], torch.float32))
        ys.append(int(item[1]))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def to_tensors(source: Source, input_shape: tuple[int, ...], *, max_bytes: int = MAX_IN_MEMORY_BYTES,
               what: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole source in memory as (x float32 (N, *input_shape), y int64 (N,))."""
    n = num_records(source)
    needed = n * math.prod(input_shape) * 4
    if not isinstance(source, tuple) and needed > max_bytes:
        raise DataError(f"the {what} Dataset needs {needed / 2**30:.1f} GiB in memory (more than "
                        f"{max_bytes / 2**30:.1f} GiB): training by index from a Dataset that does not fit in "
                        f"memory is not implemented yet; use fewer records or a smaller input shape")
    if isinstance(source, tuple):
        return read_by_index(source, np.arange(n))
    parts = [read_by_index(source, np.arange(s, min(n, s + READ_CHUNK))) for s in range(0, n, READ_CHUNK)]
    if not parts:
        return torch.empty((0, *input_shape)), torch.empty(0, dtype=torch.int64)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def check_user_data(data: object, origin: str) -> UserData:
    """``data`` if it keeps the protocol, else one DataError line saying what is wrong (``origin`` names the
    loader)."""
    if not isinstance(data, UserData):
        raise DataError(f"{origin} returned a {type(data).__name__}; it must return "
                        f"dpfl.simulations.data.user_data.UserData(train=(x, y), input_shape=..., num_classes=...)")
    shape = data.input_shape
    if not (isinstance(shape, tuple) and shape and all(isinstance(d, int) and d >= 1 for d in shape)):
        raise DataError(f"{origin}: input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    if not (isinstance(data.num_classes, int) and data.num_classes >= 2):
        raise DataError(f"{origin}: num_classes must be an int >= 2, got {data.num_classes!r}")
    for what, source in (("train", data.train), ("test", data.test)):
        if source is None:
            if what == "train":
                raise DataError(f"{origin}: train is required")
            continue
        if isinstance(source, tuple):
            if len(source) != 2:
                raise DataError(f"{origin}: {what} must be (x, y), got a tuple of {len(source)}")
            if len(source[0]) != len(source[1]):
                raise DataError(f"{origin}: {what} x has {len(source[0])} records but y has {len(source[1])}")
        elif not (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            raise DataError(f"{origin}: {what} must be (x, y) or a map-style torch Dataset (with __len__ and "
                            f"__getitem__), got {type(source).__name__}")
        if what == "train" and num_records(source) == 0:
            raise DataError(f"{origin}: the train set is empty")
    if data.train_clients is not None and len(data.train_clients) != num_records(data.train):
        raise DataError(f"{origin}: train_clients has {len(data.train_clients)} entries for "
                        f"{num_records(data.train)} train records; give the client of every record")
    return data


def check_tensors(x: torch.Tensor, y: torch.Tensor, input_shape: tuple[int, ...], num_classes: int, *,
                  origin: str, what: str) -> None:
    """Shapes and label range of materialised records."""
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{origin}: {what} records have shape {tuple(x.shape[1:])} but input_shape is "
                        f"{tuple(input_shape)}; declare the per-example shape of x")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = (y < 0) | (y >= num_classes)
        raise DataError(f"{origin}: {int(bad.sum())} {what} label(s) outside 0..{num_classes - 1} (first: record "
                        f"{int(torch.nonzero(bad)[0])}); labels must be class indices below num_classes")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{origin}: {what} inputs contain nan or inf; clean the records first")
