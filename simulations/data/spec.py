"""What the run config says about a user's own data: where it is, its columns, and its public schema.

The label set, the number of classes and every feature encoding or scaling come from here - the run
config or a schema file (``data-schema``, TOML or JSON) - never from the private records themselves: a
label set or a mean read off the records would depend on every record and leak through the model
without any DP accounting. So:

- ``labels = ["benign", "malignant"]`` maps label values (compared as text; integral numbers as integers,
  so ``1.0`` is ``"1"``) to class indices in that order; or
- ``num-classes = K`` says the labels already are integers ``0..K-1``;
- neither: the loader refuses to guess (one exception: image folders, whose class list is the sorted
  folder names, and Hugging Face ``ClassLabel`` features - both public schema that ships with the data).

A schema file may also describe features (tabular data); nothing is fitted::

    labels = ["benign", "malignant"]
    [features.age]
    range = [0, 120]          # scaled to (x - 0) / (120 - 0)
    [features.bmi]
    mean = 25.0               # standardised: (x - mean) / std
    std = 5.0
    fill = 25.0               # replaces missing values (else a missing value is an error)
    [features.city]
    categories = ["a", "b"]   # one-hot, in this order; a value not listed is an error

Config keys read by ``DataSpec.from_config`` (to be added to simulations/config/options.py): ``dataset``,
``data-path``, ``test-data-path``, ``label-column``, ``feature-columns``, ``client-column``, ``labels``,
``num-classes``, ``data-schema``, ``test-fraction``, ``image-size``, ``image-mode``, ``seed``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpfl.simulations.data.datasets import DataError

FILE_KINDS = ("csv", "parquet", "npz", "imagefolder", "hf-disk")
TABULAR_KINDS = ("csv", "parquet")


def is_custom_dataset(name: str) -> bool:
    """A user's own data: one of ``FILE_KINDS`` or a ``package.module:loader`` plug-in."""
    module, sep, attr = str(name).partition(":")
    return name in FILE_KINDS or bool(sep and module.strip() and attr.strip())


@dataclass(frozen=True)
class FeatureSpec:
    """The public encoding of one feature column (nothing here is fitted on records)."""

    range: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    categories: tuple[str, ...] = ()
    fill: float | str | None = None

    @property
    def width(self) -> int:
        return len(self.categories) if self.categories else 1


def _feature(name: str, raw: Any) -> FeatureSpec:
    if not isinstance(raw, Mapping):
        raise DataError(f"data schema: features.{name} must be a table (range, mean/std, categories, fill)")
    unknown = set(raw) - {"range", "mean", "std", "categories", "fill"}
    if unknown:
        raise DataError(f"data schema: features.{name} has unknown keys {sorted(unknown)}; "
                        f"allowed: range, mean, std, categories, fill")
    rng = raw.get("range")
    if rng is not None:
        if not (isinstance(rng, list | tuple) and len(rng) == 2 and float(rng[1]) > float(rng[0])):
            raise DataError(f"data schema: features.{name}.range must be [min, max] with max > min, got {rng!r}")
        rng = (float(rng[0]), float(rng[1]))
    mean, std = raw.get("mean"), raw.get("std")
    if (mean is None) != (std is None) or (std is not None and not float(std) > 0):
        raise DataError(f"data schema: features.{name} needs both mean and std (std > 0)")
    cats = tuple(str(c) for c in raw.get("categories", ()))
    if cats and (rng is not None or mean is not None):
        raise DataError(f"data schema: features.{name}: categories cannot be combined with range or mean/std")
    if len(set(cats)) != len(cats):
        raise DataError(f"data schema: features.{name}.categories has duplicates")
    if rng is not None and mean is not None:
        raise DataError(f"data schema: features.{name}: give range or mean/std, not both")
    return FeatureSpec(rng, None if mean is None else float(mean), None if std is None else float(std), cats,
                       raw.get("fill"))


@dataclass(frozen=True)
class Schema:
    """The public schema of a dataset: classes and feature encodings."""

    labels: tuple[str, ...] = ()
    num_classes: int = 0
    features: tuple[tuple[str, FeatureSpec], ...] = ()

    def feature(self, name: str) -> FeatureSpec | None:
        return dict(self.features).get(name)


def load_schema(path: str) -> dict[str, Any]:
    """A schema file (TOML, or JSON by its .json suffix) as a mapping."""
    where = Path(path).expanduser()
    try:
        text = where.read_text()
    except OSError as exc:
        raise DataError(f"cannot read data schema {where}: {exc.strerror or exc}; fix data-schema") from None
    try:
        return json.loads(text) if where.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"data schema {where} is not valid {'JSON' if where.suffix == '.json' else 'TOML'}: "
                        f"{exc}") from None


def _words(value: Any) -> tuple[str, ...]:
    """A list from the config: a TOML list, or one string of comma-separated names."""
    if value is None or value == "":
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value)
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


def _image_size(value: Any) -> tuple[int, int] | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        h, w = value
    else:
        text = str(value).lower().replace(" ", "")
        h, _, w = text.partition("x") if "x" in text else (text, "", text)
    try:
        size = (int(h), int(w))
    except ValueError:
        raise DataError(f"image-size={value!r} is not valid: expected 'HxW' (e.g. '32x32') or one number") from None
    if min(size) < 1:
        raise DataError(f"image-size={value!r} is not valid: both sides must be >= 1")
    return size


@dataclass(frozen=True)
class DataSpec:
    """Where a user's own data is and how to read it; frozen and hashable (a cache key)."""

    kind: str
    path: str = ""
    test_path: str = ""
    label_column: str = "label"
    feature_columns: tuple[str, ...] = ()
    client_column: str = ""
    schema: Schema = field(default_factory=Schema)
    test_fraction: float = 0.2
    image_size: tuple[int, int] | None = None
    image_mode: str = "RGB"
    seed: int = 42
    options: tuple[tuple[str, Any], ...] = ()  # the whole run config, for plug-in loaders

    @property
    def is_plugin(self) -> bool:
        return self.kind not in FILE_KINDS

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DataSpec:
        """From run-config keys (missing keys take the defaults above); config values win over the schema's."""
        kind = str(cfg.get("dataset", ""))
        if not is_custom_dataset(kind):
            raise DataError(f"dataset={kind!r} is not a user data source: expected one of {', '.join(FILE_KINDS)} "
                            f"or 'package.module:loader'")
        raw = load_schema(str(cfg["data-schema"])) if cfg.get("data-schema") else {}
        unknown = set(raw) - {"labels", "num-classes", "features", "label-column", "client-column",
                              "feature-columns"}
        if unknown:
            raise DataError(f"data schema has unknown keys {sorted(unknown)}; allowed: labels, num-classes, "
                            f"features, label-column, client-column, feature-columns")
        labels = _words(cfg.get("labels")) or _words(raw.get("labels"))
        num_classes = int(cfg.get("num-classes", 0) or raw.get("num-classes", 0) or 0)
        if labels and len(set(labels)) != len(labels):
            raise DataError("labels has duplicates; list each class once, in class-index order")
        if labels and num_classes and num_classes != len(labels):
            raise DataError(f"num-classes={num_classes} but {len(labels)} labels are listed; give one of them")
        if num_classes == 1 or len(labels) == 1:
            raise DataError("a classifier needs at least 2 classes: fix labels / num-classes")
        features = raw.get("features", {})
        if not isinstance(features, Mapping):
            raise DataError("data schema: features must be a table of tables, one per column")
        schema = Schema(labels, num_classes or len(labels),
                        tuple((str(k), _feature(str(k), v)) for k, v in features.items()))
        fraction = float(cfg.get("test-fraction", 0.2))
        if not (0 <= fraction < 1 and math.isfinite(fraction)):
            raise DataError(f"test-fraction must be in [0, 1), got {fraction}")
        mode = str(cfg.get("image-mode", "RGB") or "RGB")
        if mode not in ("RGB", "L"):
            raise DataError(f"image-mode={mode!r} is not valid: expected 'RGB' or 'L' (grey)")
        options = tuple(sorted((str(k), v) for k, v in cfg.items() if isinstance(v, str | int | float | bool)))
        return cls(kind=kind, path=str(cfg.get("data-path", "") or cfg.get("data-dir", "") or ""),
                   test_path=str(cfg.get("test-data-path", "") or ""),
                   label_column=str(cfg.get("label-column", "") or raw.get("label-column", "") or "label"),
                   feature_columns=_words(cfg.get("feature-columns")) or _words(raw.get("feature-columns")),
                   client_column=str(cfg.get("client-column", "") or raw.get("client-column", "") or ""),
                   schema=schema, test_fraction=fraction, image_size=_image_size(cfg.get("image-size")),
                   image_mode=mode, seed=int(cfg.get("seed", 42)), options=options)
