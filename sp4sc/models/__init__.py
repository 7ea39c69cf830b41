"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

Families live one per file (:mod:`sp4sc.models.cnn6`, :mod:`sp4sc.models.sp4sc`,
:mod:`sp4sc.models.cpmobile`, :mod:`sp4sc.models.efficientat`) and register their named variants explicitly with :func:`register_model`
(the idea of timm's ``@register_model``; no ``globals()`` or ``eval`` lookup).

Every model maps log-mels ``(batch, 1, frames, mels)`` of any frame count to
logits ``(batch, n_classes)`` and carries ``arch_name`` (its registry name) and
``arch_kwargs`` (a JSON-able dict) so that
``create_model(m.arch_name, **m.arch_kwargs)`` rebuilds it; each block has a
``fuse()`` that folds its BatchNorm in place (see :func:`sp4sc.models.fold.fold_batchnorm`).
Beside the families: BatchNorm folding (:mod:`.fold`), model files and checkpoints
(:mod:`.checkpoint`), shared layers (:mod:`._common`) and the CPU-path kernels (:mod:`.cpu_ops`).

May import: ``frontend`` (checkpoints record the front end) and the top-level utilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from sp4sc.errors import Sp4scError


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: registry name (family and size, e.g. ``sp4sc_w32``).
        factory: builds the model from keyword arguments.
        frontend: name of the front-end preset the model is meant for
            (:data:`sp4sc.frontend.features.PRESETS`).
        description: one line for listings.
    """

    name: str
    factory: Callable[..., nn.Module]
    frontend: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, frontend: str, description: str) -> Callable:
    """Decorator registering a model factory under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, frontend, description)
        return factory

    return wrap


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names are a :class:`Sp4scError`."""
    if name not in _REGISTRY:
        raise Sp4scError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: the family's options, e.g. ``n_classes``, ``n_mels``,
            ``dropout``, ``fast`` (SP4SC), ``folded``.

    Raises:
        Sp4scError: unknown name or option.
    """
    entry = model_entry(name)
    try:
        return entry.factory(**kwargs)
    except TypeError as exc:
        raise Sp4scError(f"model {name!r}: bad option ({exc}); see sp4sc/models/ for its arguments") from exc


# Explicit imports register the families (each module calls register_model).
from sp4sc.models import cnn6 as _cnn6  # noqa: E402,F401
from sp4sc.models import sp4sc as _sp4sc  # noqa: E402,F401
from sp4sc.models import efficientat as _efficientat  # noqa: E402,F401
from sp4sc.models import cpmobile as _cpmobile  # noqa: E402,F401

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]
