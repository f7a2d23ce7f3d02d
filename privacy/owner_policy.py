"""A data owner's own privacy policy: the limits its records are used under, checked on its own machine.

The run config belongs to whoever submits the run; in a federation that is the server's operator, whom
the data owner does not have to trust. So the owner writes its limits in its own TOML file (`dpfl client
--privacy-policy FILE`), the client reads it from the node's own config, never from the run config, and
declines any instruction that breaks it, before anything trains. Unknown keys are an error: a typo must
not silently loosen a policy.

    data-source = "icu-2026"      # names the records: the ledger that covers them across runs
    max-epsilon = 8.0             # most epsilon over everything done with these records, all runs
    declared-records = 6000       # add-remove: the public record count N the owner fixes
    max-delta = 1e-6              # default 1 / declared-records (a delta >= 1/n can publish a record)
    min-noise-multiplier = 0.8    # default 0: none
    allow-not-private = false     # dp = false or deterministic noise may never run unless true
    allow-private-metrics = false # loss/accuracy on private data may never leave unless true
    accountants = ["pld", "prv", "rdp"]
    neighbouring = ["add-remove", "replace-one"]
    state-dir = "~/.local/state/dpfl"
    approved-apps = ["<sha256>"]  # deployment: the only app bundles this node runs (`dpfl app-hash`)
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["OwnerPolicy", "OwnerPolicyError", "RunRequest", "default_state_dir", "load_owner_policies",
           "policy_violations"]

RELATIONS = ("add-remove", "replace-one")
ACCOUNTANT_NAMES = ("pld", "prv", "rdp")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KEYS = ("data-source", "max-epsilon", "declared-records", "max-delta", "min-noise-multiplier",
        "allow-not-private", "allow-private-metrics", "accountants", "neighbouring", "state-dir", "approved-apps")
_APP_HASH = re.compile(r"^[0-9a-f]{64}$")


class OwnerPolicyError(ValueError):
    """A policy file is unreadable or holds a value it may not; the message names the file and key."""


def default_state_dir() -> Path:
    """Where an owner's ledgers live unless its policy says otherwise (XDG state directory)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dpfl"


@dataclass(frozen=True)
class OwnerPolicy:
    """One data owner's limits. ``source`` is the file it came from (for messages)."""

    data_source: str
    max_epsilon: float
    declared_records: int  # 0: not declared (then the run's declared count is used, and stated as such)
    max_delta: float  # 0: 1 / the declared record count
    min_noise_multiplier: float
    allow_not_private: bool
    allow_private_metrics: bool
    accountants: tuple[str, ...]
    neighbouring: tuple[str, ...]
    state_dir: Path
    approved_apps: tuple[str, ...] = ()  # empty: the launcher's own checkout (dpfl launch / dpfl client)
    source: str = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "policy") -> OwnerPolicy:
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise OwnerPolicyError(f"{source}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")

        def bad(key: str, expected: str) -> OwnerPolicyError:
            return OwnerPolicyError(f"{source}: {key} = {values.get(key)!r} is not valid: expected {expected}")

        def number(key: str, default: float | None, *, positive: bool = False) -> float:
            if key not in values:
                if default is None:
                    raise OwnerPolicyError(f"{source}: {key} is missing; a policy must state it")
                return default
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or v < 0 \
                    or (positive and v <= 0):
                raise bad(key, "a finite number > 0" if positive else "a finite number >= 0")
            return float(v)

        def flag(key: str) -> bool:
            v = values.get(key, False)
            if not isinstance(v, bool):
                raise bad(key, "true or false")
            return v

        def names(key: str, allowed: Sequence[str]) -> tuple[str, ...]:
            v = values.get(key, list(allowed))
            if not isinstance(v, list) or not v or any(x not in allowed for x in v):
                raise bad(key, f"a non-empty list drawn from {', '.join(allowed)}")
            return tuple(dict.fromkeys(v))

        data_source = values.get("data-source")
        if not isinstance(data_source, str) or not _SOURCE_NAME.match(data_source):
            raise bad("data-source", "a name of letters, digits, '.', '_' or '-' (it names the ledger file)")
        declared = values.get("declared-records", 0)
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0:
            raise bad("declared-records", "an integer >= 1 (the public record count N)")
        max_delta = number("max-delta", 0.0)
        if max_delta >= 1:
            raise bad("max-delta", "a number in (0, 1)")
        state_dir = values.get("state-dir", "")
        if not isinstance(state_dir, str):
            raise bad("state-dir", "a directory path")
        apps = values.get("approved-apps", [])
        if not isinstance(apps, list) or not apps and "approved-apps" in values \
                or any(not isinstance(a, str) or not _APP_HASH.match(a.lower()) for a in apps):
            raise bad("approved-apps", "a non-empty list of SHA-256 hex digests, as `dpfl app-hash` prints them")
        return cls(data_source=data_source, max_epsilon=number("max-epsilon", None, positive=True),
                   declared_records=int(declared), max_delta=max_delta,
                   min_noise_multiplier=number("min-noise-multiplier", 0.0),
                   allow_not_private=flag("allow-not-private"), allow_private_metrics=flag("allow-private-metrics"),
                   accountants=names("accountants", ACCOUNTANT_NAMES), neighbouring=names("neighbouring", RELATIONS),
                   state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(),
                   approved_apps=tuple(dict.fromkeys(a.lower() for a in apps)), source=source)

    @classmethod
    def load(cls, path: str | Path) -> OwnerPolicy:
        p = Path(path).expanduser()
        try:
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OwnerPolicyError(f"privacy policy {p} does not exist; pass the owner's policy file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise OwnerPolicyError(f"privacy policy {p} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise OwnerPolicyError(f"privacy policy {p} is not valid TOML: {exc}") from None
        return cls.from_mapping(values, str(p))

    def delta_limit(self, declared_records: int) -> float:
        """The largest delta this owner accepts: its own, else 1 / N (a larger delta can publish a record)."""
        return self.max_delta if self.max_delta > 0 else 1.0 / max(declared_records, 1)

    def ledger_path(self) -> Path:
        """The ledger of these records, shared by every run that uses them."""
        return self.state_dir / f"{self.data_source}.jsonl"


def load_owner_policies(path: str | Path, client_ids: Sequence[str], *, shared: bool = True) -> dict[str, OwnerPolicy]:
    """A folder with ``<client-id>.toml`` per client (a client without a file is an error), or one file: with
    ``shared`` (a simulation applying it to every client) each client gets its own data source, suffixed by
    its client id; without, the file is that one owner's, as written."""
    p = Path(path).expanduser()
    if p.is_dir():
        missing = [cid for cid in client_ids if not (p / f"{cid}.toml").is_file()]
        if missing:
            raise OwnerPolicyError(f"privacy policy folder {p} has no file for {', '.join(missing)}; add "
                                   f"<client-id>.toml for each client (e.g. {missing[0]}.toml)")
        return {cid: OwnerPolicy.load(p / f"{cid}.toml") for cid in client_ids}
    policy = OwnerPolicy.load(p)
    return {cid: _for_client(policy, cid) if shared else policy for cid in client_ids}


def _for_client(shared: OwnerPolicy, client_id: str) -> OwnerPolicy:
    """A shared policy applied to one simulated client: its records are its own data source."""
    fields = {**shared.__dict__, "data_source": f"{shared.data_source}-{client_id}"}
    return OwnerPolicy(**fields)


@dataclass(frozen=True)
class RunRequest:
    """What a run asks of a client's records, as the client sees it (partly from the server's run config)."""

    dp: bool
    deterministic_noise: bool
    private_metrics: bool
    delta: float
    accountant: str
    neighbouring: str
    noise_multiplier: float  # the sigma the client would train with (its own calibration, or the run's)
    declared_records: int


def policy_violations(policy: OwnerPolicy, request: RunRequest) -> list[str]:
    """Every way ``request`` breaks ``policy``, in words naming the key (empty: the policy allows it).
    The epsilon budget is checked separately, release by release, against the ledger of these records."""
    out: list[str] = []
    where = f"privacy policy {policy.source}"
    if not request.dp and not policy.allow_not_private:
        out.append(f"dp = false would train without any guarantee; {where} has allow-not-private = false")
    if request.deterministic_noise and not policy.allow_not_private:
        out.append(f"deterministic-noise = true makes the noise removable by whoever knows the seed; {where} has "
                   "allow-not-private = false")
    if request.private_metrics and not policy.allow_private_metrics:
        out.append(f"private-metrics = true would send loss/accuracy on private data; {where} has "
                   "allow-private-metrics = false")
    limit = policy.delta_limit(request.declared_records)
    if request.delta > limit:
        out.append(f"delta = {request.delta:.3g} is above this owner's limit {limit:.3g} (max-delta)")
    if request.dp and request.noise_multiplier < policy.min_noise_multiplier:
        out.append(f"noise multiplier {request.noise_multiplier:.4g} is below this owner's minimum "
                   f"{policy.min_noise_multiplier:.4g} (min-noise-multiplier)")
    if request.accountant not in policy.accountants:
        out.append(f"accountant {request.accountant!r} is not one this owner accepts ({', '.join(policy.accountants)})")
    if request.neighbouring not in policy.neighbouring:
        out.append(f"neighbouring relation {request.neighbouring!r} is not one this owner accepts "
                   f"({', '.join(policy.neighbouring)})")
    return out
