"""Class probabilities of audio files with an exported ONNX model (``sp4sc infer --onnx``).

The library's audio loading and log-mel front end, as :mod:`sp4sc.deploy.infer`, with the model
under ONNX Runtime at its stored precision (fp32, fp16, or int8 with its int8 kernels). Kept apart
from :mod:`sp4sc.deploy.infer` so that torch inference never imports the ONNX modules
(tests/test_layers.py).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from sp4sc.deploy.infer import clip_groups, min_clip_samples
from sp4sc.errors import Sp4scError


def load_onnx(model_path: str | os.PathLike, threads: int = 0):
    """An exported ONNX model (any precision: fp32, fp16, int8) and its export folder's ``frontend.json``.

    Returns:
        ``(session, frontend config, classes, metadata)``.

    Raises:
        Sp4scError: a missing file, a model from another export than the ``frontend.json``
            beside it, or a waveform-input model (give the log-mel one).
    """
    import json
    from pathlib import Path

    import onnx

    from sp4sc.deploy.onnx_graph import INPUT_NAME, read_metadata
    from sp4sc.deploy.onnx_parity import ort_session
    from sp4sc.frontend.features import FrontEndConfig

    path = Path(model_path)
    spec_path = path.parent / "frontend.json"
    if not path.is_file():
        raise Sp4scError(f"{path}: model not found; pass a model*.onnx of an `sp4sc export` folder")
    if not spec_path.is_file():
        raise Sp4scError(f"{spec_path}: not found; keep frontend.json beside the model (the whole export folder)")
    meta = read_metadata(onnx.load(str(path), load_external_data=False))
    spec = json.loads(spec_path.read_text())
    if meta.get("fingerprint") != spec.get("fingerprint"):
        raise Sp4scError(f"{path}: comes from another export than {spec_path} (fingerprint {meta.get('fingerprint')} "
                         f"vs {spec.get('fingerprint')}); use the model and frontend.json of one export folder")
    if meta.get("input", "logmel") != "logmel":
        raise Sp4scError(f"{path}: takes {meta.get('input')} input; pass the log-mel model (model.onnx, model_int8.onnx...)")
    session = ort_session(str(path), threads=threads)
    if session.get_inputs()[0].name != INPUT_NAME:
        raise Sp4scError(f"{path}: input {session.get_inputs()[0].name!r} is not {INPUT_NAME!r}; re-export the model")
    return session, FrontEndConfig.from_dict(spec["frontend"]), [str(c) for c in spec["classes"]], meta


def predict_files_onnx(model_path: str | os.PathLike, files: Sequence[str | os.PathLike], *, batch_size: int = 16,
                       pad: str | None = None, crop: bool = False, threads: int = 0) -> tuple[np.ndarray, list[str]]:
    """``(probabilities (n_files, classes) float32, classes)`` of audio files with an exported ONNX model.

    The library's audio loading and :class:`sp4sc.frontend.features.LogMel` (as :func:`predict_files`), the
    model under ONNX Runtime at its stored precision (an int8 export runs its int8 kernels).
    """
    from sp4sc.frontend.audio import ClipLengths
    from sp4sc.frontend.features import LogMel
    from sp4sc.log import logger

    if batch_size < 1:
        raise Sp4scError(f"--batch-size: must be at least 1, got {batch_size}")
    session, cfg, classes, meta = load_onnx(model_path, threads=threads)
    logmel = LogMel(cfg).eval()
    files = [str(f) for f in files]
    lengths = ClipLengths(cfg.n_samples, cfg.sample_rate, pad, crop)
    min_samples = min_clip_samples(cfg, 1)
    rows: dict[int, np.ndarray] = {}
    for group in clip_groups(files, cfg, batch_size, pad, crop, min_samples, lengths):
        with torch.no_grad():
            x = logmel(torch.from_numpy(np.stack([w for _, w in group]))).unsqueeze(1).numpy()  # (b, 1, frames, mels)
        (probs,) = session.run(["probs"], {"logmel": x})
        for (i, _), row in zip(group, probs):
            rows[i] = row
    note = lengths.note()
    if note:
        logger.info("clip length: %s", note)
    if not rows:
        return np.zeros((0, len(classes)), dtype=np.float32), classes
    return np.stack([rows[i] for i in range(len(files))]).astype(np.float32), classes
