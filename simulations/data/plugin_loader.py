"""A user's own data loader, ``dataset = "package.module:loader"``: imported, called, its answer checked.

The loader is a callable ``loader(config) -> UserData`` (see simulations.data.user_data for the
protocol); ``config`` is a read-only mapping of the run config's keys, so a loader can read its own
settings (``data-path`` and any other key). It must read local files only: dpfl runs offline, and a
loader that reaches for the network should fail with its own clear message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from dpfl.simulations.data.datasets import DataError
from dpfl.simulations.data.user_data import UserData, check_user_data


def _line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or '(no message)'}"


def resolve_loader(spec: str) -> Callable[[Mapping[str, Any]], object]:
    """The callable ``package.module:attribute`` names (the attribute may be dotted)."""
    module_name, _, attr_path = str(spec).partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path:
        raise DataError(f"dataset={spec!r} is not 'package.module:loader'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"data loader {spec!r}: module {module_name!r} does not import ({_line(exc)}); put the "
                        f"folder holding it on PYTHONPATH (or pip install its package)") from None
    except Exception as exc:  # noqa: BLE001 - user code at import time
        raise DataError(f"data loader {spec!r}: importing {module_name!r} raised {_line(exc)}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise DataError(f"data loader {spec!r}: {module_name!r} has no attribute {attr_path!r}; name a "
                            f"callable loader(config) -> UserData")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"data loader {spec!r} is a {type(obj).__name__}, not callable; name a callable "
                        f"loader(config) -> UserData")
    return obj  # type: ignore[return-value]


def load_plugin(spec: str, config: Mapping[str, Any]) -> UserData:
    """Call the loader with a read-only view of the run config and check what it returns."""
    loader = resolve_loader(spec)
    try:
        data = loader(MappingProxyType(dict(config)))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the loader is user code
        raise DataError(f"data loader {spec!r} raised {_line(exc)}") from None
    return check_user_data(data, f"data loader {spec!r}")
