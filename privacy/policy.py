"""The run's privacy policy in one place: delta, participation cap, budget, "not private", the statement.

Server, client, CLI, sweeps and report all read these rules from here, so they cannot disagree about
what a run promises. Inputs are the run config's flat kebab-case keys (``privacy`` imports nothing of
the rest of dpfl, so it takes a plain mapping, not ``RunConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NOT_PRIVATE_STAMP", "PolicyError", "PrivacyPolicy", "auto_delta", "effective_budget", "is_not_private",
    "participation_cap",
]

NOT_PRIVATE_STAMP = "NOT PRIVATE"
ASSUMPTION = ("Sample-level DP for each client's records, composed over every round that client trained in. "
              "The federation's epsilon is the maximum over clients because every record lives at exactly one "
              "client under a fixed partition and all clients share one delta.")

RELATION_WORDS = {
    "add-remove": ("Neighbouring datasets differ by adding or removing one record (add/remove). Each client's "
                   "sampling rate, steps and aggregation weight come from a public record count N that is fixed "
                   "independently of its records (declared by its owner, or the nominal share of the dataset), "
                   "so the true count is not published."),
    "replace-one": ("Neighbouring datasets differ by replacing one record (replace-one): the true record count of "
                    "each client is public; epsilon is from replace-one PLD accounting."),
}


USER_LEVEL_WORDS = (
    "User-level DP (privacy-unit = client): the guarantee protects each client's whole contribution, every "
    "record it holds at once. {relation} Each round the server {sampling}, each sampled client clips its model "
    "update to norm C on its own machine, and the server adds Gaussian noise of std z x C to the sum and divides "
    "by the expected cohort q x N. Trust: the server sees the clipped updates in the clear (central DP), and the "
    "amplification by sampling holds against anyone who does not learn the cohort, so neither the participants "
    "nor the size of a round's cohort is published.")
USER_SAMPLING_WORDS = {
    "poisson": ("Neighbouring federations differ by adding or removing one client.",
                "samples every client independently with probability q (Poisson)"),
    "fixed": ("Neighbouring federations differ by replacing one client (the population size is public); epsilon "
              "is from dp-accounting's RDP for sampling without replacement.",
              "samples exactly q x N clients uniformly without replacement"),
}


class PolicyError(ValueError):
    """The policy cannot be applied with what is known; the message says what to set."""


def is_not_private(dp: bool, deterministic_noise: bool) -> bool:
    """No DP guarantee: DP off, or noise seeded from --seed (anyone who knows the seed removes it)."""
    return (not dp) or bool(deterministic_noise)


def participation_cap(max_participations: int, num_rounds: int) -> int:
    """Most rounds one client may train in (0 means every round): the client calibrates its noise for this
    many releases and the server never samples it more often, so both must read the setting the same way."""
    return int(max_participations) or int(num_rounds)


def effective_budget(epsilon_budget: float, target_epsilon: float) -> float:
    """The budget a release must respect: the explicit one, a calibration target, or the smaller of
    both (0: none)."""
    if epsilon_budget > 0 and target_epsilon > 0:
        return min(epsilon_budget, target_epsilon)
    return max(epsilon_budget, target_epsilon, 0.0)


def auto_delta(total_records: int) -> float:
    """delta = 1 / (10 x total records), rounded down to two significant digits (so it stays below 1/n)."""
    raw = 1.0 / (10.0 * total_records)
    exponent = math.floor(math.log10(raw))
    mantissa = math.floor(raw / 10**exponent * 10) / 10
    return float(f"{mantissa:.1f}e{exponent}")


@dataclass(frozen=True)
class PrivacyPolicy:
    """What one run promises, read once from its config."""

    dp: bool
    deterministic_noise: bool
    private_metrics: bool
    client_evaluation: bool  # fraction-evaluate > 0: metrics computed on private validation data
    delta_setting: float  # 0: derive from the records (auto_delta)
    epsilon_budget: float
    target_epsilon: float
    max_participations: int
    num_rounds: int
    accountant: str
    neighbouring: str = "add-remove"
    privacy_unit: str = "record"  # "client": user-level DP-FedAvg at the server (server/user_level.py)
    client_sampling: str = "poisson"  # privacy-unit = client: "poisson" or "fixed" cohorts

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PrivacyPolicy:
        return cls(dp=bool(cfg["dp"]), deterministic_noise=bool(cfg["deterministic-noise"]),
                   private_metrics=bool(cfg["private-metrics"]),
                   client_evaluation=float(cfg["fraction-evaluate"]) > 0, delta_setting=float(cfg["delta"]),
                   epsilon_budget=float(cfg["epsilon-budget"]), target_epsilon=float(cfg["target-epsilon"]),
                   max_participations=int(cfg["max-participations"]), num_rounds=int(cfg["num-server-rounds"]),
                   accountant=str(cfg["accountant"]), neighbouring=str(cfg.get("neighbouring", "add-remove")),
                   privacy_unit=str(cfg.get("privacy-unit", "record")),
                   client_sampling=str(cfg.get("client-sampling", "poisson")))

    @property
    def user_level(self) -> bool:
        return self.privacy_unit == "client"

    @property
    def not_private(self) -> bool:
        return is_not_private(self.dp or self.user_level, self.deterministic_noise)

    @property
    def participation_cap(self) -> int:
        return participation_cap(self.max_participations, self.num_rounds)

    @property
    def budget(self) -> float:
        return effective_budget(self.epsilon_budget, self.target_epsilon)

    def delta(self, total_records: int | None) -> float:
        """The federation's one delta: configured, or auto_delta of the total declared records."""
        if self.delta_setting > 0:
            return self.delta_setting
        if not total_records:
            raise PolicyError("delta=0 (auto) needs the total number of declared records, which this server "
                              "does not know; set --delta (e.g. 1e-6)")
        return auto_delta(total_records)

    def statement(self) -> list[str]:
        """What the guarantee covers and what it does not, in words for the log, summary and report."""
        lines = []
        if not (self.dp or self.user_level):
            lines.append(f"{NOT_PRIVATE_STAMP}: dp=false, this run has no differential-privacy guarantee.")
        elif self.deterministic_noise:
            lines.append(f"{NOT_PRIVATE_STAMP}: deterministic-noise=true seeds the DP noise from --seed; anyone "
                         "who knows the seed can remove it. For tests only.")
        else:
            if self.user_level:
                relation, sampling = USER_SAMPLING_WORDS.get(self.client_sampling, USER_SAMPLING_WORDS["poisson"])
                lines.append(USER_LEVEL_WORDS.format(relation=relation, sampling=sampling))
            if self.dp:
                lines.append(ASSUMPTION)
                lines.append(RELATION_WORDS.get(self.neighbouring, f"Neighbouring relation: {self.neighbouring}."))
            else:
                lines.append("dp=false: no record-level DP-SGD at the clients; the user-level guarantee above is "
                             "the run's only one.")
        if self.private_metrics:
            lines.append("private-metrics=true: clients also sent loss/accuracy computed on their private data; "
                         "the guarantee does NOT cover those values.")
        if self.client_evaluation:
            lines.append("fraction-evaluate>0: client-side evaluation metrics were computed on private validation "
                         "data and are NOT covered by the guarantee.")
        return lines
