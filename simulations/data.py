"""Datasets and partitions, all in memory and offline.

- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package (or ``data-dir``);
- ``digits``: scikit-learn's bundled 8x8 digits;
- ``synthetic``: the FedProx Synthetic(alpha, beta) benchmark (Li et al. 2020), generated per client.
Partitions come from flwr-datasets partitioners, applied to a label-only table so only indices move.
Everything is seeded from ``seed`` and cached per process.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
MIN_PARTITION_SIZE = 10


class DataError(RuntimeError):
    """Data missing or unusable; the message says how to fix it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    client_index: tuple[np.ndarray, ...] | None = None  # natural partition (synthetic)


@dataclass(frozen=True)
class ClientData:
    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def declared_records(self) -> int:
        return int(self.train_y.shape[0])


# --- loaders -----------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_mnist(data_dir: str) -> Dataset:
    directory = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    paths = {k: _find_idx(directory, stem) for k, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}). Install it with "
            "`apt-get install -y dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), or "
            "download the four IDX files from https://github.com/zalandoresearch/fashion-mnist on a machine "
            "with internet and pass --data-dir DIR. dpfl never downloads at run time.")
    arrays = {k: _read_idx(p) for k, p in paths.items() if p is not None}

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
        return (x - 0.2860) / 0.3530

    return Dataset("fashion-mnist", images(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)),
                   images(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)), (1, 28, 28), 10)


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean, std = x_tr.mean(), x_tr.std()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).reshape(-1, 1, 8, 8)

    return Dataset("digits", t(x_tr), torch.from_numpy(y_tr), t(x_te), torch.from_numpy(y_te), (1, 8, 8), 10)


def _synthetic(num_clients: int, alpha: float, beta: float, seed: int) -> Dataset:
    """FedProx Synthetic(alpha, beta): client k has its own model W_k, b_k ~ N(u_k, 1), u_k ~ N(0, alpha)
    and inputs x ~ N(v_k, Sigma), v_k ~ N(B_k, 1), B_k ~ N(0, beta), Sigma_jj = j^-1.2; sizes lognormal."""
    rng = np.random.default_rng(seed)
    dim, classes = 60, 10
    sizes = (rng.lognormal(4, 2, num_clients).astype(int) + 50).clip(max=5000)
    cov = np.array([(j + 1) ** -1.2 for j in range(dim)])
    xs, ys, owners = [], [], []
    for k in range(num_clients):
        u, b_mean = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        w = rng.normal(u, 1, (dim, classes))
        b = rng.normal(u, 1, classes)
        v = rng.normal(b_mean, 1, dim)
        x = rng.normal(v, np.sqrt(cov), (sizes[k], dim)).astype(np.float32)
        y = np.argmax(x @ w + b, axis=1)
        xs.append(x)
        ys.append(y)
        owners.append(np.full(sizes[k], k))
    x_all, y_all, own = np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(owners)
    test_mask = rng.random(len(y_all)) < 0.2
    train_idx = np.nonzero(~test_mask)[0]
    index = tuple(np.nonzero(own[train_idx] == k)[0] for k in range(num_clients))
    return Dataset("synthetic", torch.from_numpy(x_all[train_idx]), torch.from_numpy(y_all[train_idx]),
                   torch.from_numpy(x_all[test_mask]), torch.from_numpy(y_all[test_mask]), (dim,), classes, index)


@lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str = "", *, seed: int = 42, num_clients: int = 10,
                 synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0) -> Dataset:
    if name == "fashion-mnist":
        return _fashion_mnist(data_dir)
    if name == "digits":
        return _digits(seed)
    if name == "synthetic":
        return _synthetic(num_clients, synthetic_alpha, synthetic_beta, seed)
    raise DataError(f"unknown dataset {name!r}; known: fashion-mnist, digits, synthetic")


def _dataset_for(cfg: Mapping[str, Any]) -> Dataset:
    return load_dataset(str(cfg["dataset"]), str(cfg["data-dir"]), seed=int(cfg["seed"]),
                        num_clients=int(cfg["num-clients"]), synthetic_alpha=float(cfg["synthetic-alpha"]),
                        synthetic_beta=float(cfg["synthetic-beta"]))


# --- partitions ------------------------------------------------------------------------------------------------
def partition_indices(labels: np.ndarray, num_partitions: int, scheme: str, *, seed: int,
                      dirichlet_alpha: float = 0.5, shards_per_client: int = 2) -> list[np.ndarray]:
    """Indices of each partition, from flwr-datasets partitioners (seeded, reproducible)."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    if num_partitions > len(labels):
        raise DataError(f"{num_partitions} clients but only {len(labels)} records; use fewer clients")
    table = HFDataset.from_dict({"label": labels.tolist(), "idx": list(range(len(labels)))})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions)
        table = table.shuffle(seed=seed)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions, partition_by="label", alpha=dirichlet_alpha,
                                           min_partition_size=min(MIN_PARTITION_SIZE, len(labels) // num_partitions),
                                           self_balancing=True, seed=seed)
    elif scheme == "shards":
        partitioner = ShardPartitioner(num_partitions, partition_by="label",
                                       num_shards_per_partition=shards_per_client, seed=seed)
    else:
        raise DataError(f"unknown partition scheme {scheme!r}; known: iid, dirichlet, shards")
    partitioner.dataset = table
    try:
        return [np.asarray(partitioner.load_partition(k)["idx"], dtype=np.int64) for k in range(num_partitions)]
    except ValueError as exc:
        raise DataError(f"partition={scheme} could not split {len(labels)} records over {num_partitions} "
                        f"clients: {exc}. Use fewer clients or a larger dirichlet-alpha") from None


@lru_cache(maxsize=8)
def _partitions(dataset: str, data_dir: str, seed: int, num_clients: int, scheme: str, alpha: float, shards: int,
                syn_alpha: float, syn_beta: float) -> tuple[np.ndarray, ...]:
    ds = load_dataset(dataset, data_dir, seed=seed, num_clients=num_clients, synthetic_alpha=syn_alpha,
                      synthetic_beta=syn_beta)
    if ds.client_index is not None:  # synthetic: the natural per-client partition
        return ds.client_index
    return tuple(partition_indices(ds.train_y.numpy(), num_clients, scheme, seed=seed, dirichlet_alpha=alpha,
                                   shards_per_client=shards))


def _partitions_for(cfg: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    return _partitions(str(cfg["dataset"]), str(cfg["data-dir"]), int(cfg["seed"]), int(cfg["num-clients"]),
                       str(cfg["partition"]), float(cfg["dirichlet-alpha"]), int(cfg["shards-per-client"]),
                       float(cfg["synthetic-alpha"]), float(cfg["synthetic-beta"]))


def _split(indices: np.ndarray, fraction: float, seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, partition_id])
    shuffled = rng.permutation(indices)
    n_val = int(round(len(shuffled) * fraction)) if len(shuffled) > 1 else 0
    return shuffled[n_val:], shuffled[:n_val]


def load_client_data(cfg: Mapping[str, Any], partition_id: int) -> ClientData:
    ds = _dataset_for(cfg)
    idx = _partitions_for(cfg)[partition_id]
    train, val = _split(idx, float(cfg["validation-fraction"]), int(cfg["seed"]), partition_id)
    tr, va = torch.from_numpy(train), torch.from_numpy(val)
    return ClientData(partition_id, ds.train_x[tr], ds.train_y[tr], ds.train_x[va], ds.train_y[va])


def declared_sizes(cfg: Mapping[str, Any]) -> list[int]:
    parts = _partitions_for(cfg)
    frac, seed = float(cfg["validation-fraction"]), int(cfg["seed"])
    return [len(_split(p, frac, seed, k)[0]) for k, p in enumerate(parts)]


def load_test_set(cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    ds = _dataset_for(cfg)
    return ds.test_x, ds.test_y, ds.input_shape, ds.num_classes
