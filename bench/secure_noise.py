"""bench/secure_noise: what the AES-CTR CSPRNG (privacy/secure_random.py) costs against torch's generator.

One local training round of the default recipe (pyproject's run config: Fashion-MNIST, 10 IID clients,
client 0's 6,000 records, cnn, batch 256, 1 local epoch, SGD, grad-sample-mode auto -> bk, sigma and C
from the config) is run through ``client.training.train_locally`` with the two kinds of DP randomness
``client.randomness.dp_generators`` hands out: seeded ``torch.Generator``s (deterministic=True, the old
Mersenne Twister path) and ``SecureRandom`` (deterministic=False, the default). The rounds alternate
(torch, secure, secure, torch, ...) from the same initial weights, one thread, so load from other
processes hits both alike; the figure that matters is the median of the per-pair ratios. The raw
generators are timed as well: Gaussian float32 draws per second at the model's size (one step's noise)
and at 2**20, and the uniform draws of one Poisson batch. The CSPRNG is the default when a round costs
at most ``THRESHOLD`` more.

    python bench/secure_noise.py [--reps 7] [--threads 1] [--run-config "model=mlp ..."]
                                 [--json bench/results/secure_noise.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cryptography
import opacus
import torch

ROOT = Path(__file__).resolve().parents[1]

from dpfl.client.randomness import DpRandomness, dp_generators  # noqa: E402
from dpfl.client.training import TrainSettings, train_locally  # noqa: E402
from dpfl.models import build_model  # noqa: E402
from dpfl.privacy.secure_random import SecureRandom  # noqa: E402

THRESHOLD = 0.05  # the CSPRNG is the default if it costs <= 5 % of a round
KINDS = ("torch", "secure")


def _settings(cfg: dict) -> TrainSettings:
    return TrainSettings(local_epochs=cfg["local-epochs"], batch_size=cfg["batch-size"],
                         learning_rate=cfg["learning-rate"], momentum=cfg["momentum"], optimizer=cfg["optimizer"],
                         dp=True, noise_multiplier=cfg["noise-multiplier"], max_grad_norm=cfg["max-grad-norm"],
                         grad_sample_mode=cfg["grad-sample-mode"])


def _randomness(kind: str, rep: int) -> DpRandomness:
    return dp_generators(deterministic=kind == "torch", seed=rep, partition_id=0, server_round=1,
                         device=torch.device("cpu"))


def _per_second(fn: Callable[[], object], count: int, min_seconds: float = 0.3) -> float:
    """Draws per second: repeat ``fn`` (``count`` draws each) for at least ``min_seconds``, best of 3."""
    fn()
    best = float("inf")
    for _ in range(3):
        calls, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_seconds / 3:
            fn()
            calls += 1
        best = min(best, elapsed / calls)
    return count / best


def raw_generators(model_params: int, n_records: int) -> dict[str, dict[str, float]]:
    gen, sec = torch.Generator().manual_seed(0), SecureRandom()
    sizes = {"model": model_params, "2^20": 1 << 20}
    out: dict[str, dict[str, float]] = {}
    for label, n in sizes.items():
        out[f"normal float32, {label} ({n})"] = {
            "torch": _per_second(lambda n=n: torch.normal(0.0, 1.0, size=(n,), generator=gen), n),
            "secure": _per_second(lambda n=n: sec.normal(n, std=1.0, dtype=torch.float32), n)}
    out[f"uniform (Poisson batch, {n_records})"] = {
        "torch": _per_second(lambda: torch.rand(n_records, generator=gen), n_records),
        "secure": _per_second(lambda: sec.uniform(n_records), n_records)}
    return out


def main() -> int:
    from dpfl.simulations.config import parse_run_config_string, resolve
    from dpfl.simulations.data.clients import load_client_data, load_test_set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per kind (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--run-config", default="", help='"key=value ..." overrides of the default recipe')
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "secure_noise.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    cfg = resolve(parse_run_config_string(args.run_config)).as_dict()
    data = load_client_data(cfg, args.partition)
    _, _, shape, classes = load_test_set(cfg)
    torch.manual_seed(int(cfg["seed"]))
    initial = build_model(cfg["model"], shape, classes)
    settings = _settings(cfg)
    n_params = sum(p.numel() for p in initial.parameters())
    n = int(data.train_y.shape[0])
    recipe = {k: cfg[k] for k in ("dataset", "num-clients", "partition", "model", "batch-size", "local-epochs",
                                  "optimizer", "learning-rate", "momentum", "noise-multiplier", "max-grad-norm",
                                  "grad-sample-mode")}
    print(f"recipe: {recipe}; client {args.partition}: {n} records, {n_params} parameters, "
          f"{args.threads} thread(s)", flush=True)

    def one_round(kind: str, rep: int) -> tuple[float, int]:
        model = copy.deepcopy(initial)
        r = _randomness(kind, rep)
        t0 = time.perf_counter()
        out = train_locally(model, data.train_x, data.train_y, settings, sampling_generator=r.sampling,
                            noise_generator=r.noise, device=torch.device("cpu"))
        return time.perf_counter() - t0, out.steps

    for kind in KINDS:  # warm-up: allocator, caches, Opacus' first-call work
        one_round(kind, -1)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    ratios: list[float] = []
    steps = 0
    for rep in range(args.reps):
        order = KINDS if rep % 2 == 0 else KINDS[::-1]
        this: dict[str, float] = {}
        for kind in order:
            this[kind], steps = one_round(kind, rep)
            times[kind].append(this[kind])
        ratios.append(this["secure"] / this["torch"])
        print(f"  rep {rep + 1}/{args.reps}: torch {this['torch']:.3f} s, secure {this['secure']:.3f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(ratios)
    overhead = ratio - 1.0
    print(f"\none local round ({steps} steps), median of {args.reps}: torch generator {med['torch']:.3f} s, "
          f"CSPRNG {med['secure']:.3f} s")
    print(f"median paired ratio secure / torch = {ratio:.4f} -> overhead {100 * overhead:+.2f} % "
          f"(ratio of medians {med['secure'] / med['torch']:.4f}; pairs min {min(ratios):.3f} max {max(ratios):.3f})")

    raw = raw_generators(n_params, n)
    print("\nraw generators, draws per second (1 thread unless --threads):")
    for label, v in raw.items():
        print(f"  {label:34s} torch {v['torch'] / 1e6:8.1f} M/s   CSPRNG {v['secure'] / 1e6:8.1f} M/s   "
              f"({v['torch'] / v['secure']:.1f}x slower)")
    per_step_noise = n_params / raw[f"normal float32, model ({n_params})"]["secure"]
    per_step_sampling = n / raw[f"uniform (Poisson batch, {n})"]["secure"]
    print(f"CSPRNG work per step: noise {1e3 * per_step_noise:.3f} ms + sampling {1e3 * per_step_sampling:.3f} ms; "
          f"a step takes {1e3 * med['secure'] / steps:.1f} ms")
    default = overhead <= THRESHOLD
    print(f"\nverdict: overhead {100 * overhead:+.2f} % {'<=' if default else '>'} {100 * THRESHOLD:.0f} % -> "
          f"{'the CSPRNG is the default' if default else 'too slow to be the default'}")

    result = {
        "command": "python " + " ".join(sys.argv),
        "meta": {"torch": torch.__version__, "opacus": opacus.__version__, "cryptography": cryptography.__version__,
                 "python": platform.python_version(), "platform": platform.platform(),
                 "threads": torch.get_num_threads(), "reps": args.reps,
                 "timing": "rounds alternate torch/secure, order flipped every rep; overhead = median paired "
                           "ratio - 1"},
        "recipe": recipe, "records": n, "parameters": n_params, "steps": steps,
        "round_seconds": times, "median_round_seconds": med, "paired_ratios": ratios,
        "median_ratio": ratio, "overhead": overhead, "threshold": THRESHOLD, "csprng_default": default,
        "raw_draws_per_second": raw,
        "csprng_ms_per_step": {"noise": 1e3 * per_step_noise, "sampling": 1e3 * per_step_sampling}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
