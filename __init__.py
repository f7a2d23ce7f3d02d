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
