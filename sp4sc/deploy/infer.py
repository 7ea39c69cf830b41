"""Class probabilities of audio files with a model file (the torch side of ``sp4sc infer``).

``predict_files(loaded, files)`` loads each file with :func:`sp4sc.frontend.audio.load_audio`
at the model's front end (mono, resampled with soxr), keeps each clip at its own
length unless ``pad`` / ``crop`` fit it to the model's trained length
(:func:`sp4sc.frontend.audio.fit_clip`; one line per run says when lengths differ), computes log-mels with :class:`sp4sc.frontend.features.LogMel`, runs the model
in eval mode, folded as it is exported (:func:`sp4sc.models.fold.inference_model`), and returns
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
from sp4sc.models.fold import inference_model

# SP4ASC's SpecAugment ([time width, time stripes, freq width, freq stripes]) at the
# sp4asc front end (431 frames x 256 mels), from their checkpoint names
# ("..._specAugment_128_2_32_2"). Other front ends get the widths scaled to their
# frames and mel bins (see tta_spec_augment).
SP4ASC_SPEC_AUGMENT = (128, 2, 32, 2)
SP4ASC_FRAMES, SP4ASC_MELS = 431, 256


def tta_spec_augment(loaded, spec_augment: Sequence[int] | None = None):
    """The SpecAugment used for TTA.

    In order: ``spec_augment`` if given; the model file's training setting
    (``meta["spec_augment"]``, written by :class:`sp4sc.training.lit.SceneClassifier`, or
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
                     spec_augment=None, first_index: int = 0,
                     indices: Sequence[int] | None = None) -> torch.Tensor:
    """Log-mels ``(batch, 1, frames, mels)`` -> probabilities ``(batch, classes)`` float64.

    Args:
        model: the backbone in eval mode.
        x: log-mels.
        tta: number of augmented passes (0: one plain pass).
        seed: TTA seed.
        spec_augment: the :class:`~sp4sc.data.augment.SpecAugment` for TTA.
        first_index: index of ``x[0]`` among all clips (seeds each clip's stripes).
        indices: the index of each clip of ``x`` among all clips (overrides ``first_index``).
    """
    if tta <= 0:
        return torch.softmax(model(x).double(), dim=-1)
    if spec_augment is None:
        raise Sp4scError("--tta: test-time augmentation needs a SpecAugment")
    ids = list(indices) if indices is not None else [first_index + j for j in range(x.shape[0])]
    total = None
    for k in range(tta):
        xa = torch.cat([
            spec_augment(x[j : j + 1], generator=_clip_generator(seed, k, ids[j])) for j in range(x.shape[0])
        ])  # (batch, 1, frames, mels)
        p = torch.softmax(model(xa).double(), dim=-1)
        total = p if total is None else total + p
    return total / tta


def predict_files(loaded, files: Sequence[str | os.PathLike], *, tta: int = 0, seed: int = 0,
                  batch_size: int = 16, spec_augment: Sequence[int] | None = None,
                  pad: str | None = None, crop: bool = False) -> np.ndarray:
    """Probabilities ``(len(files), n_classes)`` float32 for audio files.

    Each clip runs at its own length unless ``pad`` / ``crop`` fit it to the model's
    trained length (:func:`sp4sc.frontend.audio.fit_clip`); when any clip ran at another
    length than the trained one, one line at the end of the run says how many and how.

    Args:
        loaded: a :class:`sp4sc.models.checkpoint.LoadedModel`.
        files: audio paths (wav, flac, ogg); resampled to the model's rate as needed.
        tta: test-time augmentation passes (0: none); the softmax of the passes is averaged.
        seed: TTA seed (same seed, same result, whatever the batch size).
        batch_size: clips per forward pass (clips of one batch with equal lengths run together).
        spec_augment: TTA stripes ``[time width, time stripes, freq width, freq stripes]``
            (default: see :func:`tta_spec_augment`).
        pad: ``"silence"`` or ``"repeat"``: pad clips shorter than the trained length up to it.
        crop: cut clips longer than the trained length to their first trained length.

    Raises:
        Sp4scError: a file is missing, unreadable or too short for the model (named), or a bad argument.
    """
    from sp4sc.frontend.audio import ClipLengths
    from sp4sc.frontend.features import LogMel
    from sp4sc.log import logger

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
    lengths = ClipLengths(cfg.n_samples, cfg.sample_rate, pad, crop)
    min_samples = min_clip_samples(cfg, int(getattr(model, "min_frames", 1)))
    rows: dict[int, np.ndarray] = {}
    for group in clip_groups(files, cfg, batch_size, pad, crop, min_samples, lengths):
        ids = [i for i, _ in group]
        with torch.no_grad():
            x = logmel(torch.from_numpy(np.stack([w for _, w in group]))).unsqueeze(1)  # (batch, 1, frames, mels)
            probs = predict_features(model, x, tta=tta, seed=seed, spec_augment=augment, indices=ids)
        for i, row in zip(ids, probs.float().numpy()):
            rows[i] = row
    note = lengths.note()
    if note:
        logger.info("clip length: %s", note)
    if not rows:
        return np.zeros((0, n_classes or 0), dtype=np.float32)
    probs = np.stack([rows[i] for i in range(len(files))])
    if n_classes is not None and probs.shape[1] != n_classes:
        raise Sp4scError(f"model gives {probs.shape[1]} classes but its file lists {n_classes} class names")
    return probs


def min_clip_samples(cfg, min_frames: int) -> int:
    """Fewest samples that give the model ``min_frames`` frames (centred STFT: 1 + n // hop)."""
    return max((min_frames - 1) * cfg.hop_length, cfg.n_fft // 2 + 1)


def too_short_message(path: str, n: int, min_samples: int, sample_rate: int, trained_s: float, pad: str | None) -> str:
    """The one-line error for a clip too short for the model (shared wording with the edge runner)."""
    fix = (f"pass --pad silence or --pad repeat to pad clips to the model's trained {trained_s:g} s"
           if pad is None else "the clip holds almost no audio; check the file")
    return (f"{path}: {n / sample_rate:.3f} s of audio, shorter than the {min_samples / sample_rate:.3f} s "
            f"the model needs; {fix}")


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


def clip_groups(files: Sequence[str], cfg, batch_size: int, pad: str | None, crop: bool, min_samples: int,
                lengths):
    """Read ``files`` in batches of ``batch_size`` and yield each batch's clips grouped by length.

    Each clip is loaded at the front end's rate and fitted (:func:`sp4sc.frontend.audio.fit_clip`);
    a clip shorter than ``min_samples`` is a one-line error; ``lengths`` tallies what was fitted.
    ``lengths`` is a :class:`sp4sc.frontend.audio.ClipLengths`. Yields lists of
    ``(clip index, waveform)`` of one length (one forward pass each).
    """
    from sp4sc.frontend.audio import fit_clip, load_audio

    for start in range(0, len(files), batch_size):
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}  # length -> [(clip index, waveform)]
        for i in range(start, min(start + batch_size, len(files))):
            raw = load_audio(files[i], cfg.sample_rate, None)
            wav = fit_clip(raw, cfg.n_samples, pad=pad, crop=crop)
            if wav.shape[0] < min_samples:
                raise Sp4scError(too_short_message(files[i], wav.shape[0], min_samples, cfg.sample_rate,
                                                   cfg.duration, pad))
            lengths.add(raw.shape[0], wav.shape[0])
            groups.setdefault(wav.shape[0], []).append((i, wav))
        yield from groups.values()
