"""The model file format and safe checkpoint loading.

A model file stores what rebuilds the model, not only its weights (the idea of
asteroid's ``BaseModel.serialize``)::

    {"sp4sc": {"format": 1, "model": <registry name>, "model_kwargs": {...},
               "frontend": <FrontEndConfig.to_dict()>, "classes": [...],
               "versions": {...}, ...},
     "state_dict": {<backbone parameter name>: tensor, ...}}

A Lightning checkpoint written by :class:`sp4sc.training.lit.SceneClassifier` carries the
same ``"sp4sc"`` entry; its ``state_dict`` keys start with ``backbone.``.
Both are read with ``torch.load(..., weights_only=True)`` and loaded strictly.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sp4sc.errors import Sp4scError

FORMAT_VERSION = 1
BACKBONE_PREFIX = "backbone."


def versions() -> dict[str, str]:
    """Software versions recorded in every model file."""
    import sp4sc

    # str(): torch.__version__ is a TorchVersion, which weights_only=True refuses to unpickle
    return {"sp4sc": str(sp4sc.__version__), "torch": str(torch.__version__)}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.exists():
        raise Sp4scError(f"{path}: checkpoint not found; check the path")
    if path.is_dir():
        raise Sp4scError(f"{path}: is a folder, expected a checkpoint file (.ckpt or .pt)")
    if path.stat().st_size == 0:
        raise Sp4scError(f"{path}: empty file, not a checkpoint; re-save or re-download it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise Sp4scError(
                f"{path}: refused: the file holds Python objects that would run code when loaded "
                "(torch.load weights_only=True allows tensors and plain containers only); "
                "only load checkpoints you trust, re-saved as plain state dicts"
            ) from exc
        raise Sp4scError(f"{path}: not a readable checkpoint ({msg})") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on damaged files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Sp4scError(f"{path}: not a readable checkpoint, truncated or corrupt ({first})") from exc
    if not isinstance(obj, dict):
        raise Sp4scError(f"{path}: not an sp4sc checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def check_state_dict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` strictly; name the mismatching keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_first(shapes)}")
        raise Sp4scError(f"{source}: weights do not fit the model ({'; '.join(parts)}); is it a checkpoint of another model?")
    module.load_state_dict(state_dict, strict=True)


def _first(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


@dataclass
class LoadedModel:
    """A model rebuilt from a file, with what it needs to run on audio."""

    model: torch.nn.Module
    name: str
    model_kwargs: dict[str, Any]
    frontend: Any  # sp4sc.frontend.features.FrontEndConfig
    classes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def model_spec(name: str, model_kwargs: dict, frontend, classes, **extra) -> dict[str, Any]:
    """The ``"sp4sc"`` entry of a model file."""
    spec = {
        "format": FORMAT_VERSION,
        "model": name,
        "model_kwargs": dict(model_kwargs),
        "frontend": frontend.to_dict() if hasattr(frontend, "to_dict") else dict(frontend),
        "classes": list(classes),
        "versions": versions(),
    }
    spec.update(extra)
    return spec


def plain_types(obj: Any) -> Any:
    """``obj`` with str subclasses (e.g. ``torch.__version__``, a TorchVersion) made plain,
    so ``torch.load(weights_only=True)`` accepts the checkpoint."""
    if isinstance(obj, dict):
        return {plain_types(k): plain_types(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_types(v) for v in obj) if type(obj) in (list, tuple) else [plain_types(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    return obj


def unwrap_state(ckpt: dict, path: str | os.PathLike, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict inside a third-party weights file: the dict itself, or its ``model``/``state_dict``/``net``
    entry; the first of ``prefixes`` that every key shares is removed.

    Raises:
        Sp4scError: no dict of tensors found (the message names ``path``).
    """
    state = ckpt
    for key in ("model", "state_dict", "net"):
        if isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Sp4scError(f"{path}: no state dict of tensors found (expected the dict itself or its "
                         "'model'/'state_dict' entry)")
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def save_model(path: str | os.PathLike, model: torch.nn.Module, spec: dict[str, Any]) -> None:
    """Write a model file atomically (see the module docstring for the layout)."""
    from sp4sc.fileio import atomic_path

    buf = io.BytesIO()
    torch.save({"sp4sc": spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_model(path: str | os.PathLike, ckpt: dict[str, Any] | None = None) -> LoadedModel:
    """Rebuild the backbone stored in a model file or a Lightning checkpoint (eval mode).

    ``ckpt``: the file's contents when the caller has already read it (:func:`read_checkpoint`); ``path`` then
    only names it in errors.
    """
    from sp4sc.frontend.features import FrontEndConfig
    from sp4sc.models import create_model

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    spec = ckpt.get("sp4sc")
    if not isinstance(spec, dict) or "model" not in spec:
        hint = ""
        if "net" in ckpt:
            hint = "; it looks like an official SP4ASC checkpoint: convert it first with `sp4sc convert-sp4asc`"
        raise Sp4scError(f"{path}: not an sp4sc checkpoint (no 'sp4sc' model description){hint}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise Sp4scError(f"{path}: checkpoint has no state_dict")
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    try:
        model = create_model(spec["model"], **spec.get("model_kwargs", {}))
    except (KeyError, TypeError) as exc:
        raise Sp4scError(f"{path}: cannot rebuild model {spec['model']!r} ({exc})") from exc
    check_state_dict(model, state, str(path))
    model.eval()
    return LoadedModel(
        model=model,
        name=spec["model"],
        model_kwargs=dict(spec.get("model_kwargs", {})),
        frontend=FrontEndConfig.from_dict(spec["frontend"]),
        classes=list(spec.get("classes", [])),
        meta=spec,
    )
