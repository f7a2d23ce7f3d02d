"""bench/dp_step: cost of one DP-SGD step per grad-sample mode, and proof that every mode clips exactly.

For every zoo model on its natural input (cnn, mlp, logreg 1x28x28; resnet 3x32x32) and batch 64 / 256,
one optimizer step (zero_grad, forward, backward, per-sample clip, noise, update) is timed, single thread,
for: non-private SGD, dpfl's book-keeping pass ("bk", client/bookkeeping.py), Opacus hooks, functorch,
ghost clipping and ExpandedWeights ("ew"). The modes are
timed round-robin (one step of each in turn, order rotated every repetition) so that load from other
processes on this shared machine hits them alike; the figures that matter are the ratios to the
non-private step measured in the same run.

Exactness (sigma = 0, float64): each mode's clipped-and-averaged gradient (``p.grad`` after
``optimizer.pre_step()``) is compared with a per-sample loop: each example's gradient clipped to C, summed,
divided by the *expected* batch size (set != actual batch size on purpose). The reference uses Opacus'
clip factor min(1, C / (||g|| + 1e-6)); the error against the textbook min(1, C / ||g||) is reported too.

    python bench/dp_step.py [--models cnn,mlp,logreg,resnet] [--batches 64,256] [--reps 15]
                            [--json bench/results/dp_step.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import opacus
import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

from dpfl.client.bookkeeping import BookKeepingClipper  # noqa: E402
from dpfl.models import build_model  # noqa: E402

INPUTS: dict[str, tuple[int, ...]] = {"cnn": (1, 28, 28), "mlp": (1, 28, 28), "logreg": (1, 28, 28),
                                      "resnet": (3, 32, 32)}
NUM_CLASSES = 10
DP_MODES = ("bk", "hooks", "functorch", "ghost", "ew")
MODES = ("nonprivate", *DP_MODES)
OPACUS_NORM_EPS = 1e-6  # Opacus' clip factor is C / (||g|| + 1e-6), in DPOptimizer and in ghost clipping
EXACT_TOL = 1e-6
WARMUP = 3


@dataclass
class Stepper:
    """One way of taking a training step: the (wrapped) module, its optimizer and the loss to call."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    clipper: BookKeepingClipper | None = None  # mode "bk": clipped_backward replaces loss.backward()

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.clipper is not None:
            self.clipper.clipped_backward(self.module(x), y)
        else:
            self.loss_fn(self.module(x), y).backward()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.backward(x, y)
        self.optimizer.step()


def make_stepper(mode: str, model: nn.Module, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch: float, lr: float = 0.1, momentum: float = 0.9) -> Stepper:
    """The Opacus objects exactly as client/training.py builds them (plus "ew", which it does not offer)."""
    criterion = nn.CrossEntropyLoss(reduction="mean")
    gen = torch.Generator().manual_seed(0)

    def dp_opt(cls: type[DPOptimizer], params: object) -> DPOptimizer:
        return cls(torch.optim.SGD(params, lr=lr, momentum=momentum), noise_multiplier=noise_multiplier,
                   max_grad_norm=max_grad_norm, expected_batch_size=expected_batch, loss_reduction="mean",
                   generator=gen)

    if mode == "nonprivate":
        return Stepper(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum), criterion)
    if mode == "bk":
        return Stepper(model, dp_opt(DPOptimizerFastGradientClipping, model.parameters()), criterion,
                       clipper=BookKeepingClipper(model, max_grad_norm))
    if mode == "ghost":
        module = GradSampleModuleFastGradientClipping(model, loss_reduction="mean",
                                                      max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        optimizer = dp_opt(DPOptimizerFastGradientClipping, module.parameters())
        return Stepper(module, optimizer,
                       DPLossFastGradientClipping(module, optimizer, criterion, loss_reduction="mean"))
    if mode == "ew":
        module = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
    elif mode in ("hooks", "functorch"):
        module = GradSampleModule(model, loss_reduction="mean", force_functorch=mode == "functorch")
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return Stepper(module, dp_opt(DPOptimizer, module.parameters()), criterion)


# --- timing ------------------------------------------------------------------------------------------------
def time_modes(model_name: str, batch: int, reps: int, modes: tuple[str, ...]) -> dict[str, float]:
    """Median seconds per step of each mode, timed round-robin on identical copies of one model."""
    torch.manual_seed(0)
    shape = INPUTS[model_name]
    base = build_model(model_name, shape, NUM_CLASSES)
    x, y = torch.randn(batch, *shape), torch.randint(0, NUM_CLASSES, (batch,))
    steppers = {m: make_stepper(m, copy.deepcopy(base), noise_multiplier=1.0, max_grad_norm=1.0,
                                expected_batch=batch) for m in modes}
    for st in steppers.values():
        for _ in range(WARMUP):
            st.step(x, y)
    times: dict[str, list[float]] = {m: [] for m in modes}
    order = list(modes)
    for r in range(reps):
        for m in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            steppers[m].step(x, y)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


# --- exactness ---------------------------------------------------------------------------------------------
def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def reference_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                       expected_batch: float, norm_eps: float) -> torch.Tensor:
    """Per-sample loop: each example's gradient clipped to C (factor min(1, C / (||g|| + eps))), summed,
    divided by the expected batch size."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), dtype=x.dtype)
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        g = _flat(list(torch.autograd.grad(loss, params)))
        total += g * min(1.0, max_grad_norm / (float(g.norm()) + norm_eps))
    return total / expected_batch


def per_sample_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        out.append(float(_flat(list(torch.autograd.grad(loss, params))).norm()))
    return out


def mode_gradient(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                  expected_batch: float) -> torch.Tensor:
    """The gradient a mode would apply (sigma = 0): p.grad after clipping, noise and scaling, before the
    update."""
    st = make_stepper(mode, model, noise_multiplier=0.0, max_grad_norm=max_grad_norm,
                      expected_batch=expected_batch)
    st.backward(x, y)
    assert isinstance(st.optimizer, DPOptimizer)
    st.optimizer.pre_step()
    grads = [p.grad for p in st.module.parameters() if p.requires_grad]
    out = _flat([g.detach().clone() for g in grads])
    if st.clipper is not None:
        st.clipper.close()
    elif hasattr(st.module, "_close"):
        st.module._close()
    return out


def exactness(model_names: list[str], batch: int = 32, dtype: torch.dtype = torch.float64) -> dict:
    """Relative L2 error of every DP mode (run in ``dtype``) against the per-sample loop (always run in
    float64: in float32 the batch-of-one loop is itself the less accurate side, ~5e-4 on resnet here),
    per model, sigma = 0."""
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in DP_MODES}
    for name in model_names:
        torch.manual_seed(1)
        shape = INPUTS[name]
        base = build_model(name, shape, NUM_CLASSES).to(torch.float64)
        x, y = torch.randn(batch, *shape, dtype=torch.float64), torch.randint(0, NUM_CLASSES, (batch,))
        # C = median per-sample norm: half the examples are clipped, half pass unchanged
        max_grad_norm = statistics.median(per_sample_norms(base, x, y))
        expected = batch * 1.1  # Poisson: the divisor is q * n, not the realised batch size
        ref = reference_gradient(base, x, y, max_grad_norm, expected, OPACUS_NORM_EPS)
        textbook = reference_gradient(base, x, y, max_grad_norm, expected, 0.0)
        for mode in DP_MODES:
            try:
                got = mode_gradient(mode, copy.deepcopy(base).to(dtype), x.to(dtype), y, max_grad_norm,
                                    expected).to(torch.float64)
                results[mode][name] = {
                    "rel_err": float((got - ref).norm() / ref.norm()),
                    "rel_err_textbook": float((got - textbook).norm() / textbook.norm()),
                    "max_grad_norm": max_grad_norm}
            except Exception as exc:  # a mode that cannot run a model is reported, not fatal
                results[mode][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return results


# --- report ------------------------------------------------------------------------------------------------
def _fastest(rows: list[dict], exact_modes: set[str]) -> dict[str, dict]:
    """Per model, the exact DP mode with the smallest geometric-mean ratio over the batch sizes."""
    out: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        geo = {m: math.exp(statistics.fmean(math.log(r["ratio"][m]) for r in mine))
               for m in DP_MODES if m in exact_modes and all(m in r["ratio"] for r in mine)}
        best = min(geo, key=geo.__getitem__)
        supported = {m: v for m, v in geo.items() if m != "ew"}  # client/training.py offers no "ew"
        out[model] = {"fastest": best, "fastest_supported": min(supported, key=supported.__getitem__),
                      "geomean_ratio": geo}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(INPUTS))
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--reps", type=int, default=15,
                        help="timed steps per mode (>= 15 for reported figures)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "dp_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    models = args.models.split(",")
    modes = tuple(m for m in args.modes.split(",") if m)
    if "nonprivate" not in modes:
        modes = ("nonprivate", *modes)

    print("exactness (sigma = 0, float64, batch 32, divisor 35.2, C = median per-sample norm) ...",
          flush=True)
    exact = exactness(models)
    exact32 = exactness(models, dtype=torch.float32)  # informative: the dtype training runs in
    exact_summary: dict[str, dict] = {}
    for mode, per_model in exact.items():
        errs = [v["rel_err"] for v in per_model.values() if "rel_err" in v]
        failed = {k: v["error"] for k, v in per_model.items() if "error" in v}
        max_err = max(errs) if errs else float("nan")
        max_tb = max((v["rel_err_textbook"] for v in per_model.values() if "rel_err" in v),
                     default=float("nan"))
        max32 = max((v.get("rel_err", float("nan")) for v in exact32[mode].values()), default=float("nan"))
        exact_summary[mode] = {"max_rel_err": max_err, "max_rel_err_textbook": max_tb, "failed": failed,
                               "max_rel_err_float32": max32, "exact": not failed and max_err <= EXACT_TOL}
        print(f"  {mode:9s} max rel err {max_err:.2e} (textbook clip {max_tb:.2e}; float32 {max32:.2e})"
              f"{'  FAILED on ' + ', '.join(failed) if failed else ''}  "
              f"{'OK' if exact_summary[mode]['exact'] else 'NOT EXACT'}", flush=True)

    rows: list[dict] = []
    header = f"{'model':7s} {'batch':>5s} {'non-priv ms':>11s} " + " ".join(f"{m:>16s}" for m in modes[1:])
    print("\nstep time, median of", args.reps, "round-robin steps, 1 thread (ms, and ratio to non-private)")
    print(header)
    for name in models:
        for batch in (int(b) for b in args.batches.split(",")):
            med = time_modes(name, batch, args.reps, modes)
            ratio = {m: med[m] / med["nonprivate"] for m in modes if m != "nonprivate"}
            rows.append({"model": name, "batch": batch, "ms": {m: 1e3 * v for m, v in med.items()},
                         "ratio": ratio})
            cells = " ".join(f"{1e3 * med[m]:8.1f} ({ratio[m]:5.2f}x)" for m in modes[1:])
            print(f"{name:7s} {batch:5d} {1e3 * med['nonprivate']:11.1f} {cells}", flush=True)

    exact_modes = {m for m, s in exact_summary.items() if s["exact"]}
    fastest = _fastest(rows, exact_modes)
    print("\nfastest exact mode (geometric mean of the ratios over batch sizes):")
    for model, f in fastest.items():
        geo = ", ".join(f"{m} {v:.2f}x" for m, v in sorted(f["geomean_ratio"].items(), key=lambda kv: kv[1]))
        print(f"  {model:7s} {f['fastest']:9s} (supported by client.training: {f['fastest_supported']}); "
              f"{geo}")

    result = {
        "command": "python " + " ".join(sys.argv),
        "meta": {"torch": torch.__version__, "opacus": opacus.__version__,
                 "python": platform.python_version(), "threads": torch.get_num_threads(), "reps": args.reps,
                 "warmup": WARMUP,
                 "timing": "median of round-robin steps; ratio = mode / non-private in the same run"},
        "exactness": {"tolerance": EXACT_TOL, "summary": exact_summary, "per_model": exact,
                      "per_model_float32": exact32},
        "timing": rows, "fastest": fastest}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
