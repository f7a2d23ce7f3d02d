"""Dataset loaders: each known dataset as in-memory tensors, offline (nothing is downloaded at run time).

- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package, or the same four files
  (``.gz`` or not) in ``data-dir``. Never downloaded at run time: a run must not depend on the network.
- ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified) with a fixed seed, so every run
  seed is scored on the same test set.
- ``synthetic``: FedProx Synthetic(alpha, beta) (see ``simulations.data.synthetic``). Its clients are the
  generator's clients, so the ``partition`` option (and ``dirichlet-alpha``, ``shards-per-client``) is
  ignored; the server's test set pools the held-out 20 % of every client.
- ``fortunes``: quotations from Debian's ``fortunes`` package, classified by topic, as hashed token ids
  (``simulations.data.text``: no vocabulary is fitted on anyone's text); ``partition = natural`` splits by author.

How records are split over clients is ``simulations.data.partitions``; what one client or the server gets
for a run config is ``simulations.data.clients``.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> (per-example input shape, number of classes): known without loading anything.
DATASETS: dict[str, tuple[tuple[int, ...], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "synthetic": ((60,), 10),
    "fortunes": ((48,), 6),  # simulations/data/text.py: SEQUENCE_LENGTH token ids, FORTUNE_TOPICS
}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FORTUNES_DIR = Path("/usr/share/games/fortunes")  # Debian's fortunes package (simulations/data/text.py)
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DIGITS_SPLIT_SEED = 0



class DataError(RuntimeError):
    """Data missing or unusable; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole dataset in memory: x float32 (N, *input_shape) (token ids, int64, for text), y int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    natural_partitions: tuple[np.ndarray, ...] | None = None  # train indices of each generated client
    owners: np.ndarray | None = None  # a public owner key per train record (partition = natural), e.g. its author


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


def raw_preprocessing(name: str) -> dict[str, Any] | None:
    """How a built-in dataset's raw inputs become the model's: x_model = (x * scale - mean) / std, reshaped to
    ``shape`` (the model card records it, ``dpfl predict`` applies it to raw inputs); None for other sources."""
    if name == "fashion-mnist":
        return {"raw": "uint8 images 28 x 28 (values 0-255), as in the IDX files", "scale": 1 / 255.0,
                "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD, "shape": [1, 28, 28]}
    if name == "digits":
        mean, std = _digits_stats()
        return {"raw": "scikit-learn digits: 64 values 0-16 per image (8 x 8)", "scale": 1 / 16.0, "mean": mean,
                "std": std, "shape": [1, 8, 8]}
    if name == "fortunes":
        from dpfl.simulations.data.text import FORTUNE_TOPICS, HASH_BUCKETS, SEQUENCE_LENGTH, WORD

        return {"raw": "text, one quotation per line (or fortune files: quotations separated by lines of %)",
                "tokenizer": "hashing", "lowercase": True, "word_pattern": WORD.pattern,
                "token_id": f"1 + (BLAKE2b-64 of the word, little-endian) mod {HASH_BUCKETS}; 0 pads",
                "sequence_length": SEQUENCE_LENGTH, "classes": list(FORTUNE_TOPICS)}
    if name == "synthetic":
        from dpfl.simulations.data.synthetic import NUM_FEATURES

        return {"raw": f"{NUM_FEATURES} real features", "scale": 1.0, "mean": 0.0, "std": 1.0,
                "shape": [NUM_FEATURES]}
    return None


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED)


@lru_cache(maxsize=1)
def _digits_stats() -> tuple[float, float]:
    x_tr = _digits_split()[0]
    return float(x_tr.mean()), float(x_tr.std())  # one scalar: some pixels are constant


@lru_cache(maxsize=1)
def _digits() -> Dataset:
    x_tr, x_te, y_tr, y_te = _digits_split()
    mean, std = _digits_stats()

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


@lru_cache(maxsize=2)
def _fortunes(directory: str) -> Dataset:
    from dpfl.simulations.data.text import FORTUNE_TOPICS, SEQUENCE_LENGTH, CorpusMissingError, fortunes_dataset

    try:
        train_x, train_y, test_x, test_y, owners = fortunes_dataset(directory)
    except CorpusMissingError as exc:
        raise DataError(str(exc)) from None
    return Dataset("fortunes", train_x, train_y, test_x, test_y, (SEQUENCE_LENGTH,), len(FORTUNE_TOPICS),
                   owners=owners)


def load_dataset(name: str, data_dir: str = "", *, seed: int = 42, num_clients: int = 10,
                 synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0) -> Dataset:
    """The whole dataset, cached per process. ``seed``, ``num_clients`` and the synthetic parameters only
    matter for ``synthetic`` (they are not part of the other datasets' cache keys)."""
    if name == "fashion-mnist":
        return _fashion_mnist(_fashion_mnist_dir(data_dir))
    if name == "digits":
        return _digits()
    if name == "fortunes":
        return _fortunes(data_dir or str(FORTUNES_DIR))
    if name == "synthetic":
        if int(num_clients) < 1:
            raise DataError(f"synthetic needs num-clients >= 1, got {num_clients}")
        if not (synthetic_alpha >= 0 and synthetic_beta >= 0):
            raise DataError(f"synthetic-alpha and synthetic-beta must be >= 0, got {synthetic_alpha}, "
                            f"{synthetic_beta}")
        return _synthetic(int(num_clients), float(synthetic_alpha), float(synthetic_beta), int(seed))
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


