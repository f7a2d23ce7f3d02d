"""Checks a model before DP-SGD trains it: Opacus-compatible layers, the data's shapes, no mixing across a batch.

DP-SGD bounds one example's influence by clipping *its own* gradient. That holds only when each example's
output depends on that example alone; BatchNorm in train mode (and any batch statistic in ``forward``)
breaks it, and Opacus cannot compute per-sample gradients of some layers (``nn.LSTM``, ``nn.GRU``,
``nn.MultiheadAttention``). ``check_model_for_dp`` finds these before any record is touched:

1. Opacus' ``ModuleValidator`` rules, per named layer, each with the fix Opacus offers
   (``ModuleValidator.fix``: BatchNorm -> GroupNorm, LSTM -> DPLSTM, ...), applied when ``fix=True``;
   BatchNorm layers without trainable parameters (frozen, or ``affine=False``) are flagged too:
   Opacus' validator and fixer skip them, yet in train mode they still mix examples;
   (the fix runs on a deep copy; Opacus' own ``fix`` clones through pickle, which local classes defeat)
2. a forward pass on a zero batch of ``input_shape``: the model accepts the data's inputs and returns
   ``(batch, num_classes)`` finite logits;
3. a functional test on a batch of 2 random inputs in train mode: example 0's output must not change
   when example 1 changes (dropout gets the same random stream in both passes).

It runs on copies, so the caller's model (its buffers, its train/eval mode) is left as it was. Problems
raise one ``ModelDPError`` line; ``fix=True`` returns the fixed model and says what changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from opacus.validators import ModuleValidator
from torch import nn

FIX_FLAG = "--fix-model"  # the command-line flag that asks for ModuleValidator.fix (named in messages)
CHECK_BATCH = 2
MIX_RTOL, MIX_ATOL = 1e-4, 1e-5  # mixing changes outputs by O(1); float noise of one row is far below this


class ModelDPError(ValueError):
    """A model DP-SGD cannot train correctly; the message (one line) lists each problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class LayerProblem:
    """One layer Opacus' rules refuse (or that mixes examples and the rules skip)."""

    layer: str  # dotted name in the model ("" for the root)
    kind: str  # class name, e.g. "BatchNorm2d"
    problem: str  # what is wrong, in words
    fix: str  # what to do
    fixable: bool  # ModuleValidator.fix replaces it

    def message(self) -> str:
        return f"{self.kind} at layer {self.layer or '<root>'!r} {self.problem}: {self.fix}"


@dataclass
class DPCheckResult:
    """What the check found: the model to train (the fixed copy when ``fix=True`` changed anything)."""

    model: nn.Module
    changes: list[str] = field(default_factory=list)  # one line per layer ModuleValidator.fix replaced
    output_shape: tuple[int, ...] = ()

    @property
    def fixed(self) -> bool:
        return bool(self.changes)


def _describe(kind: type[nn.Module], fix_flag: str) -> tuple[str, str]:
    """(problem, fix) in words for a layer type Opacus' validator refuses."""
    name = kind.__name__
    if issubclass(kind, nn.modules.batchnorm._BatchNorm):
        return ("mixes examples across a batch",
                f"use GroupNorm (ModuleValidator.fix), or pass {fix_flag}")
    if issubclass(kind, nn.modules.instancenorm._InstanceNorm):
        return ("keeps running statistics over the batch (track_running_stats=True)",
                f"set track_running_stats=False (ModuleValidator.fix), or pass {fix_flag}")
    replacement = {"LSTM": "opacus.layers.DPLSTM", "GRU": "opacus.layers.DPGRU",
                   "MultiheadAttention": "opacus.layers.DPMultiheadAttention"}.get(name)
    if replacement is not None:
        return ("has no per-sample gradients in Opacus",
                f"use {replacement}, a drop-in replacement (ModuleValidator.fix), or pass {fix_flag}")
    if kind in ModuleValidator.FIXERS:
        return "is refused by Opacus' validator", f"replace it (ModuleValidator.fix), or pass {fix_flag}"
    return "is refused by Opacus' validator", "replace it with a layer Opacus supports"


def validator_problems(model: nn.Module, *, fix_flag: str = FIX_FLAG) -> list[LayerProblem]:
    """Every layer Opacus' ``ModuleValidator`` refuses, by name, plus BatchNorm layers it skips because
    they have no trainable parameter (frozen or ``affine=False``), which still mix examples in train mode."""
    problems: list[LayerProblem] = []
    for name, module in model.named_modules():
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if trainable and validator is not None:
            errors = validator(module)
            if errors:
                problem, fix = _describe(type(module), fix_flag)
                problems.append(LayerProblem(name, type(module).__name__, problem, fix,
                                             type(module) in ModuleValidator.FIXERS))
        elif not trainable and isinstance(module, nn.modules.batchnorm._BatchNorm):
            problems.append(LayerProblem(
                name, type(module).__name__, "mixes examples across a batch (it has no trainable parameters, so "
                "Opacus' validator and ModuleValidator.fix skip it)",
                "replace it with GroupNorm in the model's code", False))
    return problems


def _fixed_copy(model: nn.Module) -> nn.Module:
    """``ModuleValidator.fix`` on a ``copy.deepcopy`` (Opacus clones through pickle, which fails for classes
    defined inside functions): each trainable layer with a registered fixer is replaced by its fix."""
    fixed = copy.deepcopy(model)
    names = [name for name, m in fixed.named_modules()
             if type(m) in ModuleValidator.FIXERS and any(p.requires_grad for p in m.parameters(recurse=False))]
    for name in names:
        old = fixed.get_submodule(name)
        new = ModuleValidator.FIXERS[type(old)](old)
        first = next(iter(old.parameters()), None)
        if first is not None:
            new.to(first.device)
        if not name:
            return new
        parent_name, _, attr = name.rpartition(".")
        setattr(fixed.get_submodule(parent_name) if parent_name else fixed, attr, new)
    return fixed


def _apply_fix(model: nn.Module, problems: list[LayerProblem]) -> tuple[nn.Module, list[str]]:
    fixed = _fixed_copy(model)
    changes = []
    for p in problems:
        if not p.fixable:
            continue
        try:
            new = fixed.get_submodule(p.layer) if p.layer else fixed
        except AttributeError:
            continue
        where = f"layer {p.layer or '<root>'!r}"
        if type(new).__name__ == p.kind:  # InstanceNorm: same layer, running statistics switched off
            changes.append(f"{where}: {p.kind} now has track_running_stats=False")
        elif isinstance(new, nn.GroupNorm):
            changes.append(f"{where}: {p.kind} -> GroupNorm({new.num_groups}, {new.num_channels}) "
                           f"(fresh affine weights; the BatchNorm's weights and running statistics are dropped)")
        else:
            changes.append(f"{where}: {p.kind} -> {type(new).__name__} (same weights)")
    return fixed, changes


def fix_for_dp(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model with every layer ``ModuleValidator.fix`` can replace replaced (a copy when anything changed),
    and one line per change: what ``fix-model = true`` does on the server and on every client alike, so both
    sides build the same architecture."""
    problems = validator_problems(model)
    if not any(p.fixable for p in problems):
        return model, []
    return _apply_fix(model, problems)


def _dtype_device(model: nn.Module, input_dtype: torch.dtype | None) -> tuple[torch.dtype, torch.device]:
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    if input_dtype is not None:
        return input_dtype, device
    return (first.dtype if first is not None and first.is_floating_point() else torch.float32), device


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None,
            ) -> torch.Tensor:
    if generator is None:
        return torch.zeros(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    return torch.randint(0, 2, shape, generator=generator, dtype=dtype).to(device)  # any vocabulary has 0 and 1


def _forward(model: nn.Module, x: torch.Tensor, seed: int) -> object:
    devices = [x.device.index or 0] if x.device.type == "cuda" else []  # leave the global RNG states as they were
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)  # dropout draws the same masks in every pass
        return model(x)


def _shape_problems(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, dtype: torch.dtype,
                    device: torch.device, seed: int) -> tuple[list[str], tuple[int, ...]]:
    shape = (CHECK_BATCH, *input_shape)
    try:
        out = _forward(model, _inputs(shape, dtype, device, None), seed)
    except Exception as exc:  # noqa: BLE001 - the model is user code
        text = " ".join(str(exc).split())
        return [f"the model does not accept the data's inputs (a batch of shape {shape}, {dtype}): "
                f"{type(exc).__name__}: {text}; make the model take per-example inputs of shape "
                f"{tuple(input_shape)} (the dataset's input shape)"], ()
    if not isinstance(out, torch.Tensor):
        return [f"the model's forward returns a {type(out).__name__}, not a tensor of logits; return the "
                f"(batch, {num_classes}) logits tensor"], ()
    got = tuple(out.shape)
    if got != (CHECK_BATCH, num_classes):
        return [f"the model's output has shape {got} for a batch of {CHECK_BATCH}; expected "
                f"({CHECK_BATCH}, {num_classes}): one logit per class (no softmax needed), the batch first"], got
    if not out.is_floating_point():
        return [f"the model's output is {out.dtype}; expected floating-point logits"], got
    if not bool(torch.isfinite(out).all()):
        return ["the model's output is not finite (nan or inf) for an all-zero batch; check its "
                "normalisation (divide by std + eps) and initialisation"], got
    return [], got


def mixes_examples(model: nn.Module, input_shape: tuple[int, ...], *, input_dtype: torch.dtype | None = None,
                   seed: int = 0) -> bool:
    """True when, in train mode, example 0's output changes when only example 1 of a batch of 2 changes.

    Runs on a deep copy (running statistics and train/eval mode of ``model`` are untouched)."""
    probe = copy.deepcopy(model).train()
    dtype, device = _dtype_device(probe, input_dtype)
    g = torch.Generator().manual_seed(seed)
    x = _inputs((CHECK_BATCH, *input_shape), dtype, device, g)
    other = _inputs((1, *input_shape), dtype, device, g)
    if not dtype.is_floating_point:
        other = 1 - x[1:]  # integer inputs: flip the 0/1 tokens of example 1
    x2 = x.clone()
    x2[1:] = other
    a, b = _forward(probe, x, seed), _forward(probe, x2, seed)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False  # reported by the shape check
    return not torch.allclose(a[0], b[0], rtol=MIX_RTOL, atol=MIX_ATOL)


def check_model_for_dp(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, fix: bool = False, *,
                       input_dtype: torch.dtype | None = None, seed: int = 0,
                       fix_flag: str = FIX_FLAG) -> DPCheckResult:
    """Raise ``ModelDPError`` (one line, every problem with its fix) unless DP-SGD can train ``model`` on
    per-example inputs of ``input_shape`` with ``num_classes`` classes.

    With ``fix=True`` the layers ``ModuleValidator.fix`` can replace are replaced in a copy, which is
    returned as ``result.model`` with ``result.changes`` saying what changed; without it, or for problems
    the fixer cannot solve, nothing is changed and the error says what to do. ``input_dtype`` defaults to
    the dtype of the model's first floating parameter (pass ``torch.long`` for token inputs)."""
    shape = tuple(int(d) for d in input_shape)
    problems = validator_problems(model, fix_flag=fix_flag)
    changes: list[str] = []
    if fix and any(p.fixable for p in problems):
        model, changes = _apply_fix(model, problems)
        problems = validator_problems(model, fix_flag=fix_flag)
    messages = [p.message() for p in problems]
    dtype, device = _dtype_device(model, input_dtype)
    probe = copy.deepcopy(model).train()
    shape_problems, out_shape = _shape_problems(probe, shape, int(num_classes), dtype, device, seed)
    messages += shape_problems
    if not shape_problems and mixes_examples(model, shape, input_dtype=dtype, seed=seed):
        hint = ("remove the batch statistics from forward (e.g. x - x.mean(0))" if not problems
                else "see the layers named above")
        messages.append(f"example 0's output changes when only example 1 of the batch changes (train mode): the "
                        f"model mixes examples across a batch, so clipping each example's gradient does not "
                        f"bound its influence; {hint}")
    if messages:
        raise ModelDPError(messages)
    return DPCheckResult(model, changes, out_shape)
