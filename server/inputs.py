"""What a run trained: the dataset (kind, path, content hash) and the model (import path, parameters).

Written under config.json's ``inputs`` key so a run directory names the user's own data and model, not
only dpfl's words for them: a file's or folder's SHA-256 says which version of the records a guarantee
was stated for. The server describes only what it can read itself: in a deployment where every owner
brings its own records (``dpfl client --data-path``) that is its held-out test set, and the owners'
paths are theirs ("held by each client").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

BUILT_IN = ("fashion-mnist", "digits", "synthetic")
_CHUNK = 1 << 20


def content_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def describe_path(text: str) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of a file or folder this process can read; None for an empty setting."""
    if not text:
        return None
    path = Path(text).expanduser()
    try:
        return {"path": str(path.resolve()), "sha256": content_sha256(path)}
    except OSError as exc:
        return {"path": str(path), "sha256": None, "unreadable": f"{type(exc).__name__}: {exc}"}


def describe_dataset(run_config: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(run_config.get("dataset", ""))
    out: dict[str, Any] = {"kind": kind, "source": "built-in" if kind in BUILT_IN else
                           ("loader" if ":" in kind else "file")}
    data_path = str(run_config.get("data-path", "") or "")
    if kind in BUILT_IN:
        if data_path:
            out["path"] = str(Path(data_path).expanduser().resolve())
    else:
        out["train"] = describe_path(data_path) or "held by each client (their own records)"
    test = describe_path(str(run_config.get("test-data-path", "") or ""))
    if test is not None:
        out["test"] = test
    schema = describe_path(str(run_config.get("data-schema", "") or ""))
    if schema is not None:
        out["schema"] = schema
    return out


def describe_model(spec: str, model: nn.Module, fixed: bool) -> dict[str, Any]:
    params = list(model.parameters())
    return {"spec": spec, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "parameters": int(sum(p.numel() for p in params)),
            "trainable-parameters": int(sum(p.numel() for p in params if p.requires_grad)),
            "opacus-fix-applied": bool(fixed)}


def describe_inputs(run_config: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """config.json's ``inputs``."""
    return {"dataset": describe_dataset(run_config),
            "model": describe_model(str(run_config.get("model", "")), model, bool(run_config.get("fix-model")))}
