"""Bring your own data: CSV/Parquet/npz/image folders/hf-disk/plug-ins, schema-only encoding, by-column clients."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine

from dpfl.simulations.data.by_column import client_name, partition_by_values
from dpfl.simulations.data.custom import CustomDataset, load_custom_from_config
from dpfl.simulations.data.datasets import DataError, Dataset
from dpfl.simulations.data.partitions import check_partition
from dpfl.simulations.data.spec import DataSpec, is_custom_dataset
from dpfl.simulations.data.user_data import UserData, read_by_index, to_tensors

SITES = np.array(["Hospital A", "clinic-b", "c"])


@pytest.fixture
def cancer_csv(tmp_path: Path) -> Path:
    frame = load_breast_cancer(as_frame=True).frame
    frame["site"] = SITES[np.arange(len(frame)) % 3]
    path = tmp_path / "cancer.csv"
    frame.to_csv(path, index=False)
    return path


def _cfg(path: Path, **extra: Any) -> dict[str, Any]:
    return {"dataset": "csv", "data-path": str(path), "label-column": "target", "num-classes": 2, "seed": 1,
            **extra}


def _load(cfg: dict[str, Any]) -> CustomDataset:
    return load_custom_from_config(cfg)


def test_csv_with_a_site_column_gives_one_client_per_site(cancer_csv: Path) -> None:
    ds = _load(_cfg(cancer_csv, **{"client-column": "site", "partition": "by-column"}))
    assert isinstance(ds, Dataset)  # clients.py takes it unchanged
    assert ds.client_ids == tuple(client_name(s) for s in sorted(SITES))
    assert ds.client_ids[0].startswith("site-hospital-a-") and ds.client_ids[1:] == ("site-c", "site-clinic-b")
    assert ds.input_shape == (30,) and ds.num_classes == 2  # 30 features: site and target are not features
    assert ds.natural_partitions is not None and len(ds.natural_partitions) == 3
    check_partition(list(ds.natural_partitions), len(ds.train_y), "by-column")
    assert len(ds.train_y) + len(ds.test_y) == 569
    assert abs(len(ds.test_y) - 0.2 * 569) <= 3  # 20 % held out of each site
    # every record of one client comes from one site
    frame = pd.read_csv(cancer_csv)
    assert sorted(len(p) for p in ds.natural_partitions) == sorted(
        len(g) - round(len(g) * 0.2) for _, g in frame.groupby("site"))


def test_parquet_reads_the_same_records(cancer_csv: Path, tmp_path: Path) -> None:
    path = tmp_path / "cancer.parquet"
    pd.read_csv(cancer_csv).to_parquet(path)
    a = _load(_cfg(cancer_csv, **{"client-column": "site"}))
    b = _load(_cfg(path, dataset="parquet", **{"client-column": "site"}))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert a.natural_partitions is None  # without partition = by-column: the usual iid/dirichlet/shards apply


def test_named_labels_feature_subset_and_schema_scaling(tmp_path: Path) -> None:
    wine = load_wine(as_frame=True)
    frame = wine.frame
    frame["kind"] = np.array(["red", "white", "rose"])[frame["target"]]
    frame = frame.drop(columns="target")
    csv = tmp_path / "wine.csv"
    frame.to_csv(csv, index=False)
    schema = tmp_path / "schema.toml"
    schema.write_text(textwrap.dedent("""
        labels = ["white", "red", "rose"]
        [features.alcohol]
        range = [10.0, 15.0]
        [features.magnesium]
        mean = 100.0
        std = 10.0
    """))
    ds = _load({"dataset": "csv", "data-path": str(csv), "label-column": "kind", "data-schema": str(schema),
                "feature-columns": "alcohol,magnesium", "test-fraction": 0.0})
    assert ds.num_classes == 3 and ds.input_shape == (2,) and len(ds.test_y) == 0
    expected = torch.tensor(((frame["alcohol"] - 10) / 5).to_numpy(), dtype=torch.float32)
    assert torch.allclose(ds.train_x[:, 0], expected)
    assert torch.allclose(ds.train_x[:, 1], torch.tensor(((frame["magnesium"] - 100) / 10).to_numpy(),
                                                         dtype=torch.float32))
    assert ds.train_y.tolist() == [["white", "red", "rose"].index(k) for k in frame["kind"]]


def test_categories_one_hot_and_fill_from_the_schema(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("city,age,label\na,30,0\nb,,1\na,50,1\nb,20,0\n")
    schema = tmp_path / "s.json"
    schema.write_text('{"num-classes": 2, "features": {"city": {"categories": ["a", "b"]}, '
                      '"age": {"range": [0, 100], "fill": 40}}}')
    ds = _load({"dataset": "csv", "data-path": str(csv), "data-schema": str(schema), "test-data-path": str(csv)})
    assert ds.input_shape == (3,)
    assert ds.train_x.flatten().tolist() == pytest.approx([1, 0, 0.3, 0, 1, 0.4, 1, 0, 0.5, 0, 1, 0.2])


@pytest.mark.parametrize(("csv", "extra", "needles"), [
    ("a,b\n1,2\n", {"label-column": "target"}, ["label column 'target' is not in", "set label-column"]),
    ("x,city,target\n1,p,0\n2,q,1\n", {"feature-columns": "x,city"},
     ["feature column 'city' is not numeric", "categories", "feature-columns"]),
    ("x,y2,target\n1,2,0\n,3,1\n", {}, ["feature column 'x' is missing in 1 record(s) (first: record 1)", "fill"]),
    ("x,target\n1,0\n2,\n", {}, ["label column 'target' is missing in 1 record(s)"]),
    ("x,target\n1,0\n2,5\n3,1\n", {}, ["outside the classes 0..1 (num-classes=2) in 1 record(s) (first: record 1)"]),
    ("x,target\n1,0\n2,1\n", {"num-classes": 0}, ["declare the classes", "does not read the label set"]),
    ("x,target\n1,cat\n2,dog\n", {"labels": "cat,cow"}, ["outside the declared labels in 1 record(s)"]),
    ("x,site,target\n1,a,0\n2,,1\n3,b,1\n", {"client-column": "site", "partition": "by-column"},
     ["client column 'site' is empty in 1 record(s)", "give every record its client"]),
    ("x,target\n1,0\n2,1\n", {"partition": "by-column"}, ["needs a client column"]),
    ("x,target\n", {}, ["header but no records"]),
])
def test_bad_tables_fail_with_one_clear_line(tmp_path: Path, csv: str, extra: dict[str, Any],
                                             needles: list[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    with pytest.raises(DataError) as info:
        _load(_cfg(path, **extra))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_files_and_urls_fail_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="csv file not found: .*never downloads"):
        _load(_cfg(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is a URL; dpfl never downloads"):
        _load(_cfg(Path("x"), **{"data-path": "https://example.org/data.csv"}))
    for kind in ("npz", "imagefolder", "hf-disk"):
        with pytest.raises(DataError, match="does not exist"):
            _load({"dataset": kind, "data-path": str(tmp_path / "absent")})


def test_client_names_are_safe_stable_and_unique() -> None:
    assert client_name("site7") == "site-site7"
    for value in ("../../etc/passwd", "A", "a b", "", "é", "x" * 100, "CON", "a/b\\c:d"):
        name = client_name(value)
        assert name.startswith("site-") and all(c.isalnum() or c in "._-" for c in name) and len(name) <= 54
        assert name == client_name(value)  # depends on the value only
    assert len({client_name(v) for v in ("A", "a", "a ", " a", "a-")}) == 5
    names, parts = partition_by_values(["b", "a", "b", "c"])
    assert names == ("site-a", "site-b", "site-c") and [p.tolist() for p in parts] == [[1], [0, 2], [3]]


def test_npz_with_clients_and_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 3)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=rng.integers(0, 3, 40), client=np.arange(40) % 4, classes=np.array(["a", "b", "c"]),
             x_test=x[:5], y_test=np.zeros(5, dtype=np.int64))
    ds = _load({"dataset": "npz", "data-path": str(path), "partition": "by-column"})
    assert ds.input_shape == (2, 3) and ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    assert ds.client_ids == ("site-0", "site-1", "site-2", "site-3") and len(ds.test_y) == 5
    assert len(ds.train_y) == 40  # the file's own test set: nothing held out


def test_imagefolder_classes_are_sorted_folder_names(tmp_path: Path) -> None:
    from PIL import Image

    for split, count in (("train", 3), ("test", 1)):
        for k, cls in enumerate(("zebra", "ant")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((6, 5, 3), 40 * k + i, dtype=np.uint8)).save(folder / f"{i}.png")
    ds = _load({"dataset": "imagefolder", "data-path": str(tmp_path)})
    assert ds.class_names == ("ant", "zebra") and ds.input_shape == (3, 6, 5) and len(ds.test_y) == 2
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and float(ds.train_x.max()) <= 1.0
    grey = _load({"dataset": "imagefolder", "data-path": str(tmp_path), "image-mode": "L", "image-size": "4x4"})
    assert grey.input_shape == (1, 4, 4)
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "train" / "ant" / "big.png")
    with pytest.raises(DataError, match="images differ in size.*image-size"):
        _load({"dataset": "imagefolder", "data-path": str(tmp_path), "seed": 3})


def test_hf_disk_numeric_columns_with_a_class_label(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"a": datasets.Value("float32"), "b": datasets.Value("int64"),
                                  "label": datasets.ClassLabel(names=["no", "yes"]),
                                  "site": datasets.Value("string")})
    data = datasets.Dataset.from_dict({"a": [0.5, 1.5, 2.5, 3.5], "b": [1, 2, 3, 4], "label": [0, 1, 1, 0],
                                       "site": ["x", "y", "x", "y"]}, features=features)
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "hf"))
    ds = _load({"dataset": "hf-disk", "data-path": str(tmp_path / "hf"), "client-column": "site",
                "partition": "by-column"})
    assert ds.num_classes == 2 and ds.class_names == ("no", "yes") and ds.input_shape == (2,)
    assert ds.client_ids == ("site-x", "site-y") and len(ds.test_y) == 4


# --- loader plug-ins ---------------------------------------------------------------------------------------
USER_LOADERS = """
import torch
from torch.utils.data import Dataset
from dpfl.simulations.data.user_data import UserData

class Lazy(Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, i):
        return torch.full((2,), float(i)), i % 3

def tensors(config):
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    return UserData(train=(x, torch.arange(20) % 2), input_shape=(2,), num_classes=2,
                    train_clients=["s%d" % (i % 2) for i in range(20)])

def lazy(config):
    assert config["data-path"] == "here"
    return UserData(train=Lazy(), input_shape=(2,), num_classes=3, test=Lazy())

def wrong(config):
    return (1, 2)

def bad_labels(config):
    return UserData(train=(torch.zeros(4, 2), torch.tensor([0, 1, 2, 7])), input_shape=(2,), num_classes=3)

def boom(config):
    raise FileNotFoundError("no such file: data.bin")
"""


@pytest.fixture
def loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "myloaders.py").write_text(textwrap.dedent(USER_LOADERS))
    (tmp_path / "brokenloaders.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("myloaders", "brokenloaders"):
        sys.modules.pop(name, None)


def test_plugin_loader_with_tensors_and_a_lazy_dataset(loaders: Path) -> None:
    assert is_custom_dataset("myloaders:tensors") and not is_custom_dataset("digits")
    ds = _load({"dataset": "myloaders:tensors", "partition": "by-column", "test-fraction": 0.1})
    assert ds.client_ids == ("site-s0", "site-s1") and len(ds.train_y) == 18 and len(ds.test_y) == 2
    lazy = _load({"dataset": "myloaders:lazy", "data-path": "here"})
    assert len(lazy.train_y) == 30 and lazy.train_x[7].tolist() == [7.0, 7.0] and lazy.num_classes == 3


@pytest.mark.parametrize(("spec", "needle"), [
    ("myloaders:wrong", "returned a tuple; it must return dpfl.simulations.data.user_data.UserData"),
    ("myloaders:bad_labels", "1 train label(s) outside 0..2 (first: record 3)"),
    ("myloaders:boom", "raised FileNotFoundError: no such file: data.bin"),
    ("myloaders:absent", "has no attribute 'absent'"),
    ("brokenloaders:load", "module 'brokenloaders' does not import (ModuleNotFoundError"),
])
def test_plugin_loader_errors(loaders: Path, spec: str, needle: str) -> None:
    with pytest.raises(DataError) as info:
        _load({"dataset": spec})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_read_by_index_and_the_memory_limit(loaders: Path) -> None:
    import myloaders  # type: ignore[import-not-found]

    lazy = myloaders.Lazy()
    x, y = read_by_index(lazy, [4, 1])
    assert x.tolist() == [[4.0, 4.0], [1.0, 1.0]] and y.tolist() == [1, 1]
    with pytest.raises(DataError, match="not implemented yet"):
        to_tensors(lazy, (2,), max_bytes=16)
    data = UserData(train=(np.zeros((3, 2)), np.zeros(3)), input_shape=(2,), num_classes=2)
    assert to_tensors(data.train, (2,))[1].dtype == torch.int64


def test_spec_rejects_inconsistent_classes() -> None:
    with pytest.raises(DataError, match="num-classes=3 but 2 labels"):
        DataSpec.from_config({"dataset": "csv", "labels": "a,b", "num-classes": 3})
    with pytest.raises(DataError, match="not a user data source"):
        DataSpec.from_config({"dataset": "digits"})


def test_hf_disk_image_column(tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    images = [Image.fromarray(np.full((5, 4), 10 * i, dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 2]}, features=features).save_to_disk(
        str(tmp_path / "img"))
    ds = _load({"dataset": "hf-disk", "data-path": str(tmp_path / "img"), "test-fraction": 0.0})
    assert ds.input_shape == (1, 5, 4) and ds.num_classes == 3 and float(ds.train_x[5].max()) == pytest.approx(50 / 255)
