"""Checks a run can fail before anything trains: the device, writable directories, a budget that one round fits.

Each raises ``ConfigError`` with one line naming the key, what is wrong and what to set instead. They run
in ``preflight`` (simulate, launch, server), so a run that cannot finish says so before a client is
charged for a round it will never complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dpfl.privacy import DpSgdRelease, epsilon, steps_per_round
from dpfl.simulations.config import ConfigError, RunConfig


def check_device(cfg: RunConfig) -> None:
    """``device = cuda`` on a machine without a usable GPU fails here, not in every client's first step."""
    if cfg["device"] != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA GPU on this machine (CPU-only torch build or no "
                          "driver); use --device auto or --device cpu")


def check_writable(directory: str | Path, key: str) -> None:
    """Create ``directory`` (and its parents) and write a probe file in it, so an unwritable run or state
    directory is refused before round 1 instead of losing the run at its first write."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dpfl-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{key}={str(directory)!r} is not a writable directory ({exc.strerror or exc}); "
                          f"choose a directory you can write with --{key}") from None


def check_directories(cfg: RunConfig) -> None:
    check_writable(cfg["run-dir"], "run-dir")
    if cfg["state-dir"]:
        check_writable(cfg["state-dir"], "state-dir")


def check_budget_fits(cfg: RunConfig, sizes: Sequence[int], delta: float, sigmas: dict[str, float],
                      client_ids: Sequence[str]) -> None:
    """An explicit ``epsilon-budget`` must allow at least one round for every client, and must not be below
    the calibration target (the run would stop before its last round)."""
    budget = float(cfg["epsilon-budget"])
    if not cfg["dp"] or budget <= 0:
        return
    target = float(cfg["target-epsilon"])
    if target > budget:
        raise ConfigError(f"target-epsilon={target:g} is above epsilon-budget={budget:g}: the run would stop "
                          f"before its last round; set --target-epsilon {budget:g} or raise --epsilon-budget")
    for client_id, n in zip(client_ids, sizes, strict=True):
        sigma = sigmas.get(client_id, float(cfg["noise-multiplier"]))
        q, steps = steps_per_round(n, int(cfg["batch-size"]), int(cfg["local-epochs"]))
        one_round = epsilon([DpSgdRelease(sigma, q, steps)], delta, cfg["accountant"],
                            neighbouring=cfg["neighbouring"])
        if one_round > budget:
            raise ConfigError(f"epsilon-budget={budget:g} is below one round's epsilon {one_round:.4g} for "
                              f"{client_id} (sigma {sigma:.4g}, q {q:.4g}, {steps} steps): no client could "
                              "train; raise --epsilon-budget or --noise-multiplier")


def check_user_level(cfg: RunConfig) -> None:
    """privacy-unit = client: the server's mechanism (calibrated noise, the clipped count's share) can be
    built, checked now rather than when the ServerApp starts; ConfigError names the keys to change."""
    from dpfl.server.user_level import UserLevelError, UserLevelMechanism, user_level_settings

    try:
        settings = user_level_settings(cfg.as_dict())
    except UserLevelError as exc:
        raise ConfigError(str(exc)) from None
    if settings.budget > 0:
        first = UserLevelMechanism(settings, None).epsilon_after(1)
        if first > settings.budget:
            raise ConfigError(f"user-epsilon-budget {settings.budget:g} is below one round's user-level epsilon "
                              f"{first:.4g} (noise multiplier {settings.noise_multiplier:.4g}, q "
                              f"{settings.sample_rate:g}): no round could run; raise the budget or the noise")
