"""Exact per-sample clipping at close to the cost of a non-private step ("book-keeping", Bu et al. 2023).

Opacus' hook mode stores a per-sample gradient for every parameter (N copies of the model) and then
clips and sums them; its ghost mode runs a second backward pass. Book-keeping needs neither:

1. one forward pass, keeping each layer's input ``a`` (hook);
2. one backward pass for the gradients of the layer *outputs* ``b`` only - ``torch.autograd.grad`` with
   respect to the outputs, so autograd never computes the (summed) weight gradients it would throw away;
3. per layer, each example's squared gradient norm from ``a`` and ``b``: for a Linear layer on flat
   inputs ``||a_i||^2 ||b_i||^2`` (ghost norm, no per-sample gradient at all); for a convolution the
   per-sample gradient ``b_i a_i^T`` (one batched product over a strided view of the input, cheaper
   than ``F.unfold`` on CPU), or, when N per-sample gradients would not fit in ``MATERIALISE_LIMIT``,
   the ghost norm ``<a_i^T a_i, b_i^T b_i>`` over pairs of positions (more flops, little memory);
4. the clip factors ``c_i = min(1, C / (||g_i|| + 1e-6))`` (Opacus' formula), and the clipped sum
   ``sum_i c_i g_i`` per layer as one matrix product of ``a`` with the rescaled ``b``.

The result is written to ``p.grad`` as the clipped *sum*; Opacus' ``DPOptimizerFastGradientClipping``
then adds N(0, sigma^2 C^2) noise and divides by the expected batch size, exactly as for ghost clipping.
Supported layers: Linear, Conv2d (groups = 1, numeric padding) and GroupNorm - everything in the zoo.
A model with any other trainable layer is refused up front with the mode that does support it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

NORM_EPS = 1e-6  # Opacus' clip factor is C / (||g|| + 1e-6); the same formula keeps every mode identical
MATERIALISE_LIMIT = 1 << 25  # elements (128 MiB in float32) of one layer's per-sample weight gradients


class UnsupportedLayerError(ValueError):
    """A trainable layer book-keeping cannot clip exactly; the message names it and the fix."""


@dataclass
class _Seen:
    """What one forward pass left behind for one layer."""

    module: nn.Module
    activation: torch.Tensor
    output: torch.Tensor
    version: int  # output._version at forward time: an in-place op afterwards would corrupt b


@dataclass
class _LayerGrads:
    """Per-layer state between the norm pass and the clipped-sum pass."""

    module: nn.Module
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # param name -> (N, *shape)
    a: torch.Tensor | None = None  # kept when the weight's per-sample gradient was not materialised
    b: torch.Tensor | None = None


def _supported_reason(module: nn.Module) -> str | None:
    """None when ``module`` is supported, else why not."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped convolutions"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return "string padding or a padding mode other than zeros"
        return None
    if isinstance(module, nn.Linear | nn.GroupNorm):
        return None
    return f"layer type {type(module).__name__}"


def unsupported_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, why) for every trainable layer book-keeping cannot clip exactly; empty when it can
    (statically: layer reuse and in-place changes of a layer's output are only seen in a forward pass)."""
    found = []
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            reason = _supported_reason(module)
            if reason is not None:
                found.append((name or type(module).__name__, reason))
    return found


def _trainable_leaves(model: nn.Module) -> list[nn.Module]:
    """Modules that own trainable parameters directly; each must be supported."""
    leaves = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        reason = _supported_reason(module)
        if reason is not None:
            raise UnsupportedLayerError(
                f"grad-sample-mode 'bk' cannot clip {reason} (layer {name or type(module).__name__!r}); "
                f"use grad-sample-mode 'hooks', which supports every layer Opacus does")
        leaves.append(module)
    return leaves


def _patches(x: torch.Tensor, conv: nn.Conv2d, out_hw: torch.Size) -> torch.Tensor:
    """The convolution's input patches as (N, C*kh*kw, T), like ``F.unfold`` but through a strided view
    of the padded input (one copy instead of im2col, which is several times slower on CPU)."""
    pad_h, pad_w = conv.padding  # type: ignore[misc]  # numeric: checked by _supported_reason
    if pad_h or pad_w:
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    x = x.contiguous()
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    oh, ow = int(out_hw[0]), int(out_hw[1])
    s_n, s_c, s_h, s_w = x.stride()
    view = x.as_strided((x.shape[0], x.shape[1], kh, kw, oh, ow),
                        (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
    return view.reshape(x.shape[0], x.shape[1] * kh * kw, oh * ow)


class BookKeepingClipper:
    """Computes the exactly clipped, summed gradient of a batch and stores it in ``p.grad``.

    Use: ``loss = clipper.clipped_backward(model(x), y)`` in place of ``loss.backward()``; the module
    itself is unchanged apart from forward hooks, removed by ``close()``.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.layers = _trainable_leaves(model)
        self._seen: list[_Seen] = []
        self._handles = [m.register_forward_hook(self._keep) for m in self.layers]

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._seen.append(_Seen(module, inputs[0].detach(), output, output._version))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def clipped_backward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the batch (summed over examples, returned detached); ``p.grad`` of every
        trainable parameter becomes sum_i min(1, C / (||g_i|| + 1e-6)) g_i."""
        seen, self._seen = self._seen, []
        try:
            return self._clip(seen, logits, target)
        finally:
            seen.clear()

    def _clip(self, seen: list[_Seen], logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = int(target.shape[0])
        if n == 0:  # an empty Poisson batch: the clipped sum is zero (noise is still added by the optimizer)
            for module in self.layers:
                for p in module.parameters(recurse=False):
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            return logits.new_zeros(())
        self._check_seen(seen)
        loss = F.cross_entropy(logits, target, reduction="sum")  # sum: b_i is example i's own gradient
        outputs = torch.autograd.grad(loss, [s.output for s in seen])
        norms_sq = logits.new_zeros(n, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
        pending = [self._norms(s, b, norms_sq) for s, b in zip(seen, outputs, strict=True)]
        clip = (self.max_grad_norm / (norms_sq.sqrt() + NORM_EPS)).clamp(max=1.0).to(logits.dtype)
        for layer in pending:
            self._clipped_sum(layer, clip)
        return loss.detach()

    def _check_seen(self, seen: list[_Seen]) -> None:
        modules = [s.module for s in seen]
        if len(set(map(id, modules))) != len(modules):
            raise UnsupportedLayerError("grad-sample-mode 'bk' needs every layer called once per forward pass; "
                                        "use grad-sample-mode 'hooks' for models that reuse a layer")
        if len(modules) != len(self.layers):
            raise UnsupportedLayerError("a trainable layer was not called in the forward pass; "
                                        "use grad-sample-mode 'hooks'")
        for s in seen:
            if s.output._version != s.version:
                raise UnsupportedLayerError(
                    f"the output of {type(s.module).__name__} was modified in place after the layer ran "
                    f"(e.g. ReLU(inplace=True)); use an out-of-place activation or grad-sample-mode 'hooks'")

    # --- per-layer norms ---------------------------------------------------------------------------------
    def _norms(self, s: _Seen, b: torch.Tensor, norms_sq: torch.Tensor) -> _LayerGrads:
        module, a = s.module, s.activation
        layer = _LayerGrads(module)
        if isinstance(module, nn.Linear):
            self._linear_norms(layer, a, b, norms_sq)
        elif isinstance(module, nn.Conv2d):
            self._conv_norms(layer, a, b, norms_sq)
        else:
            self._group_norm_norms(layer, a, b, norms_sq)
        return layer

    @staticmethod
    def _add(norms_sq: torch.Tensor, value: torch.Tensor) -> None:
        norms_sq.add_(value.to(norms_sq.dtype))

    def _linear_norms(self, layer: _LayerGrads, a: torch.Tensor, b: torch.Tensor, norms_sq: torch.Tensor) -> None:
        module = layer.module
        n = b.shape[0]
        if a.dim() == 2:  # one position per example: ||a_i b_i^T||^2 = ||a_i||^2 ||b_i||^2
            if module.weight.requires_grad:
                self._add(norms_sq, a.pow(2).sum(1) * b.pow(2).sum(1))
                layer.a, layer.b = a, b
            if module.bias is not None and module.bias.requires_grad:
                layer.per_sample["bias"] = b
                self._add(norms_sq, b.pow(2).sum(1))
            return
        a3, b3 = a.reshape(n, -1, a.shape[-1]), b.reshape(n, -1, b.shape[-1])  # (N, T, d), (N, T, p)
        if module.weight.requires_grad:
            self._weight_norms(layer, a3.transpose(1, 2), b3.transpose(1, 2), norms_sq)
        if module.bias is not None and module.bias.requires_grad:
            gb = b3.sum(1)
            layer.per_sample["bias"] = gb
            self._add(norms_sq, gb.pow(2).sum(1))

    def _conv_norms(self, layer: _LayerGrads, a: torch.Tensor, b: torch.Tensor, norms_sq: torch.Tensor) -> None:
        module = layer.module
        n = b.shape[0]
        b3 = b.reshape(n, b.shape[1], -1)  # (N, p, T)
        if module.weight.requires_grad:
            self._weight_norms(layer, _patches(a, module, b.shape[2:]), b3, norms_sq)
        if module.bias is not None and module.bias.requires_grad:
            gb = b3.sum(2)
            layer.per_sample["bias"] = gb
            self._add(norms_sq, gb.pow(2).sum(1))

    def _weight_norms(self, layer: _LayerGrads, a: torch.Tensor, b: torch.Tensor, norms_sq: torch.Tensor) -> None:
        """a: (N, d, T), b: (N, p, T); per-sample weight gradient g_i = b_i a_i^T (p x d)."""
        n, d, p = a.shape[0], a.shape[1], b.shape[1]
        if n * p * d > MATERIALISE_LIMIT:  # ghost norm: <a_i^T a_i, b_i^T b_i> over T x T position pairs
            aa = torch.bmm(a.transpose(1, 2), a)
            bb = torch.bmm(b.transpose(1, 2), b)
            self._add(norms_sq, (aa * bb).sum((1, 2)))
            layer.a, layer.b = a, b
        else:
            g = torch.bmm(b, a.transpose(1, 2))  # (N, p, d)
            layer.per_sample["weight"] = g
            self._add(norms_sq, g.pow(2).sum((1, 2)))

    def _group_norm_norms(self, layer: _LayerGrads, a: torch.Tensor, b: torch.Tensor,
                          norms_sq: torch.Tensor) -> None:
        module = layer.module
        n = b.shape[0]
        b3 = b.reshape(n, b.shape[1], -1)
        if module.weight is not None and module.weight.requires_grad:
            normalised = F.group_norm(a, module.num_groups, eps=module.eps).reshape(n, a.shape[1], -1)
            gw = (normalised * b3).sum(2)
            layer.per_sample["weight"] = gw
            self._add(norms_sq, gw.pow(2).sum(1))
        if module.bias is not None and module.bias.requires_grad:
            gb = b3.sum(2)
            layer.per_sample["bias"] = gb
            self._add(norms_sq, gb.pow(2).sum(1))

    # --- clipped sums ------------------------------------------------------------------------------------
    @staticmethod
    def _clipped_sum(layer: _LayerGrads, clip: torch.Tensor) -> None:
        module = layer.module
        for name, per_sample in layer.per_sample.items():
            param = getattr(module, name)
            param.grad = torch.tensordot(clip, per_sample, dims=1).reshape(param.shape)
        if layer.a is None or layer.b is None:
            return
        weight = module.weight
        a, b = layer.a, layer.b
        if a.dim() == 2:  # Linear on flat inputs: sum_i c_i b_i a_i^T = (c * b)^T a
            weight.grad = (b * clip[:, None]).t().mm(a).reshape(weight.shape)
            return
        # a: (N, d, T), b: (N, p, T) -> sum_i c_i b_i a_i^T = (p, N*T) @ (N*T, d)
        n, d, t = a.shape
        bc = (b * clip[:, None, None]).transpose(0, 1).reshape(b.shape[1], n * t)
        weight.grad = bc.mm(a.transpose(1, 2).reshape(n * t, d)).reshape(weight.shape)
