"""Datasets and partitions, all in memory, offline and seeded.

- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package, or the same four files
  (``.gz`` or not) in ``data-dir``. Never downloaded at run time: a run must not depend on the network.
- ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified) with a fixed seed, so every run
  seed is scored on the same test set.
- ``synthetic``: FedProx Synthetic(alpha, beta) (see ``simulations.data.synthetic``). Its clients are the
  generator's clients, so the ``partition`` option (and ``dirichlet-alpha``, ``shards-per-client``) is
  ignored; the server's test set pools the held-out 20 % of every client.

Partitions of the other datasets come from flwr-datasets partitioners run on a label-only table, so only
indices move; client data are index selections of the shared tensors. Each client's records are split
into local train / validation with a stream seeded by (seed, partition id). Partitions are cached on
disk (simulations.data.partition_cache), everything else per process; treat the returned tensors as
read-only, they are shared between callers.
"""

from __future__ import annotations

import gzip
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dpfl.simulations.data.partition_cache import cached_partitions

# name -> (per-example input shape, number of classes): known without loading anything.
DATASETS: dict[str, tuple[tuple[int, ...], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "synthetic": ((60,), 10),
}
PARTITIONS = ("iid", "dirichlet", "shards")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DIGITS_SPLIT_SEED = 0
MIN_PARTITION_SIZE = 10  # Dirichlet partitions below this are resampled; DP on tiny clients is hopeless

# Defaults of the data keys, equal to simulations/config/options.py (a test keeps them equal); used only when a
# caller passes a partial mapping.
CONFIG_DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "data-dir": "", "num-clients": 10, "partition": "iid", "dirichlet-alpha": 0.5,
    "shards-per-client": 2, "validation-fraction": 0.0, "seed": 42, "synthetic-alpha": 1.0,
    "synthetic-beta": 1.0,
}


class DataError(RuntimeError):
    """Data missing or unusable; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole dataset in memory: x float32 (N, *input_shape), y int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    natural_partitions: tuple[np.ndarray, ...] | None = None  # train indices of each generated client


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local train and validation records."""

    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def declared_records(self) -> int:
        """The client's public dataset size: it sets the sampling rate and the FedAvg weight."""
        return int(self.train_y.shape[0])


def dataset_info(name: str) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a dataset without loading it, for early config checks."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


# --- loaders -----------------------------------------------------------------------------------------------
def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST file format), checked so a truncated file fails clearly."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; reinstall it (`{FASHION_MNIST_APT}`) or "
                        f"download it again from {FASHION_MNIST_URL}") from None
    magic = int.from_bytes(data[0:4], "big") if len(data) >= 4 else 0
    if magic != 0x0800 | ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                        f"(magic {magic:#x}); reinstall it (`{FASHION_MNIST_APT}`)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    header = 4 + 4 * ndim
    if len(data) != header + math.prod(dims):
        raise DataError(f"{path} is truncated or corrupt ({len(data)} bytes for shape {dims}); "
                        f"reinstall it (`{FASHION_MNIST_APT}`)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_mnist_dir(data_dir: str) -> Path:
    """The directory holding the four IDX files: data_dir (or its fashion-mnist/ subfolder), else the
    Debian package's location."""
    if not data_dir:
        return FASHION_MNIST_DIR
    directory = Path(data_dir).expanduser()
    nested = directory / "fashion-mnist"
    if _find_idx(directory, FASHION_MNIST_FILES["train_x"]) is None and nested.is_dir():
        return nested
    return directory


@lru_cache(maxsize=2)
def _fashion_mnist(directory: Path) -> Dataset:
    paths = {k: _find_idx(directory, stem) for k, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        where = "does not exist" if not directory.is_dir() else f"lacks {', '.join(missing)} (.gz or not)"
        raise DataError(
            f"Fashion-MNIST not found: {directory} {where}. Install it with `{FASHION_MNIST_APT}` (the files "
            f"land in {FASHION_MNIST_DIR}), or download the four IDX files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
            f"{FASHION_MNIST_URL} into a directory and pass --data-dir DIR (run config data-dir). "
            "dpfl never downloads data at run time.")
    arrays = {k: _read_idx(p, 3 if k.endswith("_x") else 1) for k, p in paths.items() if p is not None}
    for split in ("train", "test"):
        x_shape, y_shape = arrays[f"{split}_x"].shape, arrays[f"{split}_y"].shape
        if x_shape[0] != y_shape[0] or x_shape[1:] != (28, 28):
            raise DataError(f"Fashion-MNIST {split} files in {directory} do not match (images {x_shape}, "
                            f"labels {y_shape}); reinstall them (`{FASHION_MNIST_APT}`)")

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.reshape(-1, 1, 28, 28).astype(np.float32))
        return x.div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset("fashion-mnist", images(arrays["train_x"]), labels(arrays["train_y"]),
                   images(arrays["test_x"]), labels(arrays["test_y"]), (1, 28, 28), 10)


@lru_cache(maxsize=1)
def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED)
    mean, std = float(x_tr.mean()), float(x_tr.std())  # one scalar: some pixels are constant

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32)).reshape(-1, 1, 8, 8)

    return Dataset("digits", images(x_tr), torch.from_numpy(y_tr), images(x_te), torch.from_numpy(y_te),
                   (1, 8, 8), 10)


@lru_cache(maxsize=4)
def _synthetic(num_clients: int, alpha: float, beta: float, seed: int) -> Dataset:
    from dpfl.simulations.data.synthetic import NUM_CLASSES, NUM_FEATURES, generate_client

    clients = [generate_client(seed, k, alpha, beta) for k in range(num_clients)]
    bounds = np.cumsum([0] + [len(c.train_y) for c in clients])
    natural = tuple(np.arange(bounds[k], bounds[k + 1], dtype=np.int64) for k in range(num_clients))

    def cat(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrays))

    return Dataset("synthetic", cat([c.train_x for c in clients]), cat([c.train_y for c in clients]),
                   cat([c.test_x for c in clients]), cat([c.test_y for c in clients]), (NUM_FEATURES,),
                   NUM_CLASSES, natural)


def load_dataset(name: str, data_dir: str = "", *, seed: int = 42, num_clients: int = 10,
                 synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0) -> Dataset:
    """The whole dataset, cached per process. ``seed``, ``num_clients`` and the synthetic parameters only
    matter for ``synthetic`` (they are not part of the other datasets' cache keys)."""
    if name == "fashion-mnist":
        return _fashion_mnist(_fashion_mnist_dir(data_dir))
    if name == "digits":
        return _digits()
    if name == "synthetic":
        if int(num_clients) < 1:
            raise DataError(f"synthetic needs num-clients >= 1, got {num_clients}")
        if not (synthetic_alpha >= 0 and synthetic_beta >= 0):
            raise DataError(f"synthetic-alpha and synthetic-beta must be >= 0, got {synthetic_alpha}, "
                            f"{synthetic_beta}")
        return _synthetic(int(num_clients), float(synthetic_alpha), float(synthetic_beta), int(seed))
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


# --- partitions --------------------------------------------------------------------------------------------
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
    _check_partition(parts, n, scheme)
    return parts


def _check_partition(parts: list[np.ndarray], n: int, scheme: str) -> None:
    """Every record at exactly one client: a record at two clients would break per-client accounting."""
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if len(flat) != n or not np.array_equal(np.sort(flat), np.arange(n)):
        raise DataError(f"partition={scheme} did not assign each of the {n} records to exactly one client "
                        "(degenerate partitioner output); try a larger dirichlet-alpha or fewer clients")
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partition={scheme} left clients {empty[:10]} without records; use fewer clients")


class _DataKey(NamedTuple):
    """The config values data depend on, normalised so irrelevant keys do not split the caches."""

    dataset: str
    data_dir: str
    seed: int
    num_clients: int
    partition: str
    dirichlet_alpha: float
    shards_per_client: int
    synthetic_alpha: float
    synthetic_beta: float


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    try:
        return cfg[key]
    except KeyError:
        return CONFIG_DEFAULTS[key]


def _data_key(cfg: Mapping[str, Any]) -> _DataKey:
    dataset = str(_get(cfg, "dataset"))
    key = _DataKey(dataset, str(_get(cfg, "data-dir")), int(_get(cfg, "seed")), int(_get(cfg, "num-clients")),
                   str(_get(cfg, "partition")), float(_get(cfg, "dirichlet-alpha")),
                   int(_get(cfg, "shards-per-client")), float(_get(cfg, "synthetic-alpha")),
                   float(_get(cfg, "synthetic-beta")))
    if dataset == "synthetic":  # the generator's clients are the partition
        return key._replace(partition="natural", dirichlet_alpha=0.0, shards_per_client=0)
    key = key._replace(synthetic_alpha=0.0, synthetic_beta=0.0)
    if key.partition != "dirichlet":
        key = key._replace(dirichlet_alpha=0.0)
    if key.partition != "shards":
        key = key._replace(shards_per_client=0)
    return key


def _dataset(key: _DataKey) -> Dataset:
    return load_dataset(key.dataset, key.data_dir, seed=key.seed, num_clients=key.num_clients,
                        synthetic_alpha=key.synthetic_alpha, synthetic_beta=key.synthetic_beta)


@lru_cache(maxsize=8)
def _partitions(key: _DataKey) -> tuple[np.ndarray, ...]:
    ds = _dataset(key)
    if ds.natural_partitions is not None:
        return ds.natural_partitions
    labels = ds.train_y.numpy()
    params = (key.num_clients, key.partition, key.seed, key.dirichlet_alpha, key.shards_per_client)
    parts = cached_partitions(labels, params, lambda: partition_indices(
        labels, key.num_clients, key.partition, seed=key.seed, dirichlet_alpha=key.dirichlet_alpha,
        shards_per_client=key.shards_per_client), lambda ps: _check_partition(ps, len(labels), key.partition))
    return tuple(parts)


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
    """The server's held-out test set: (x, y, input shape, number of classes)."""
    ds = _dataset(_data_key(cfg))
    return ds.test_x, ds.test_y, ds.input_shape, ds.num_classes


def declared_sizes(cfg: Mapping[str, Any]) -> list[int]:
    """Every client's declared (public) train size, from partition sizes alone: no tensors are copied."""
    fraction = _validation_fraction(cfg)
    return [len(p) - _num_val(len(p), fraction) for p in _partitions(_data_key(cfg))]
