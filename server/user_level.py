"""User-level DP-FedAvg at the server (McMahan et al. 2018; adaptive clipping: Andrew et al. 2021).

The unit of privacy is a whole client. Each round the server draws a Poisson cohort (every client
independently with probability q, from a cryptographically secure generator, so the cohort's size varies),
each sampled client clips its model update to L2 norm C on its own machine, the server sums the updates it
receives, adds Gaussian noise of standard deviation z_update * C to the sum and divides by the fixed
denominator q * N (the expected cohort, never the number of replies: that would make the sensitivity depend
on who replied). One round is one Poisson-subsampled Gaussian mechanism on the federation's clients, booked
in ``ledgers/server.jsonl`` as a ``GaussianRelease(z, q, steps=1)`` **before** the noised aggregate is used.

Adaptive clipping: each client also reports whether its update was within C. The server releases the noised
centred count sum(b_i - 1/2) + N(0, sigma_b^2) (sensitivity 1/2 under add/remove of one client) and moves C
geometrically toward the target quantile: C <- C * exp(-eta * (b_hat - gamma)). The update sum and the count
are one Gaussian mechanism on the same cohort with sensitivity vector (C, 1/2), so together they are exactly a
Gaussian with noise multiplier z where z^-2 = z_update^-2 + (2 sigma_b)^-2 (Andrew et al., Theorem 1), sampled
once. The ledger books that z (the run's stated noise multiplier) and the updates get z_update. Accounting the
two as separately sampled mechanisms would claim the amplification twice for one cohort: a smaller, unsound
epsilon (tests/test_user_level.py shows both, and that dp-accounting's RDP finds the same z).

Trust model: central DP. The server sees clipped updates in the clear; the guarantee covers everything it
publishes (models, metrics, reports), and amplification by sampling holds against observers who do not learn
the cohort, so neither the participants nor the size of a round's cohort is published.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.privacy import (
    FixedCohortGaussianRelease,
    GaussianRelease,
    Ledger,
    calibrate_noise,
    epsilon,
    release_from_dict,
)
from dpfl.privacy.calibration import calibrate_fixed_cohort, fixed_cohort_epsilon
from dpfl.privacy.policy import auto_delta
from dpfl.privacy.rundata import SERVER_LEDGER
from dpfl.privacy.secure_random import SecureRandom

log = logging.getLogger("dpfl.server")

PRIVACY_UNITS = ("record", "client")


class UserLevelError(ValueError):
    """User-level settings that cannot give a sound mechanism; the message names the keys."""


def update_noise_multiplier(total: float, count_std: float) -> float:
    """z_update from the run's total noise multiplier z and the clipped count's noise std sigma_b:
    z_update = (z^-2 - (2 sigma_b)^-2)^-1/2. Raises when 2 sigma_b <= z (the count alone would spend more than
    the whole release allows)."""
    if count_std <= 0:
        return total
    rest = total ** -2 - (2.0 * count_std) ** -2
    if rest <= 0:
        raise UserLevelError(f"clipped-count-stddev {count_std:g} is too small for user-noise-multiplier "
                             f"{total:g}: adaptive clipping needs 2 x clipped-count-stddev > the noise multiplier "
                             "(raise clipped-count-stddev, e.g. to the expected cohort / 20)")
    return rest ** -0.5


@dataclass(frozen=True)
class UserLevelSettings:
    """The user-level mechanism of a run, resolved from the run config (server/settings.py)."""

    population: int  # N: the clients that may be sampled
    sample_rate: float  # q: each client's probability of being in a round's cohort
    noise_multiplier: float  # z: the ledger's (total) noise multiplier of one round
    clip_norm: float  # C of round 1 (fixed unless adaptive)
    delta: float
    accountant: str
    budget: float = 0.0  # user-level epsilon budget (0: none); the run stops before a round would exceed it
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_stddev: float = 0.0  # sigma_b of the clipped count (adaptive only)
    sampling: str = "poisson"  # "fixed": exactly q N clients without replacement, replace-one, RDP

    @property
    def expected_cohort(self) -> float:
        return self.sample_rate * self.population

    @property
    def update_noise_multiplier(self) -> float:
        return update_noise_multiplier(self.noise_multiplier, self.count_stddev) if self.adaptive \
            else self.noise_multiplier


def user_level_settings(cfg: Mapping[str, Any]) -> UserLevelSettings:
    """The user-level mechanism a validated run config asks for, its noise multiplier calibrated to
    ``user-target-epsilon`` over ``num-server-rounds`` rounds when that is set. Raises UserLevelError with the
    keys to change (the CLI's preflight calls this before anything trains; the ServerApp again)."""
    population = int(cfg["num-clients"])
    q, rounds, accountant = float(cfg["fraction-train"]), int(cfg["num-server-rounds"]), str(cfg["accountant"])
    delta = float(cfg["user-delta"]) or auto_delta(population)
    adaptive = bool(cfg["adaptive-clipping"])
    target = float(cfg["user-target-epsilon"])
    sampling = str(cfg.get("client-sampling", "poisson"))
    if sampling == "fixed" and abs(q * population - round(q * population)) > 1e-9:
        raise UserLevelError(f"client-sampling = fixed needs fraction-train x num-clients to be a whole cohort: "
                             f"{q:g} x {population} = {q * population:g}")
    if target > 0:
        try:
            z = (calibrate_fixed_cohort(target, delta, q, rounds, population) if sampling == "fixed"
                 else calibrate_noise(target, delta, q, 1, rounds, accountant=accountant))
        except ValueError as exc:
            raise UserLevelError(f"user-target-epsilon {target:g} cannot be met with fraction-train {q:g} over "
                                 f"{rounds} rounds at user-delta {delta:g}: {exc}") from None
    else:
        z = float(cfg["user-noise-multiplier"])
    # auto: the paper's expected cohort / 20, but at least z, so the count takes at most a quarter of the budget
    count_std = (float(cfg["clipped-count-stddev"]) or max(q * population / 20.0, z)) if adaptive else 0.0
    settings = UserLevelSettings(
        population=population, sample_rate=q, noise_multiplier=z, clip_norm=float(cfg["user-clip-norm"]),
        delta=delta, accountant=accountant, budget=float(cfg["user-epsilon-budget"]), adaptive=adaptive,
        target_quantile=float(cfg["clip-target-quantile"]), clip_learning_rate=float(cfg["clip-learning-rate"]),
        count_stddev=count_std, sampling=sampling)
    settings.update_noise_multiplier  # noqa: B018 - raises UserLevelError now, not in round 1
    return settings


def noise_source(deterministic: bool, seed: int) -> SecureRandom:
    """The server's noise and sampling generator: AES-256-CTR keyed from OS entropy; with deterministic-noise
    (tests only, the run is stamped NOT PRIVATE) keyed from the seed, so a run can be repeated exactly."""
    if not deterministic:
        return SecureRandom()
    digest = hashlib.sha256(f"dpfl-user-level-{seed}".encode()).digest()
    return SecureRandom(key=digest, nonce=bytes(16))


class UserLevelMechanism:
    """Cohort sampling, the noised sum, adaptive C and the central ledger of one run."""

    def __init__(self, settings: UserLevelSettings, ledger_path: Path | None, *, run: str = "",
                 entry_fields: dict[str, Any] | None = None, rng: SecureRandom | None = None) -> None:
        self.settings = settings
        self.clip_norm = settings.clip_norm
        self.run = run
        self.entry_fields = dict(entry_fields or {})
        self.rng = rng or SecureRandom()
        self.ledger = Ledger.load(ledger_path) if ledger_path and ledger_path.exists() else Ledger(ledger_path)
        self.z_update = settings.update_noise_multiplier  # raises UserLevelError before any round

    # -- accounting ---------------------------------------------------------------------------------------
    def release(self, server_round: int) -> GaussianRelease | FixedCohortGaussianRelease:
        s = self.settings
        if s.sampling == "fixed":
            return FixedCohortGaussianRelease(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate,
                                              steps=1, round=server_round, population=s.population)
        return GaussianRelease(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate, steps=1,
                               round=server_round)

    def epsilon_after(self, server_round: int) -> float:
        """The user-level epsilon the ledger would hold once round ``server_round`` is charged."""
        return self._epsilon([*self.ledger.releases, self.release(server_round)])

    def _epsilon(self, releases: list[Any]) -> float:
        s = self.settings
        if s.sampling == "fixed":
            return fixed_cohort_epsilon(releases, s.delta)
        return epsilon(releases, s.delta, s.accountant)

    @property
    def accountant(self) -> str:
        """The accountant the central ledger's epsilons come from (fixed cohorts: RDP, the one that can)."""
        return "rdp" if self.settings.sampling == "fixed" else self.settings.accountant

    @property
    def neighbouring(self) -> str:
        return "replace-one" if self.settings.sampling == "fixed" else "add-remove"

    @property
    def epsilon(self) -> float:
        entries = self.ledger.entries
        return float(entries[-1]["epsilon"]) if entries else 0.0

    def over_budget(self, server_round: int) -> str:
        """Why round ``server_round`` may not run (its release would exceed the user-level budget), or ""."""
        s = self.settings
        if s.budget <= 0 or self._booked(server_round) is not None:
            return ""
        eps = self.epsilon_after(server_round)
        if eps > s.budget:
            return (f"round {server_round}: user-level epsilon would reach {eps:.4f}, above user-epsilon-budget "
                    f"{s.budget:g}; stopped before the release")
        return ""

    def charge(self, server_round: int) -> float:
        """Book this round's release durably, before its noised aggregate is used; returns the epsilon.
        A charge of exactly this round of this run already last on the ledger (booked just before the run
        was killed) is reused, never booked twice."""
        booked = self._booked(server_round)
        if booked is not None:
            return booked
        s, release = self.settings, self.release(server_round)
        eps = self._epsilon([*self.ledger.releases, release])
        self.ledger.append(release, delta=s.delta, accountant=self.accountant, epsilon=eps, client=SERVER_LEDGER,
                           run=self.run, neighbouring=self.neighbouring, privacy_unit="client",
                           population=s.population, expected_cohort=s.expected_cohort, client_sampling=s.sampling,
                           clip_norm=self.clip_norm, update_noise_multiplier=self.z_update,
                           clipped_count_stddev=s.count_stddev if s.adaptive else 0.0, **self.entry_fields)
        return eps

    def _booked(self, server_round: int) -> float | None:
        entries = self.ledger.entries
        if not entries:
            return None
        last = entries[-1]
        same = (last.get("run") == self.run and last.get("round") == server_round
                and release_from_dict(last) == self.release(server_round))
        return float(last["epsilon"]) if same else None

    # -- sampling -----------------------------------------------------------------------------------------
    def sample(self, candidates: list[int]) -> list[int]:
        """A Poisson cohort: each candidate independently with probability q, from the secure generator."""
        if not candidates:
            return []
        draws = self.rng.uniform(len(candidates)).numpy()
        if self.settings.sampling == "fixed":  # a uniform cohort of exactly q N: the q N smallest of iid draws
            size = round(self.settings.expected_cohort)
            return [candidates[i] for i in sorted(np.argsort(draws, kind="stable")[:size])]
        return [c for c, u in zip(candidates, draws, strict=True) if u < self.settings.sample_rate]

    # -- aggregation --------------------------------------------------------------------------------------
    def noised_mean(self, updates: list[list[np.ndarray]], within_clip: list[bool],
                    shapes: list[tuple[int, ...]], sparse: Sequence[tuple[int, int, float]] = ()) -> list[np.ndarray]:
        """(sum of the clipped updates + N(0, (z_update C)^2)) / (q N), per array; then the adaptive step.
        ``updates`` are client deltas already checked to be within C; an empty list releases noise only.
        ``sparse``: an audit's drawn canary clients, (array, flat index, value) each (server/canary_clients.py)."""
        s = self.settings
        denominator = s.expected_cohort
        std = self.z_update * self.clip_norm
        out = []
        for i, shape in enumerate(shapes):
            total = np.zeros(shape, dtype=np.float64)
            for update in updates:
                total += update[i]
            for array, flat, value in sparse:
                if array == i:
                    total.reshape(-1)[flat] += value
            total += self.rng.normal(shape, std=std, dtype=torch.float64).numpy()
            out.append(total / denominator)
        if s.adaptive:
            self._adapt(within_clip)
        return out

    def _adapt(self, within_clip: list[bool]) -> None:
        s = self.settings
        centred = sum(1.0 if b else 0.0 for b in within_clip) - 0.5 * len(within_clip)
        noised = centred + float(self.rng.normal(1, std=s.count_stddev, dtype=torch.float64)[0])
        share = noised / s.expected_cohort + 0.5  # estimated fraction of updates within C
        new = self.clip_norm * math.exp(-s.clip_learning_rate * (share - s.target_quantile))
        log.debug("adaptive clipping: C %.4g -> %.4g (noised share within C %.3f, target %.2f)", self.clip_norm,
                  new, share, s.target_quantile)
        self.clip_norm = new

    # -- resume -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "ledger_length": len(self.ledger.entries)}

    def restore(self, state: dict[str, Any]) -> None:
        clip = state.get("clip_norm")
        if isinstance(clip, int | float) and math.isfinite(clip) and clip > 0:
            self.clip_norm = float(clip)
