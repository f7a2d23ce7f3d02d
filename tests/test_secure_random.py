"""The CSPRNG for DP noise and Poisson sampling (privacy.secure_random) and its plumbing (client.randomness).

Statistical checks use a fixed test key, so they are deterministic (no flaky p-values); the production
path (no key) is checked for fresh, independent streams.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn

from dpfl.client.randomness import (
    DpRandomness,
    SecureNoiseDPOptimizer,
    SecureNoiseDPOptimizerFastGradientClipping,
    dp_generators,
    dp_optimizer,
)
from dpfl.client.training import TrainSettings, poisson_batch, train_locally
from dpfl.privacy.secure_random import SecureRandom

TEST_KEY = bytes(range(32))
N = 10**6


def _fixed(nonce: int = 0) -> SecureRandom:
    return SecureRandom(key=TEST_KEY, nonce=nonce.to_bytes(16, "big"))


def test_keystream_is_aes256_ctr() -> None:
    """NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt), first block: keystream = plaintext xor ciphertext."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    cipher = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    assert SecureRandom(key=key, nonce=counter).random_bytes(16) == bytes(a ^ b for a, b in zip(plain, cipher,
                                                                                             strict=True))


def test_stream_continues_across_requests_and_chunks() -> None:
    one = _fixed().random_bytes(3 * (1 << 22) + 5)  # crosses the 4 MiB chunk boundary twice
    r = _fixed()
    parts = r.random_bytes(1000) + r.random_bytes(1 << 22) + r.random_bytes(len(one) - 1000 - (1 << 22))
    assert parts == one


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_uniform_in_unit_interval(dtype: torch.dtype) -> None:
    u = _fixed().uniform(N, dtype=dtype)
    assert u.dtype == dtype and u.shape == (N,)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    u64 = u.double()
    # values are multiples of 2**-p (p: the dtype's precision), which lowers the mean by 2**-(p+1) < eps
    assert abs(float(u64.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / N) + torch.finfo(dtype).eps
    assert abs(float(u64.var()) - 1 / 12) < 0.002


def test_uniform_uses_full_precision() -> None:
    u = _fixed().uniform(N)
    frac = (u * 2.0**53) - torch.floor(u * 2.0**53)
    assert torch.all(frac == 0)  # exact multiples of 2**-53
    assert bool(((u * 2.0**52) % 1 != 0).any())  # and the 53rd bit is used
    u32 = _fixed().uniform(N, dtype=torch.float32).double()
    assert torch.all((u32 * 2.0**24) % 1 == 0)


def test_gaussian_moments_and_ks() -> None:
    z = _fixed().normal(N, dtype=torch.float64)
    assert torch.isfinite(z).all()
    m, s = float(z.mean()), float(z.std())
    assert abs(m) < 5 / math.sqrt(N)
    assert abs(s - 1.0) < 5 * math.sqrt(0.5 / N)
    c = (z - m) / s
    assert abs(float((c**3).mean())) < 5 * math.sqrt(6 / N)  # skewness
    assert abs(float((c**4).mean()) - 3.0) < 5 * math.sqrt(24 / N)  # kurtosis
    stats = pytest.importorskip("scipy.stats")
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


def test_gaussian_std_dtype_shape_device() -> None:
    r = _fixed()
    z = r.normal((250, 400), std=3.0, dtype=torch.float32, device="cpu")
    assert z.shape == (250, 400) and z.dtype == torch.float32 and z.device.type == "cpu"
    assert abs(float(z.double().std()) - 3.0) < 0.03
    assert r.normal(7, dtype=torch.float64).shape == (7,)  # odd count: half a Box-Muller pair
    assert r.normal((0, 3)).shape == (0, 3)
    assert r.uniform(torch.Size([2, 3]), dtype=torch.float32).shape == (2, 3)
    with pytest.raises(TypeError):
        r.normal(3, dtype=torch.int64)
    with pytest.raises(ValueError):
        r.normal(3, std=-1.0)
    if torch.cuda.is_available():
        assert r.normal(5, device="cuda").device.type == "cuda"


def test_instances_give_different_streams() -> None:
    a, b = SecureRandom(), SecureRandom()
    xa, xb = a.random_bytes(64), b.random_bytes(64)
    assert xa != xb and a.random_bytes(64) != xa
    assert not torch.equal(SecureRandom().normal(100), SecureRandom().normal(100))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_replay_parent_stream() -> None:
    r = SecureRandom()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, r.random_bytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != r.random_bytes(32)


def _zero_grad_optimizer_std(kind: str, noise_source, sigma: float, clip: float, batch: float,
                             steps: int = 20) -> float:
    """std of p.grad over all coordinates and steps when every gradient is zero: sigma * C / B."""
    torch.manual_seed(0)
    model = nn.Linear(100, 50)
    kwargs = {"noise_multiplier": sigma, "max_grad_norm": clip, "expected_batch_size": batch,
              "loss_reduction": "mean"}
    values = []
    if kind == "fgc":
        opt = dp_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), fast_gradient_clipping=True,
                           noise_source=noise_source, **kwargs)
        for _ in range(steps):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.pre_step()
            values += [p.grad.reshape(-1).clone() for p in model.parameters()]
            opt.zero_grad(set_to_none=True)
    else:
        module = GradSampleModule(model, loss_reduction="mean")
        opt = dp_optimizer(torch.optim.SGD(module.parameters(), lr=0.0), fast_gradient_clipping=False,
                           noise_source=noise_source, **kwargs)
        for _ in range(steps):
            (module(torch.randn(8, 100)) * 0.0).sum().backward()
            opt.pre_step()
            values += [p.grad.reshape(-1).clone() for p in module.parameters()]
            opt.zero_grad(set_to_none=True)
        module._close()
    return float(torch.cat(values).double().std())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("kind", ["fgc", "per-sample"])
def test_optimizer_noise_std_matches_opacus(kind: str) -> None:
    sigma, clip, batch = 1.3, 0.7, 32.0
    expected = sigma * clip / batch
    ours = _zero_grad_optimizer_std(kind, _fixed(), sigma, clip, batch)
    theirs = _zero_grad_optimizer_std(kind, torch.Generator().manual_seed(1), sigma, clip, batch)
    assert ours == pytest.approx(expected, rel=0.02)  # 100k draws: sd of the estimate ~0.2 %
    assert ours == pytest.approx(theirs, rel=0.03)


def test_optimizer_math_is_opacus_with_our_noise() -> None:
    """p.grad = (summed_grad + N(0, (sigma C)^2)) / B exactly, the noise being the source's next draws."""
    torch.manual_seed(1)
    model = nn.Linear(6, 3)
    sigma, clip, batch = 0.9, 2.0, 5.0
    opt = dp_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), fast_gradient_clipping=True,
                       noise_source=_fixed(), noise_multiplier=sigma, max_grad_norm=clip,
                       expected_batch_size=batch, loss_reduction="mean")
    assert isinstance(opt, SecureNoiseDPOptimizerFastGradientClipping)
    summed = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), summed, strict=True):
        p.grad = g.clone()
    opt.pre_step()
    params = list(model.parameters())
    flat = _fixed().normal(sum(p.numel() for p in params), std=sigma * clip, dtype=torch.float32)
    noises = torch.split(flat, [p.numel() for p in params])
    for p, g, noise in zip(params, summed, noises, strict=True):
        assert torch.equal(p.grad, (g + noise.view_as(p)) / batch)


def test_zero_sigma_adds_no_noise() -> None:
    model = nn.Linear(4, 2)
    src = _fixed()
    opt = dp_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), fast_gradient_clipping=True, noise_source=src,
                       noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=2.0, loss_reduction="mean")
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.pre_step()
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert src.random_bytes(16) == _fixed().random_bytes(16)  # nothing was drawn


def test_dp_optimizer_picks_class_and_refuses_mixed_sources() -> None:
    params = list(nn.Linear(2, 2).parameters())
    kw = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4.0}
    assert isinstance(dp_optimizer(torch.optim.SGD(params, lr=0.1), fast_gradient_clipping=False,
                                   noise_source=_fixed(), **kw), SecureNoiseDPOptimizer)
    plain = dp_optimizer(torch.optim.SGD(params, lr=0.1), fast_gradient_clipping=False,
                         noise_source=torch.Generator(), **kw)
    assert type(plain) is DPOptimizer
    plain_fgc = dp_optimizer(torch.optim.SGD(params, lr=0.1), fast_gradient_clipping=True,
                             noise_source=torch.Generator(), **kw)
    assert type(plain_fgc) is DPOptimizerFastGradientClipping
    with pytest.raises(ValueError):
        SecureNoiseDPOptimizer(torch.optim.SGD(params, lr=0.1), noise_source=_fixed(), secure_mode=True, **kw)
    with pytest.raises(TypeError):
        SecureNoiseDPOptimizer(torch.optim.SGD(params, lr=0.1), noise_source=torch.Generator(), **kw)


@pytest.mark.parametrize("source", ["secure", "torch"])
def test_poisson_inclusion_rate(source: str) -> None:
    n, q, reps = 100_000, 0.1, 5
    gen = _fixed() if source == "secure" else torch.Generator().manual_seed(3)
    counts = [int(poisson_batch(n, q, gen).numel()) for _ in range(reps)]
    sd = math.sqrt(n * q * (1 - q) * reps)
    assert abs(sum(counts) - n * q * reps) < 5 * sd
    idx = poisson_batch(n, q, gen)
    assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())
    assert torch.equal(poisson_batch(7, 1.0, gen), torch.arange(7))


def _settings(grad_sample_mode: str) -> TrainSettings:
    return TrainSettings(local_epochs=1, batch_size=16, learning_rate=0.1, momentum=0.0, optimizer="sgd", dp=True,
                         noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=grad_sample_mode)


def _train(randomness: DpRandomness, mode: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    train_locally(model, x, y, _settings(mode), sampling_generator=randomness.sampling,
                  noise_generator=randomness.noise, device=torch.device("cpu"))
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_dp_generators_modes() -> None:
    kw = {"seed": 5, "partition_id": 2, "server_round": 3, "device": torch.device("cpu")}
    det = dp_generators(deterministic=True, **kw)
    assert isinstance(det.sampling, torch.Generator) and not det.secure
    sampling, noise = dp_generators(deterministic=False, **kw)  # still unpacks as a pair
    assert isinstance(sampling, SecureRandom) and isinstance(noise, SecureRandom) and sampling is not noise
    assert dp_generators(deterministic=False, **kw).secure


@pytest.mark.parametrize("mode", ["bk", "hooks", "ghost"])
def test_deterministic_mode_reproducible_secure_mode_not(mode: str) -> None:
    kw = {"seed": 5, "partition_id": 2, "server_round": 3, "device": torch.device("cpu")}
    a = _train(dp_generators(deterministic=True, **kw), mode)
    b = _train(dp_generators(deterministic=True, **kw), mode)
    assert torch.equal(a, b)
    c = _train(dp_generators(deterministic=False, **kw), mode)
    d = _train(dp_generators(deterministic=False, **kw), mode)
    assert torch.isfinite(c).all() and not torch.equal(c, d) and not torch.equal(a, c)
