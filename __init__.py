"""dpfl: federated learning with differential privacy (Flower + Opacus), imported as ``dpfl.*``.

The checkout root is the ``dpfl`` package (pyproject.toml maps it with ``package-dir``), so the design
card's folders are ``dpfl.server``, ``dpfl.client``, ``dpfl.privacy``, ``dpfl.models`` and
``dpfl.simulations``. docs/architecture.md is the map of what lives where and what may import what.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpfl")
except PackageNotFoundError:  # a checkout used without installing it
    __version__ = "0+unknown"


def __getattr__(name: str):  # noqa: ANN202 - lazy: ``import dpfl`` stays light; torch loads on first use
    """``dpfl.simulate`` (simulations/api.py) and its ``RunResult``."""
    if name in ("simulate", "RunResult"):
        from dpfl.simulations import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpfl' has no attribute {name!r}")
