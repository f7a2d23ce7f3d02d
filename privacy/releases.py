"""Releases: one application of a DP mechanism, described by its parameters (data, not code).

Both kinds of release here are Poisson-subsampled Gaussian mechanisms self-composed ``steps`` times;
they differ in who runs them and what a neighbouring dataset is (one record at a client for DP-SGD,
one client at the server for user-level DP-FedAvg). The accountants only need the parameters, which is
why a release is a frozen, hashable, JSON-able record.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import dp_accounting

__all__ = [
    "MECHANISMS", "DpSgdRelease", "FixedCohortGaussianRelease", "GaussianRelease", "Release", "release_from_dict",
    "validate_release_params",
]


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def validate_release_params(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Raise ValueError naming the bad value and what is allowed; a wrong release would be a wrong epsilon."""
    if not (_is_number(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier {noise_multiplier!r} is not valid: expected a finite number > 0")
    if not (_is_number(sample_rate) and 0 < sample_rate <= 1):
        raise ValueError(f"sample rate {sample_rate!r} is not valid: expected a number in (0, 1]")
    if not (_is_number(steps) and math.isfinite(steps) and float(steps).is_integer() and steps >= 1):
        raise ValueError(f"steps {steps!r} is not valid: expected an integer >= 1")


class _SampledGaussian:
    """Shared behaviour of the Poisson-subsampled Gaussian releases (fields live on the dataclasses)."""

    MECHANISM: ClassVar[str]
    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int
    mechanism: str

    def __post_init__(self) -> None:
        validate_release_params(self.noise_multiplier, self.sample_rate, self.steps)
        if not (_is_number(self.round) and float(self.round).is_integer() and self.round >= 0):
            raise ValueError(f"round {self.round!r} is not valid: expected an integer >= 0")
        if self.mechanism != self.MECHANISM:
            raise ValueError(f"mechanism {self.mechanism!r} is not valid for {type(self).__name__}: "
                             f"expected {self.MECHANISM!r}")
        # Plain Python scalars: numpy scalars would hash/compare the same but not serialise to JSON.
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "round", int(self.round))

    @property
    def key(self) -> tuple[str, float, float, int]:
        """What the privacy loss depends on (not the round number): the cache key of a release."""
        return (self.mechanism, self.noise_multiplier, self.sample_rate, self.steps)

    def to_dp_event(self) -> dp_accounting.DpEvent:
        """dp-accounting's description of this release, so any of its accountants can consume it."""
        sampled = dp_accounting.PoissonSampledDpEvent(self.sample_rate,
                                                      dp_accounting.GaussianDpEvent(self.noise_multiplier))
        return dp_accounting.SelfComposedDpEvent(sampled, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the fields of a ledger entry that describe the release)."""
        return {"round": self.round, "mechanism": self.mechanism, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of ``to_dict``; extra keys (a ledger entry's delta, epsilon, ...) are ignored."""
        missing = [k for k in ("noise_multiplier", "sample_rate", "steps") if k not in d]
        if missing:
            raise ValueError(f"release is missing {', '.join(missing)}: got keys {sorted(d)}")
        return cls(noise_multiplier=d["noise_multiplier"], sample_rate=d["sample_rate"], steps=d["steps"],
                   round=d.get("round", 0), mechanism=d.get("mechanism", cls.MECHANISM))


@dataclass(frozen=True)
class DpSgdRelease(_SampledGaussian):
    """One round of local DP-SGD at a client: Poisson-subsampled Gaussian, self-composed `steps` times."""

    MECHANISM: ClassVar[str] = "dp-sgd"
    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int = 0
    mechanism: str = "dp-sgd"


@dataclass(frozen=True)
class GaussianRelease(_SampledGaussian):
    """Server-side Gaussian on clipped client updates (user-level DP-FedAvg).

    ``sample_rate`` is the Poisson client-sampling rate (1.0: every client every round) and ``steps`` the
    number of rounds this release covers.
    """

    MECHANISM: ClassVar[str] = "gaussian"
    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    round: int = 0
    mechanism: str = "gaussian"


@dataclass(frozen=True)
class FixedCohortGaussianRelease(_SampledGaussian):
    """User-level DP-FedAvg with a cohort of exactly ``sample_rate x population`` clients drawn uniformly without
    replacement: the Gaussian on the sum, subsampled without replacement. Neighbouring populations differ by
    replacing one client (the population size is fixed and public). dp-accounting's RDP accountant is the one
    that accounts it (its PLD has no event for sampling without replacement); ``to_dp_event`` gives that event.
    """

    MECHANISM: ClassVar[str] = "gaussian-fixed-cohort"
    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    round: int = 0
    mechanism: str = "gaussian-fixed-cohort"
    population: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (_is_number(self.population) and float(self.population).is_integer() and self.population >= 1):
            raise ValueError(f"population {self.population!r} is not valid: expected an integer >= 1")
        object.__setattr__(self, "population", int(self.population))
        cohort = self.sample_rate * self.population
        if abs(cohort - round(cohort)) > 1e-6:
            raise ValueError(f"sample rate {self.sample_rate!r} x population {self.population} is not a whole cohort")

    @property
    def cohort(self) -> int:
        return round(self.sample_rate * self.population)

    @property
    def key(self) -> tuple[str, float, float, int]:
        return (self.mechanism, self.noise_multiplier, self.sample_rate, self.steps, self.population)  # type: ignore[return-value]

    def to_dp_event(self) -> dp_accounting.DpEvent:
        """``noise_multiplier`` is noise std / C, as everywhere in dpfl. dp-accounting's sampled-without-
        replacement Gaussian (Wang, Balle & Kasiviswanathan 2019) wants std / the l2-sensitivity under
        replace-one, and replacing one client moves the sum of updates clipped to C by up to 2C: hence / 2."""
        sampled = dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.cohort, dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0))
        return dp_accounting.SelfComposedDpEvent(sampled, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "population": self.population}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        if "population" not in d:
            raise ValueError(f"release is missing population: got keys {sorted(d)}")
        return cls(noise_multiplier=d.get("noise_multiplier"), sample_rate=d.get("sample_rate"),
                   steps=d.get("steps"), round=d.get("round", 0), mechanism=d.get("mechanism", cls.MECHANISM),
                   population=d["population"])


Release = DpSgdRelease | GaussianRelease | FixedCohortGaussianRelease
MECHANISMS: dict[str, type[DpSgdRelease] | type[GaussianRelease] | type[FixedCohortGaussianRelease]] = {
    DpSgdRelease.MECHANISM: DpSgdRelease, GaussianRelease.MECHANISM: GaussianRelease,
    FixedCohortGaussianRelease.MECHANISM: FixedCohortGaussianRelease,
}


def release_from_dict(d: dict[str, Any]) -> Release:
    """The release a dict (e.g. a ledger entry) describes; its ``mechanism`` picks the class."""
    if not isinstance(d, dict):
        raise ValueError(f"release must be a dict, got {type(d).__name__}")
    mechanism = d.get("mechanism", DpSgdRelease.MECHANISM)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism {mechanism!r} is not known: expected one of {', '.join(MECHANISMS)}")
    return MECHANISMS[mechanism].from_dict(d)
