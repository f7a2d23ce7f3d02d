"""NumPy ``.npz`` files, image folders and Hugging Face datasets saved to disk, as ``UserData``, offline.

- ``npz``: arrays ``x`` (N, ...) and ``y`` (N,); optional ``x_test``/``y_test`` (the server's test set),
  ``client`` (N,) (for ``partition = "by-column"``) and ``classes`` (class names, public schema shipped
  with the file). Read with ``allow_pickle=False``.
- ``imagefolder``: ``data-path/<class>/<image>`` (or ``data-path/train/<class>/`` and
  ``data-path/test/<class>/``); the classes are the sorted folder names (public schema), or
  ``labels = [...]`` to fix their order. Images are read with Pillow, converted to ``image-mode`` (RGB
  or L), resized to ``image-size`` when given (else all must share one size) and scaled to [0, 1] by 1/255:
  a fixed transform, nothing fitted.
- ``hf-disk``: ``datasets.load_from_disk(data-path)`` (a ``Dataset`` or a ``DatasetDict`` with a
  ``train`` and optionally a ``test`` split); ``label-column`` (default ``label``; a ``ClassLabel``
  feature gives the classes), and either one image / array column or numeric scalar columns
  (``feature-columns``, as for CSV). Partitions use simulations.data.partitions like every other dataset
  (or ``by-column``), so the partition cache and ``check_partition`` apply.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.simulations.data.datasets import DataError
from dpfl.simulations.data.encoding import encode_labels, label_text
from dpfl.simulations.data.spec import DataSpec, Schema
from dpfl.simulations.data.tabular import feature_names, frame_to_arrays
from dpfl.simulations.data.user_data import UserData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _local(path: str, kind: str, what: str = "data-path") -> Path:
    if not path:
        raise DataError(f"dataset={kind!r} needs {what}")
    if "://" in path:
        raise DataError(f"{what} {path!r} is a URL; dpfl never downloads data: copy it to this machine first")
    where = Path(path).expanduser()
    if not where.exists():
        raise DataError(f"{kind} data not found: {where} does not exist; fix {what} (dpfl never downloads data)")
    return where


# --- npz ---------------------------------------------------------------------------------------------------
def load_npz(spec: DataSpec) -> UserData:
    where = _local(spec.path, "npz")
    try:
        with np.load(where, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read npz file {where}: {exc} (object arrays are refused: save plain numeric "
                        f"arrays)") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"npz file {where} lacks array(s) {', '.join(missing)} (it has: "
                        f"{', '.join(sorted(arrays)) or 'none'}); save x (N, ...) and y (N,)")
    schema, names = spec.schema, spec.schema.labels or None
    if not schema.labels and not schema.num_classes and "classes" in arrays:  # names of y = 0..K-1
        names = tuple(label_text(c) for c in arrays["classes"].tolist())
        schema = Schema((), len(names), schema.features)
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise DataError(f"npz file {where}: x has {len(x)} records but y has {len(y)}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"npz file {where}: x has dtype {x.dtype}; save numeric inputs")
    codes, k = encode_labels(y, schema, column="y")
    test = None
    if spec.test_path:
        with np.load(_local(spec.test_path, "npz", "test-data-path"), allow_pickle=False) as archive:
            test = (archive["x"], archive["y"]) if {"x", "y"} <= set(archive.files) else None
        if test is None:
            raise DataError(f"npz test file {spec.test_path} lacks arrays x and y")
    elif "x_test" in arrays and "y_test" in arrays:
        test = (arrays["x_test"], arrays["y_test"])
    test_t = None
    if test is not None:
        test_t = (torch.from_numpy(np.asarray(test[0], dtype=np.float32)),
                  torch.from_numpy(encode_labels(test[1], schema, column="y_test")[0]))
    clients = None
    if spec.client_column or "client" in arrays:
        key = spec.client_column or "client"
        if key not in arrays:
            raise DataError(f"npz file {where} has no array {key!r} (client-column)")
        clients = np.asarray([label_text(v) for v in arrays[key].tolist()], dtype=object)
    return UserData(train=(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(codes)),
                    input_shape=tuple(int(d) for d in x.shape[1:]), num_classes=k, test=test_t,
                    train_clients=clients, class_names=names, description=f"npz file {where}")


# --- image folders -----------------------------------------------------------------------------------------
def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install pillow") from None
    return Image


def _image_array(path: Path, spec: DataSpec, image: Any) -> np.ndarray:
    try:
        with image.open(path) as im:
            im = im.convert(spec.image_mode)
            if spec.image_size is not None:
                h, w = spec.image_size
                im = im.resize((w, h), image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _read_class_folders(root: Path, classes: tuple[str, ...], spec: DataSpec, *, what: str,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    image = _pil()
    index = {c: k for k, c in enumerate(classes)}
    arrays, labels, first_shape = [], [], None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise DataError(f"{what} folder {folder} is not one of the classes ({', '.join(classes)}); add it to "
                            f"labels = [...] or remove it")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            a = _image_array(path, spec, image)
            if first_shape is None:
                first_shape = (a.shape, path)
            elif a.shape != first_shape[0]:
                raise DataError(f"images differ in size: {first_shape[1]} is {first_shape[0]} but {path} is "
                                f"{a.shape} (C x H x W); set image-size = 'HxW' to resize them all")
            arrays.append(a)
            labels.append(index[folder.name])
    if not arrays:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; expected "
                        f"{root}/<class>/<image>")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64)


def load_imagefolder(spec: DataSpec) -> UserData:
    root = _local(spec.path, "imagefolder")
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = Path(spec.test_path).expanduser() if spec.test_path else (
        root / "test" if train_root != root and (root / "test").is_dir() else None)
    folders = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir()))
    classes = spec.schema.labels or folders
    if len(classes) < 2:
        raise DataError(f"{train_root} has {len(classes)} class folder(s); an image folder needs one folder per "
                        f"class, at least 2")
    x, y = _read_class_folders(train_root, classes, spec, what="train")
    test = _read_class_folders(test_root, classes, spec, what="test") if test_root is not None else None
    if test is not None and tuple(test[0].shape[1:]) != tuple(x.shape[1:]):
        raise DataError(f"test images are {tuple(test[0].shape[1:])} but train images {tuple(x.shape[1:])}; set "
                        f"image-size")
    return UserData(train=(x, y), input_shape=tuple(int(d) for d in x.shape[1:]), num_classes=len(classes),
                    test=test, class_names=classes, description=f"image folder {root}")


# --- Hugging Face datasets saved to disk -------------------------------------------------------------------
def _hf_split(ds: Any, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, int, tuple[str, ...] | None]:
    features = ds.features
    if spec.label_column not in features:
        raise DataError(f"hf-disk dataset has no label column {spec.label_column!r} (columns: "
                        f"{', '.join(features)}); set label-column")
    schema = spec.schema
    label_feature = features[spec.label_column]
    names = getattr(label_feature, "names", None)
    if names and not schema.labels and not schema.num_classes:  # ClassLabel: labels are already 0..K-1
        schema = Schema((), len(names), schema.features)
    reserved = {spec.label_column, spec.client_column}
    candidates = list(spec.feature_columns) or [c for c in features if c not in reserved]
    kinds = {c: type(features[c]).__name__ for c in candidates if c in features}
    arrays = [c for c, k in kinds.items() if k in ("Image", "Array2D", "Array3D", "Sequence", "List")]
    y, k = encode_labels(np.asarray(ds[spec.label_column], dtype=object), schema, column=spec.label_column)
    class_names = tuple(names) if names else None
    if len(arrays) == 1 and (not spec.feature_columns or list(spec.feature_columns) == arrays):
        column = arrays[0]
        x = np.asarray(ds.with_format("numpy")[column], dtype=np.float32)
        if kinds[column] == "Image":  # H x W (x C) bytes -> C x H x W in [0, 1]
            x = x / 255.0
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, y, k, class_names
    if arrays and spec.feature_columns:
        raise DataError(f"hf-disk: feature-columns mixes array/image columns ({', '.join(arrays)}) with others; "
                        f"give one image or array column, or scalar columns only")
    frame = ds.remove_columns(arrays).to_pandas()
    spec = dataclasses.replace(spec, schema=schema)
    x, _, _ = frame_to_arrays(frame, spec, feature_names(frame, spec))
    return x, y, k, class_names


def load_hf_disk(spec: DataSpec) -> UserData:
    where = _local(spec.path, "hf-disk")
    try:
        import datasets
    except ImportError:
        raise DataError("hf-disk needs Hugging Face datasets: pip install datasets (flwr-datasets installs it)"
                        ) from None
    try:
        loaded = datasets.load_from_disk(str(where))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{where} is not a dataset saved with save_to_disk: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{where} has splits {', '.join(loaded)} but no 'train' split")
        train, test = loaded["train"], loaded.get("test")
    else:
        train, test = loaded, None
    if spec.test_path:
        test = datasets.load_from_disk(str(_local(spec.test_path, "hf-disk", "test-data-path")))
    x, y, k, names = _hf_split(train, spec)
    test_t = None
    if test is not None:
        tx, ty, _, _ = _hf_split(test, spec)
        test_t = (torch.from_numpy(tx), torch.from_numpy(ty))
    clients = None
    if spec.client_column:
        if spec.client_column not in train.features:
            raise DataError(f"hf-disk dataset has no client column {spec.client_column!r}")
        clients = np.asarray([label_text(v) for v in train[spec.client_column]], dtype=object)
    return UserData(train=(torch.from_numpy(x), torch.from_numpy(y)), input_shape=tuple(int(d) for d in x.shape[1:]),
                    num_classes=k, test=test_t, train_clients=clients, class_names=names,
                    description=f"hf-disk dataset {where}")
