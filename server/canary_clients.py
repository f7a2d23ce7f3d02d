"""An audit's crafted clients under user-level DP: each update is C times one coordinate's unit vector.

A user-level audit (``dpfl audit --privacy-unit client``) needs canaries that are whole clients. They join the
population the server draws its Poisson cohorts from, each included there by its secret coin (only included
ones are given here); every round each is drawn into the cohort with the same probability q and the same secure
generator as the real clients, and a drawn one adds its update (norm C, so clipping leaves it unchanged) to the
clipped sum before the noise. The release, the divisor q N and the ledger entry are those of the ordinary round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CanaryClients:
    """Included canary clients: one (parameter name, flat index) each."""

    coordinates: tuple[tuple[str, int], ...]

    def contributions(self, sample: Callable[[list[int]], list[int]], keys: Sequence[str], floating: Sequence[int],
                      clip_norm: float) -> list[tuple[int, int, float]]:
        """(floating-array position, flat index, value) of every canary ``sample`` draws into this round's cohort."""
        position = {keys[i]: j for j, i in enumerate(floating)}
        drawn = sample(list(range(len(self.coordinates))))
        return [(position[self.coordinates[k][0]], self.coordinates[k][1], clip_norm) for k in drawn]
