"""Named recipes: a preset is a layer of run-config values between the defaults and the user's own.

Each one records where its numbers come from, so a user can see what was measured and re-measure it.
``dpfl simulate --preset NAME`` applies one; any key given as well (config file, --run-config, flags)
still wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    description: str
    values: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


class UnknownPresetError(ValueError):
    """An unknown preset name; the message lists the known ones."""


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS)) or "none"
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {known}")
    return dict(PRESETS[name].values)


def preset_help() -> str:
    return "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items())
