"""Datasets load offline, partitions are seeded, disjoint and complete, client splits match declared sizes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dpfl.simulations.data.clients import CONFIG_DEFAULTS, load_client_data, load_test_set, true_sizes
from dpfl.simulations.data.datasets import DATASETS, FASHION_MNIST_DIR, DataError, dataset_info, load_dataset
from dpfl.simulations.data.partitions import partition_indices

SCHEMES = ["iid", "dirichlet", "shards"]


def _cfg(**overrides: object) -> dict[str, object]:
    cfg: dict[str, object] = {**CONFIG_DEFAULTS, "dataset": "digits", "num-clients": 5}
    cfg.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return cfg


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    return load_dataset("digits").train_y.numpy()


def test_defaults_match_the_run_config() -> None:
    from dpfl.simulations.config import OPTIONS

    defaults = {o.key: o.default for o in OPTIONS}
    assert {k: defaults[k] for k in CONFIG_DEFAULTS} == CONFIG_DEFAULTS
    options = {o.key: o for o in OPTIONS}
    from dpfl.simulations.config.options import BUILT_IN_DATASETS, FILE_DATASETS
    from dpfl.simulations.data.spec import FILE_KINDS

    assert set(BUILT_IN_DATASETS) == set(DATASETS) and FILE_DATASETS == FILE_KINDS
    assert all(options["dataset"].check(name) for name in (*DATASETS, *FILE_KINDS, "pkg.mod:loader"))
    assert not any(options["dataset"].check(name) for name in ("mnist", "csv2", ":x", "mod:"))


def test_digits_loads_offline_standardised_and_stratified() -> None:
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.input_shape == (1, 8, 8) == dataset_info("digits")[0] and ds.num_classes == 10
    assert abs(float(ds.train_x.mean())) < 1e-4 and abs(float(ds.train_x.std()) - 1) < 1e-3
    assert set(np.bincount(ds.test_y.numpy())) <= {35, 36, 37}  # stratified 20 %
    assert load_dataset("digits", seed=7) is ds  # cached; the split does not depend on the run seed


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_reproducible_disjoint_and_complete(digit_labels: np.ndarray, scheme: str) -> None:
    parts = partition_indices(digit_labels, 10, scheme, seed=3)
    again = partition_indices(digit_labels, 10, scheme, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    flat = np.concatenate(parts)
    assert len(flat) == len(digit_labels) and np.array_equal(np.sort(flat), np.arange(len(digit_labels)))
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)
    other = partition_indices(digit_labels, 10, scheme, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_partition_schemes_have_their_label_skew(digit_labels: np.ndarray) -> None:
    def labels_per_client(scheme: str, **kw: float) -> list[int]:
        parts = partition_indices(digit_labels, 10, scheme, seed=0, **kw)  # type: ignore[arg-type]
        return [len(np.unique(digit_labels[p])) for p in parts]

    assert min(labels_per_client("iid")) == 10
    assert max(labels_per_client("shards", shards_per_client=2)) <= 4  # a shard may straddle two labels
    iid_sizes = [len(p) for p in partition_indices(digit_labels, 10, "iid", seed=0)]
    assert max(iid_sizes) - min(iid_sizes) <= 1
    skewed = partition_indices(digit_labels, 10, "dirichlet", seed=0, dirichlet_alpha=0.1)
    even = partition_indices(digit_labels, 10, "dirichlet", seed=0, dirichlet_alpha=100.0)

    def imbalance(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(digit_labels[p], minlength=10).max() / len(p) for p in parts]))

    assert imbalance(skewed) > imbalance(even) + 0.2
    assert min(len(p) for p in skewed) >= 10


def test_impossible_partitions_raise_data_errors(digit_labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="dirichlet-alpha"):
        partition_indices(digit_labels, 100, "dirichlet", seed=0, dirichlet_alpha=0.05)
    with pytest.raises(DataError, match="only 1437 records"):
        partition_indices(digit_labels, 2000, "iid", seed=0)
    with pytest.raises(DataError, match="shards"):
        partition_indices(digit_labels, 100, "shards", seed=0, shards_per_client=20)
    with pytest.raises(DataError, match="iid, dirichlet, shards"):
        partition_indices(digit_labels, 5, "by-writer", seed=0)
    with pytest.raises(DataError, match="fashion-mnist, digits, synthetic"):
        load_dataset("cifar-100")


@pytest.mark.parametrize("num_clients", [1, 7, 40])
def test_synthetic_gives_any_number_of_clients(num_clients: int) -> None:
    cfg = _cfg(dataset="synthetic", num_clients=num_clients)
    sizes = true_sizes(cfg)
    assert len(sizes) == num_clients and min(sizes) >= 30
    test_x, test_y, shape, classes = load_test_set(cfg)
    assert shape == (60,) and classes == 10 and test_x.shape[1:] == (60,)
    ds = load_dataset("synthetic", seed=42, num_clients=num_clients)
    held_out = len(test_y) / (len(test_y) + len(ds.train_y))
    assert 0.18 < held_out < 0.22  # 20 % of each client's samples, pooled
    last = load_client_data(cfg, num_clients - 1)
    assert last.true_records == sizes[-1] and last.train_x.shape[1:] == (60,)
    with pytest.raises(DataError, match="out of range"):
        load_client_data(cfg, num_clients)


def test_synthetic_clients_differ_and_do_not_depend_on_federation_size() -> None:
    small, large = _cfg(dataset="synthetic", num_clients=4), _cfg(dataset="synthetic", num_clients=12)
    assert torch.equal(load_client_data(small, 2).train_x, load_client_data(large, 2).train_x)
    clients = [load_client_data(large, k) for k in range(12)]
    means = torch.stack([c.train_x.mean(0) for c in clients])
    assert float(means.std(0).mean()) > 0.5  # v_k ~ N(B_k, 1): input distributions differ
    label_hists = np.stack([np.bincount(c.train_y.numpy(), minlength=10) / len(c.train_y) for c in clients])
    assert float(np.abs(label_hists - label_hists.mean(0)).sum(1).mean()) > 0.5
    assert len({c.true_records for c in clients}) > 6  # lognormal sizes
    other_seed = load_client_data({**large, "seed": 1}, 2)
    assert not torch.equal(other_seed.train_x[:5], clients[2].train_x[:5])
    iid = true_sizes({**large, "partition": "iid"})  # the natural partition: `partition` is ignored
    assert iid == true_sizes({**large, "partition": "dirichlet"})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_true_sizes_match_client_data(scheme: str) -> None:
    cfg = _cfg(partition=scheme, validation_fraction=0.2, seed=5)
    sizes = true_sizes(cfg)
    ds = load_dataset("digits")
    seen = []
    for k, size in enumerate(sizes):
        client = load_client_data(cfg, k)
        assert client.true_records == size == len(client.train_x)
        assert len(client.val_y) == round(0.2 * (size + len(client.val_y)))
        seen += [client.train_y, client.val_y]
    assert len(torch.cat(seen)) == len(ds.train_y)
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.sort(ds.train_y).values)
    assert load_client_data(cfg, 0) is load_client_data(dict(cfg), 0)  # cached per process


def test_client_split_is_disjoint_and_zero_fraction_gives_empty_validation() -> None:
    ds = load_dataset("digits")
    client = load_client_data(_cfg(validation_fraction=0.25), 1)
    syn = _cfg(dataset="synthetic", num_clients=6, validation_fraction=0.3)
    clients = [load_client_data(syn, k) for k in range(6)]
    rows = torch.cat([t for c in clients for t in (c.train_x, c.val_x)])
    train_x = load_dataset("synthetic", num_clients=6).train_x
    assert len(rows) == len(train_x) == len(torch.unique(rows, dim=0))  # continuous rows: no duplicates
    none = load_client_data(_cfg(validation_fraction=0.0), 1)
    assert none.val_x.shape == (0, 1, 8, 8) and none.val_y.shape == (0,)
    assert none.true_records == client.true_records + len(client.val_y)
    assert true_sizes(_cfg(validation_fraction=0.0)) == [len(p) for p in partition_indices(
        ds.train_y.numpy(), 5, "iid", seed=42)]
    with pytest.raises(DataError, match="validation-fraction"):
        load_client_data(_cfg(validation_fraction=1.0), 0)


def test_load_test_set_digits() -> None:
    x, y, shape, classes = load_test_set(_cfg())
    assert x.shape == (360, 1, 8, 8) and y.shape == (360,) and shape == (1, 8, 8) and classes == 10


def test_missing_fashion_mnist_names_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--data-dir" in message and "github.com/zalandoresearch/fashion-mnist" in message
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_test_set(_cfg(dataset="fashion-mnist", data_dir=str(tmp_path)))


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reader_on_small_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28))
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, compress=compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, compress=compress)
    ds = load_dataset("fashion-mnist", str(tmp_path))
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (12, 1, 28, 28)
    assert torch.equal(ds.train_y, torch.arange(30) % 10)
    assert float(ds.train_x.min()) == pytest.approx(-0.2860 / 0.3530, abs=0.01)
    assert load_dataset("fashion-mnist", str(tmp_path) + "/") is ds  # cached by directory


def test_corrupt_idx_file_is_a_data_error(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    with pytest.raises(DataError, match="corrupt|not an IDX"):
        load_dataset("fashion-mnist", str(tmp_path))


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_MNIST_DIR / "train-images-idx3-ubyte").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.shape == (60000,) and ds.test_y.shape == (10000,)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert np.array_equal(np.bincount(ds.train_y.numpy()), np.full(10, 6000))
    assert abs(float(ds.train_x.mean())) < 0.01 and abs(float(ds.train_x.std()) - 1) < 0.01
    cfg = {**CONFIG_DEFAULTS, "num-clients": 10, "validation-fraction": 0.1}
    sizes = true_sizes(cfg)
    assert sum(sizes) == 54000 and load_client_data(cfg, 9).true_records == sizes[9]
