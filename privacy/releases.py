"""Releases: one application of a DP mechanism, described by its parameters (data, not code)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting


def validate_release_params(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier {noise_multiplier} is not valid: expected a number > 0")
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample rate {sample_rate} is not valid: expected a number in (0, 1]")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps {steps} is not valid: expected an integer >= 1")


@dataclass(frozen=True)
class DpSgdRelease:
    """One round of local DP-SGD at a client: Poisson-subsampled Gaussian, self-composed `steps` times."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int = 0
    mechanism: str = "dp-sgd"

    def __post_init__(self) -> None:
        validate_release_params(self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def key(self) -> tuple[str, float, float, int]:
        """What the privacy loss depends on (not the round number)."""
        return (self.mechanism, float(self.noise_multiplier), float(self.sample_rate), int(self.steps))

    def to_dp_event(self) -> dp_accounting.DpEvent:
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        inner = gaussian if self.sample_rate >= 1 else dp_accounting.PoissonSampledDpEvent(self.sample_rate, gaussian)
        return dp_accounting.SelfComposedDpEvent(inner, int(self.steps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DpSgdRelease:
        return cls(noise_multiplier=float(d["noise_multiplier"]), sample_rate=float(d["sample_rate"]),
                   steps=int(d["steps"]), round=int(d.get("round", 0)), mechanism=str(d.get("mechanism", "dp-sgd")))


@dataclass(frozen=True)
class GaussianRelease(DpSgdRelease):
    """Server-side Gaussian on clipped client updates (user-level DP-FedAvg): q is the client sampling rate."""

    mechanism: str = "gaussian"


Release = DpSgdRelease


def release_from_dict(d: dict[str, Any]) -> Release:
    if d.get("mechanism", "dp-sgd") == "gaussian":
        return GaussianRelease(float(d["noise_multiplier"]), float(d["sample_rate"]), int(d["steps"]),
                               int(d.get("round", 0)))
    return DpSgdRelease.from_dict(d)
