"""Class probabilities of audio files with a model file (the torch side of ``sp4sc infer``).

``predict_files(loaded, files)`` loads each file with :func:`sp4sc.audio.load_audio`
at the model's front end (mono, resampled with soxr, padded/cropped to the clip
duration), computes log-mels with :class:`sp4sc.features.LogMel`, runs the model
in eval mode, folded as it is exported (:func:`sp4sc.fold.inference_model`), and returns
softmax probabilities ``(n_files, n_classes)``. The edge
runner (``export/edge_infer.py``) is its torch-free twin and prints the same JSON
(:func:`result_json`).

Test-time augmentation (``tta=N``): N passes with SpecAugment stripes active
(:class:`sp4sc.data.augment.SpecAugment`), the softmax averaged. Pass ``k`` of
clip ``i`` draws its stripes from a generator seeded with ``(seed, k, i)``, so
the result depends on ``seed`` but not on ``batch_size`` or the order of batches.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.fold import inference_model

# SP4ASC's SpecAugment ([time width, time stripes, freq width, freq stripes]) at the
# sp4asc front end (431 frames x 256 mels), from their checkpoint names
# ("..._specAugment_128_2_32_2"). Other front ends get the widths scaled to their
# frames and mel bins (see tta_spec_augment).
SP4ASC_SPEC_AUGMENT = (128, 2, 32, 2)
SP4ASC_FRAMES, SP4ASC_MELS = 431, 256


def tta_spec_augment(loaded, spec_augment: Sequence[int] | None = None):
    """The SpecAugment used for TTA.

    In order: ``spec_augment`` if given; the model file's training setting
    (``meta["spec_augment"]``, written by :class:`sp4sc.lit.SceneClassifier`, or
    ``meta["source"]["config"]["specAugment"]`` of a converted SP4ASC checkpoint);
    else SP4ASC's ``[128, 2, 32, 2]`` with its widths scaled to the front end's frames
    and mel bins. The fill is the file's ``spec_augment_fill`` (default ``"mean"``).
    """
    from sp4sc.data.augment import SpecAugment

    meta = loaded.meta if isinstance(loaded.meta, dict) else {}
    values = spec_augment
    if not values:
        values = meta.get("spec_augment")
    if not values:
        source = meta.get("source")
        config = source.get("config") if isinstance(source, dict) else None
        values = config.get("specAugment") if isinstance(config, dict) else None
    if not values:
        cfg = loaded.frontend
        tw, ts, fw, fs = SP4ASC_SPEC_AUGMENT
        values = (
            max(2, round(tw * cfg.n_frames / SP4ASC_FRAMES)), ts,
            max(2, round(fw * cfg.n_mels / SP4ASC_MELS)), fs,
        )
    return SpecAugment.from_list([int(v) for v in values], fill=str(meta.get("spec_augment_fill") or "mean"))


def _clip_generator(seed: int, k: int, i: int) -> torch.Generator:
    h = hashlib.sha256(f"{seed}:{k}:{i}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


@torch.no_grad()
def predict_features(model: torch.nn.Module, x: torch.Tensor, *, tta: int = 0, seed: int = 0,
                     spec_augment=None, first_index: int = 0) -> torch.Tensor:
    """Log-mels ``(batch, 1, frames, mels)`` -> probabilities ``(batch, classes)`` float64.

    Args:
        model: the backbone in eval mode.
        x: log-mels.
        tta: number of augmented passes (0: one plain pass).
        seed: TTA seed.
        spec_augment: the :class:`~sp4sc.data.augment.SpecAugment` for TTA.
        first_index: index of ``x[0]`` among all clips (seeds each clip's stripes).
    """
    if tta <= 0:
        return torch.softmax(model(x).double(), dim=-1)
    if spec_augment is None:
        raise Sp4scError("--tta: test-time augmentation needs a SpecAugment")
    total = None
    for k in range(tta):
        xa = torch.cat([
            spec_augment(x[j : j + 1], generator=_clip_generator(seed, k, first_index + j)) for j in range(x.shape[0])
        ])  # (batch, 1, frames, mels)
        p = torch.softmax(model(xa).double(), dim=-1)
        total = p if total is None else total + p
    return total / tta


def predict_files(loaded, files: Sequence[str | os.PathLike], *, tta: int = 0, seed: int = 0,
                  batch_size: int = 16, spec_augment: Sequence[int] | None = None) -> np.ndarray:
    """Probabilities ``(len(files), n_classes)`` float32 for audio files.

    Args:
        loaded: a :class:`sp4sc.checkpoint.LoadedModel`.
        files: audio paths (wav, flac, ogg); resampled to the model's rate as needed.
        tta: test-time augmentation passes (0: none); the softmax of the passes is averaged.
        seed: TTA seed (same seed, same result, whatever the batch size).
        batch_size: clips per forward pass.
        spec_augment: TTA stripes ``[time width, time stripes, freq width, freq stripes]``
            (default: see :func:`tta_spec_augment`).

    Raises:
        Sp4scError: a file is missing or unreadable (named), or a bad argument.
    """
    from sp4sc.audio import load_audio
    from sp4sc.features import LogMel

    if batch_size < 1:
        raise Sp4scError(f"--batch-size: must be at least 1, got {batch_size}")
    if tta < 0:
        raise Sp4scError(f"--tta: must be 0 or more, got {tta}")
    files = [str(f) for f in files]
    cfg = loaded.frontend
    model = inference_model(loaded.model)
    logmel = LogMel(cfg).eval()
    augment = tta_spec_augment(loaded, spec_augment) if tta > 0 else None
    n_classes = len(loaded.classes) or None
    out: list[np.ndarray] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        wav = np.stack([load_audio(f, cfg.sample_rate, cfg.duration) for f in chunk])  # (batch, samples)
        with torch.no_grad():
            x = logmel(torch.from_numpy(wav)).unsqueeze(1)  # (batch, 1, frames, mels)
            probs = predict_features(model, x, tta=tta, seed=seed, spec_augment=augment, first_index=start)
        out.append(probs.float().numpy())
    if not out:
        return np.zeros((0, n_classes or 0), dtype=np.float32)
    probs = np.concatenate(out)
    if n_classes is not None and probs.shape[1] != n_classes:
        raise Sp4scError(f"model gives {probs.shape[1]} classes but its file lists {n_classes} class names")
    return probs


def result_json(classes: Sequence[str], files: Sequence[str], probs: np.ndarray) -> dict[str, Any]:
    """``{"classes": [...], "files": [...], "probs": [[...], ...]}``: the ``--json`` output (edge runner too)."""
    return {"classes": list(classes), "files": [str(f) for f in files], "probs": [[float(p) for p in row] for row in probs]}


def format_table(classes: Sequence[str], files: Sequence[str], probs: np.ndarray) -> str:
    """One line per file: ``FILE<TAB>top class<TAB>probability``."""
    lines = []
    for f, row in zip(files, probs):
        k = int(np.argmax(row))
        lines.append(f"{f}\t{classes[k]}\t{row[k]:.4f}")
    return "\n".join(lines)
