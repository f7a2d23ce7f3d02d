"""CSV and Parquet files as ``UserData``: a label column, feature columns, an optional client column.

Features are ``feature-columns`` when given, else every other column that is numeric or has categories
in the data schema (the label and client columns never are); other columns are skipped and logged.
Encoding and scaling come from the schema only (simulations.data.spec); a non-numeric feature without
categories, a missing value without a declared fill, or a label outside the declared classes is one
DataError naming the column and the fix. Reads need pandas (and pyarrow for Parquet); both are installed
with flwr-datasets (through Hugging Face datasets).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.simulations.data.datasets import DataError
from dpfl.simulations.data.encoding import encode_feature, encode_labels, label_text
from dpfl.simulations.data.spec import DataSpec
from dpfl.simulations.data.user_data import UserData

log = logging.getLogger("dpfl")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise DataError("reading CSV or Parquet needs pandas: pip install pandas") from None
    return pandas


def read_table(path: str, kind: str) -> Any:
    """A pandas DataFrame of a local CSV or Parquet file (never a URL: dpfl reads no data over the network)."""
    if "://" in path:
        raise DataError(f"data-path {path!r} is a URL; dpfl never downloads data: copy the file to this machine "
                        f"and give its local path")
    where = Path(path).expanduser()
    if not path:
        raise DataError(f"dataset={kind!r} needs data-path: the {kind} file to read")
    if not where.is_file():
        raise DataError(f"{kind} file not found: {where}; fix data-path (dpfl never downloads data)")
    pd = _pandas()
    try:
        if kind == "parquet":
            try:
                import pyarrow  # noqa: F401 - pandas' Parquet engine
            except ImportError:
                raise DataError("reading Parquet needs pyarrow: pip install pyarrow") from None
            return pd.read_parquet(where)
        return pd.read_csv(where)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors of many kinds
        raise DataError(f"cannot read {kind} file {where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
                        ) from None


def feature_names(frame: Any, spec: DataSpec) -> list[str]:
    """The feature columns of a table, checked against its header."""
    pd = _pandas()
    columns = [str(c) for c in frame.columns]
    if spec.label_column not in columns:
        raise DataError(f"label column {spec.label_column!r} is not in {spec.path or 'the table'} (columns: "
                        f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}); set label-column")
    if spec.client_column and spec.client_column not in columns:
        raise DataError(f"client column {spec.client_column!r} is not in {spec.path or 'the table'}; set "
                        f"client-column to one of: {', '.join(columns[:20])}")
    reserved = {spec.label_column, spec.client_column}
    if spec.feature_columns:
        missing = [c for c in spec.feature_columns if c not in columns]
        if missing:
            raise DataError(f"feature-columns names {', '.join(map(repr, missing))}, not in "
                            f"{spec.path or 'the table'}; fix feature-columns")
        clash = [c for c in spec.feature_columns if c in reserved]
        if clash:
            raise DataError(f"feature-columns includes {', '.join(map(repr, clash))}, the label or client column; "
                            f"remove it")
        return list(spec.feature_columns)
    chosen, skipped = [], []
    for c in columns:
        if c in reserved:
            continue
        numeric = pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
        feature = spec.schema.feature(c)
        (chosen if numeric or (feature is not None and feature.categories) else skipped).append(c)
    if skipped:
        log.warning("%s: skipping non-numeric column(s) %s (declare categories in the data schema to use them)",
                    spec.path, ", ".join(skipped))
    if not chosen:
        raise DataError(f"{spec.path}: no numeric feature columns besides the label and client columns; list "
                        f"feature-columns or declare categories in the data schema")
    return chosen


def frame_to_arrays(frame: Any, spec: DataSpec, features: list[str],
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(x float32 (N, F), y int64 (N,), number of classes) of a table, with the schema's encoding."""
    pd = _pandas()
    y, num_classes = encode_labels(frame[spec.label_column].to_numpy(dtype=object), spec.schema,
                                   column=spec.label_column)
    blocks = []
    for c in features:
        col = frame[c]
        numeric = pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        values = col.to_numpy(dtype=np.float64, na_value=np.nan) if numeric else col.to_numpy(dtype=object)
        blocks.append(encode_feature(values, c, spec.schema.feature(c), numeric=numeric))
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
    return x.astype(np.float32), y, num_classes


def client_values(frame: Any, column: str) -> np.ndarray:
    """The client column as text (integral numbers without '.0'), for the by-column partition."""
    values = frame[column].to_numpy(dtype=object)
    return np.asarray(["" if v is None or (isinstance(v, float) and v != v) else label_text(v) for v in values],
                      dtype=object)


def load_tabular(spec: DataSpec) -> UserData:
    """A CSV or Parquet file (and its test file, when given) as UserData."""
    frame = read_table(spec.path, spec.kind)
    if len(frame) == 0:
        raise DataError(f"{spec.path} has a header but no records")
    features = feature_names(frame, spec)
    x, y, num_classes = frame_to_arrays(frame, spec, features)
    test = None
    if spec.test_path:
        test_frame = read_table(spec.test_path, spec.kind)
        missing = [c for c in (spec.label_column, *features) if c not in test_frame.columns]
        if missing:
            raise DataError(f"test file {spec.test_path} lacks column(s) {', '.join(map(repr, missing))} of the "
                            f"train file; both need the same columns")
        tx, ty, _ = frame_to_arrays(test_frame, spec, features)
        test = (torch.from_numpy(tx), torch.from_numpy(ty))
    clients = client_values(frame, spec.client_column) if spec.client_column else None
    return UserData(train=(torch.from_numpy(x), torch.from_numpy(y)), input_shape=(int(x.shape[1]),),
                    num_classes=num_classes, test=test, train_clients=clients,
                    class_names=spec.schema.labels or None, description=f"{spec.kind} file {spec.path}")
