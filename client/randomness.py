"""Where a client's DP randomness comes from.

Noise and Poisson sampling must be unpredictable to anyone who knows the run's ``--seed``:
a reproducible noise seed lets its holder subtract the noise. So the generators are seeded
from the operating system's entropy. Tests may ask for deterministic noise; such runs are
stamped NOT PRIVATE in every output.
"""

from __future__ import annotations

import secrets

import torch


def dp_generators(*, deterministic: bool, seed: int, partition_id: int, server_round: int,
                  device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(sampling generator on CPU, noise generator on the training device)."""
    sampling = torch.Generator(device="cpu")
    noise = torch.Generator(device=device)
    if deterministic:
        base = (seed * 1_000_003 + partition_id * 10_007 + server_round) % (2**63)
        sampling.manual_seed(base)
        noise.manual_seed(base + 1)
    else:
        sampling.manual_seed(secrets.randbits(63))
        noise.manual_seed(secrets.randbits(63))
    return sampling, noise


def pick_device(preference: str) -> torch.device:
    """'auto' takes a GPU when there is one, the CPU otherwise."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA GPU; use device=auto or cpu")
    if preference == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
