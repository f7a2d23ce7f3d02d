"""Where a client's DP randomness comes from: the Poisson sampler's and the Gaussian noise's sources.

Noise and Poisson sampling must be unpredictable to anyone who knows the run's ``--seed`` and to anyone
who sees some of their outputs: a reproducible noise seed lets its holder subtract the noise, and a
Mersenne Twister (``torch.Generator``) gives its whole state away after ~624 outputs. So by default
both come from ``SecureRandom`` (privacy/secure_random.py: AES-256-CTR keyed from OS entropy), a fresh
key per round and per source. Tests may ask for deterministic noise: seeded ``torch.Generator``s, the
exact draws Opacus made before; such runs are stamped NOT PRIVATE in every output.

Opacus' optimizers take only a ``torch.Generator``. ``SecureNoiseDPOptimizer`` and
``SecureNoiseDPOptimizerFastGradientClipping`` override only ``add_noise`` so that the noise comes from
a ``SecureRandom``; the mechanism is Opacus' own, line for line: ``p.grad = (p.summed_grad + N(0,
(noise_multiplier * max_grad_norm)**2)).view_as(p)``, then ``scale_grad`` divides by the expected batch
size as before. ``dp_optimizer`` builds whichever one the source calls for.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from dpfl.privacy.secure_random import SecureRandom

RandomSource = torch.Generator | SecureRandom  # seeded (tests only) or cryptographically secure


class DpRandomness(NamedTuple):
    """(sampling source, noise source). Unpacks like the old pair of generators, so callers that wrote
    ``sampling, noise = dp_generators(...)`` keep working."""

    sampling: RandomSource
    noise: RandomSource

    @property
    def secure(self) -> bool:
        """True when both sources are the CSPRNG (never in deterministic mode)."""
        return isinstance(self.sampling, SecureRandom) and isinstance(self.noise, SecureRandom)


def dp_generators(*, deterministic: bool, seed: int, partition_id: int, server_round: int,
                  device: torch.device) -> DpRandomness:
    """The round's (sampling, noise) sources.

    deterministic=True: seeded ``torch.Generator``s (sampling on CPU, noise on the training device),
    reproducible from (seed, partition, round) - for tests, NOT PRIVATE. Otherwise two ``SecureRandom``
    instances with independent keys from ``os.urandom``; they generate on the CPU and the noise is moved
    to ``device``.
    """
    if deterministic:
        sampling = torch.Generator(device="cpu")
        noise = torch.Generator(device=device)
        base = (seed * 1_000_003 + partition_id * 10_007 + server_round) % (2**63)
        sampling.manual_seed(base)
        noise.manual_seed(base + 1)
        return DpRandomness(sampling, noise)
    return DpRandomness(SecureRandom(), SecureRandom())


def uniform(source: RandomSource, n: int) -> torch.Tensor:
    """``n`` uniform draws on [0, 1) on the CPU: float32 from a torch generator (as before), float64
    (53 random bits) from a SecureRandom."""
    if isinstance(source, SecureRandom):
        return source.uniform(n)
    return torch.rand(n, generator=source)


def _noise_like(source: SecureRandom, references: list[torch.Tensor], std: float) -> list[torch.Tensor]:
    """One N(0, std**2) tensor per reference (its shape, dtype and device), from one request to the
    CSPRNG for all of them. std = 0 gives zeros and draws nothing, as Opacus' ``_generate_noise`` does."""
    if std == 0:
        return [torch.zeros(r.shape, device=r.device, dtype=r.dtype) for r in references]
    sizes = [r.numel() for r in references]
    kinds = {(r.dtype, r.device) for r in references}
    if len(kinds) == 1:  # the usual case: one cast and one transfer for the whole model
        dtype, device = next(iter(kinds))
        flat = source.normal(sum(sizes), std=std, dtype=dtype, device=device)
        return [chunk.view(r.shape) for chunk, r in zip(torch.split(flat, sizes), references, strict=True)]
    flat = source.normal(sum(sizes), std=std, dtype=torch.float64)
    return [chunk.to(dtype=r.dtype, device=r.device).view(r.shape)
            for chunk, r in zip(torch.split(flat, sizes), references, strict=True)]


class _SecureNoise:
    """``add_noise`` of Opacus 1.6's DPOptimizer with the noise drawn from ``self.noise_source``."""

    noise_source: SecureRandom
    params: list[torch.nn.Parameter]
    max_grad_norm: float

    def _noise_std(self) -> float:
        raise NotImplementedError

    def _init_source(self, noise_source: SecureRandom, kwargs: dict[str, Any]) -> None:
        if not isinstance(noise_source, SecureRandom):
            raise TypeError(f"noise_source must be a SecureRandom, not {type(noise_source).__name__}")
        if kwargs.get("generator") is not None or kwargs.get("secure_mode"):
            raise ValueError("the noise comes from noise_source: pass neither generator nor secure_mode")
        self.noise_source = noise_source

    def add_noise(self) -> None:
        """Stores clipped and noised result in ``p.grad``: summed_grad + N(0, (sigma * C)**2), per coordinate."""
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        noises = _noise_like(self.noise_source, [p.summed_grad for p in params], self._noise_std())
        for p, noise in zip(params, noises, strict=True):
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class SecureNoiseDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus' DPOptimizer (per-sample gradients: hooks, functorch) with CSPRNG noise."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_source: SecureRandom, **kwargs: Any) -> None:
        self._init_source(noise_source, kwargs)
        super().__init__(optimizer, **kwargs)

    def _noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm  # as DPOptimizer.add_noise


class SecureNoiseDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus' DPOptimizerFastGradientClipping (ghost clipping, dpfl's book-keeping) with CSPRNG noise."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_source: SecureRandom, **kwargs: Any) -> None:
        self._init_source(noise_source, kwargs)
        super().__init__(optimizer, **kwargs)

    def _noise_std(self) -> float:
        # as DPOptimizerFastGradientClipping.add_noise: the adjusted multiplier of adaptive clipping if set
        return getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm


def dp_optimizer(optimizer: torch.optim.Optimizer, *, fast_gradient_clipping: bool, noise_source: RandomSource,
                 **kwargs: Any) -> DPOptimizer:
    """Opacus' optimizer with ``generator=noise_source`` for a torch generator (unchanged behaviour), or
    our subclass drawing from it for a SecureRandom. ``kwargs`` go to the optimizer (noise_multiplier, ...)."""
    if isinstance(noise_source, SecureRandom):
        cls = SecureNoiseDPOptimizerFastGradientClipping if fast_gradient_clipping else SecureNoiseDPOptimizer
        return cls(optimizer, noise_source=noise_source, **kwargs)
    cls = DPOptimizerFastGradientClipping if fast_gradient_clipping else DPOptimizer
    return cls(optimizer, generator=noise_source, **kwargs)


def pick_device(preference: str) -> torch.device:
    """'auto' takes a GPU when there is one, the CPU otherwise."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA GPU; use device=auto or cpu")
    if preference == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
