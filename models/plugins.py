"""Model specs resolved to factories: a zoo name, ``package.module:factory``, or a ``dpfl.models`` entry point.

A *factory* is any callable ``(input_shape, num_classes) -> nn.Module``; an ``nn.Module`` subclass whose
constructor takes ``(input_shape, num_classes)`` is one. A spec is resolved in this order:

1. a zoo name (``models.zoo.MODELS``: "cnn", "mlp", "logreg", "resnet");
2. ``package.module:attribute`` (the attribute may be dotted, ``mymodels:Nets.small``): the module is
   imported from ``sys.path`` (the user's own code, outside dpfl);
3. a name registered by an installed distribution in the entry-point group ``dpfl.models``, e.g. in the
   plug-in's pyproject.toml::

       [project.entry-points."dpfl.models"]
       tabnet = "my_package.models:make_tabnet"

Every failure is one ``ModelPluginError`` line that names the problem and the fix. The model a factory
returns is only checked to be an ``nn.Module`` here; whether DP-SGD can train it is
``models.dp_check.check_model_for_dp``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from dpfl.models.zoo import MODELS, ModelFactory, UnknownModelError, check_input_shape
from dpfl.models.zoo import build_model as zoo_build_model

ENTRY_POINT_GROUP = "dpfl.models"


class ModelPluginError(UnknownModelError):
    """A model spec that cannot be resolved or built; one line naming the problem and the fix.

    A subclass of ``UnknownModelError`` (so of ``ValueError``): callers that catch those keep working."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: its factory and, for messages and logs, what kind of spec it was."""

    spec: str
    kind: str  # "zoo" | "module" | "entry-point"
    factory: ModelFactory
    source: str  # "zoo", "mymodels:Net", or "entry point 'tabnet' = my_package.models:make_tabnet"


def is_module_spec(spec: str) -> bool:
    """``package.module:attribute`` form (a colon with text on both sides)."""
    module, sep, attr = spec.partition(":")
    return bool(sep and module.strip() and attr.strip())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _where(exc: BaseException) -> str:
    """'file.py:12' of the innermost frame of an exception raised in user code, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _import_attribute(spec: str) -> Callable[..., object]:
    module_name, _, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelPluginError(
            f"model {spec!r}: module {module_name!r} does not import ({_one_line(exc)}); put the folder holding "
            f"it on PYTHONPATH (or pip install its package) and install what it imports") from None
    except Exception as exc:  # noqa: BLE001 - a user's module may raise anything at import time
        raise ModelPluginError(
            f"model {spec!r}: importing module {module_name!r} raised {_one_line(exc)}{_where(exc)}; fix the "
            f"module so it imports cleanly") from None
    walked = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise ModelPluginError(
                f"model {spec!r}: {walked!r} has no attribute {part!r} (it has: {', '.join(public) or 'nothing'}); "
                f"name a factory (input_shape, num_classes) -> nn.Module or an nn.Module subclass")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}" if walked != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise ModelPluginError(
            f"model {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable; name a factory "
            f"(input_shape, num_classes) -> nn.Module or an nn.Module subclass")
    return obj


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def plugin_names() -> list[str]:
    """Model names registered by installed distributions in the ``dpfl.models`` entry-point group."""
    return sorted(_entry_points())


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> Callable[..., object]:
    try:
        obj = ep.load()
    except ImportError as exc:
        raise ModelPluginError(
            f"model {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) does not import "
            f"({_one_line(exc)}); reinstall the distribution that registers it") from None
    except AttributeError as exc:
        raise ModelPluginError(
            f"model {ep.name!r}: entry point {ep.value!r} names a missing attribute ({_one_line(exc)}); fix the "
            f"entry point in that distribution's pyproject.toml") from None
    except Exception as exc:  # noqa: BLE001 - user code at import time
        raise ModelPluginError(
            f"model {ep.name!r}: loading entry point {ep.value!r} raised {_one_line(exc)}{_where(exc)}") from None
    if not callable(obj):
        raise ModelPluginError(f"model {ep.name!r}: entry point {ep.value!r} is a {type(obj).__name__}, not a "
                               f"factory (input_shape, num_classes) -> nn.Module")
    return obj


def _unknown(spec: str) -> ModelPluginError:
    plugins = plugin_names()
    registered = f"; registered plug-ins: {', '.join(plugins)}" if plugins else ""
    return ModelPluginError(
        f"unknown model {spec!r}; known models: {', '.join(sorted(MODELS))}{registered}; or give your own as "
        f"'package.module:factory' (a callable (input_shape, num_classes) -> nn.Module on PYTHONPATH) or "
        f"register it in the entry-point group {ENTRY_POINT_GROUP!r}")


def resolve_model(spec: str) -> ResolvedModel:
    """The factory a model spec names, imported but not called (cheap enough for config checks)."""
    spec = str(spec).strip()
    if spec in MODELS:
        return ResolvedModel(spec, "zoo", MODELS[spec], "zoo")
    if is_module_spec(spec):
        return ResolvedModel(spec, "module", _import_attribute(spec), spec)  # type: ignore[arg-type]
    ep = _entry_points().get(spec)
    if ep is not None:
        return ResolvedModel(spec, "entry-point", _load_entry_point(ep),  # type: ignore[arg-type]
                             f"entry point {spec!r} = {ep.value}")
    raise _unknown(spec)


def check_model_spec(spec: str, input_shape: tuple[int, ...]) -> None:
    """Cheap config check without building: a zoo model's input requirements, or that a plug-in resolves."""
    resolved = resolve_model(spec)
    if resolved.kind == "zoo":
        check_input_shape(resolved.spec, tuple(int(d) for d in input_shape))


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int, *, fix: bool = False) -> nn.Module:
    """A freshly initialised model from any spec (seed torch beforehand for reproducible weights).

    ``dpfl.models.build_model`` is this function; for a zoo name it is exactly ``models.zoo.build_model``.
    ``fix=True`` (run config ``fix-model``) replaces the layers DP-SGD cannot train by Opacus' fix
    (``models.dp_check.fix_for_dp``)."""
    model = _build(spec, input_shape, num_classes)
    if fix:
        from dpfl.models.dp_check import fix_for_dp  # opacus: only when asked

        model = fix_for_dp(model)[0]
    return model


def _build(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    resolved = resolve_model(spec)
    shape = tuple(int(d) for d in input_shape)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if resolved.kind == "zoo":
        return zoo_build_model(resolved.spec, shape, int(num_classes))
    try:
        model = resolved.factory(shape, int(num_classes))
    except Exception as exc:  # noqa: BLE001 - the factory is user code
        raise ModelPluginError(
            f"model {spec!r} ({resolved.source}): the factory raised {_one_line(exc)}{_where(exc)} when called "
            f"with input_shape={shape}, num_classes={int(num_classes)}; it must accept "
            f"(input_shape: tuple[int, ...], num_classes: int)") from None
    if not isinstance(model, nn.Module):
        raise ModelPluginError(
            f"model {spec!r} ({resolved.source}): the factory returned a {type(model).__module__}."
            f"{type(model).__qualname__}, not a torch.nn.Module; return the module itself (e.g. `return Net(...)`)")
    return model
