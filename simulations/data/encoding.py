"""Labels and feature columns to arrays with the public schema only (nothing is fitted on the records).

Errors name the column, how many records are affected and the first one (a record number, never a
record's value: an error may travel further than the data owner's console).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpfl.simulations.data.datasets import DataError
from dpfl.simulations.data.spec import FeatureSpec, Schema

NO_CLASSES = ("declare the classes: labels = [...] (class names in index order) or num-classes = K (labels are "
              "the integers 0..K-1), in the run config or the data schema; dpfl does not read the label set off "
              "private records")


def _first(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return f"{len(rows)} record(s) (first: record {int(rows[0])})"


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "fc":
        return np.isnan(values)
    return np.array([v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())
                     or str(v) == "<NA>" for v in values], dtype=bool)


def label_text(value: object) -> str:
    """How a label value is compared with ``labels = [...]``: integral numbers as integers ("1.0" -> "1")."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value).strip()


def encode_labels(values: Sequence[object] | np.ndarray, schema: Schema, *, column: str = "label",
                  ) -> tuple[np.ndarray, int]:
    """(int64 class indices, number of classes) of a label column, from the schema's classes only."""
    values = np.asarray(values, dtype=object if not isinstance(values, np.ndarray) else None)
    missing = _missing(values)
    if missing.any():
        raise DataError(f"label column {column!r} is missing in {_first(missing)}: drop those records")
    if schema.labels:
        index = {name: k for k, name in enumerate(schema.labels)}
        codes = np.fromiter((index.get(label_text(v), -1) for v in values), dtype=np.int64, count=len(values))
        bad = codes < 0
        if bad.any():
            raise DataError(f"label column {column!r} has values outside the declared labels in {_first(bad)}: "
                            f"add the class to labels = [...] or drop those records")
        return codes, len(schema.labels)
    if schema.num_classes < 2:
        raise DataError(f"label column {column!r}: {NO_CLASSES}")
    k = schema.num_classes
    try:
        numbers = values.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"label column {column!r} is not numeric but no labels = [...] are declared; list the "
                        f"class names in labels = [...] (in index order)") from None
    bad = (numbers != np.round(numbers)) | (numbers < 0) | (numbers >= k)
    if bad.any():
        raise DataError(f"label column {column!r} has values outside the classes 0..{k - 1} (num-classes={k}) "
                        f"in {_first(bad)}: fix num-classes, declare labels = [...], or drop those records")
    return numbers.astype(np.int64), k


def _scale(values: np.ndarray, spec: FeatureSpec | None) -> np.ndarray:
    if spec is None:
        return values
    if spec.range is not None:
        lo, hi = spec.range
        return (values - lo) / (hi - lo)
    if spec.mean is not None and spec.std is not None:
        return (values - spec.mean) / spec.std
    return values


def encode_feature(values: np.ndarray, name: str, spec: FeatureSpec | None, *, numeric: bool) -> np.ndarray:
    """One column as float64 (N, width): numeric values scaled by the schema, or one-hot categories."""
    missing = _missing(values)
    if missing.any():
        if spec is None or spec.fill is None:
            raise DataError(f"feature column {name!r} is missing in {_first(missing)}: fill or drop those records, "
                            f"or declare a fill value in the data schema ([features.{name}] fill = ...)")
        values = values.copy() if values.dtype != object else values.astype(object)
        values[missing] = spec.fill
    if spec is not None and spec.categories:
        index = {c: k for k, c in enumerate(spec.categories)}
        codes = np.fromiter((index.get(label_text(v), -1) for v in values), dtype=np.int64, count=len(values))
        if (codes < 0).any():
            raise DataError(f"feature column {name!r} has values outside its declared categories in "
                            f"{_first(codes < 0)}: add them to [features.{name}] categories")
        out = np.zeros((len(values), len(spec.categories)))
        out[np.arange(len(values)), codes] = 1.0
        return out
    if not numeric:
        raise DataError(f"feature column {name!r} is not numeric: declare its categories in the data schema "
                        f"([features.{name}] categories = [...], one-hot encoded), or leave it out with "
                        f"feature-columns")
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"feature column {name!r} has values that are not numbers: declare its categories in the "
                        f"data schema or fix the column") from None
    if not np.isfinite(numbers).all():
        raise DataError(f"feature column {name!r} has infinite values in {_first(~np.isfinite(numbers))}: fix or "
                        f"drop those records")
    return _scale(numbers, spec)[:, None]
