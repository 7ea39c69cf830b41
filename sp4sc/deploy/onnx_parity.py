"""Parity of an exported graph with the torch model: ONNX Runtime vs torch at several input shapes.

:func:`parity_inputs` makes log-mel-like inputs (following the folded input
normalisation's statistics when the model has one, so a trained model's softmax
does not saturate and hide differences); :func:`torch_reference` computes the
torch logits in float64; :func:`compare` runs an ONNX Runtime session on the same
inputs and :func:`summarise` gates the differences against a tolerance:

- fp32 graph: probabilities within :data:`FP32_PROB_TOL`, logits within
  :data:`FP32_LOGIT_REL_TOL` of their largest magnitude;
- fp16 graph: probabilities within :data:`FP16_PROB_TOL` of torch running the same
  float16-rounded weights (:func:`fp16_rounded`);
- waveform graph (front end inside, float64 STFT): :func:`waveform_parity`, within
  :data:`WAVEFORM_PROB_TOL` of :class:`sp4sc.frontend.features.LogMel` + the torch model.

:mod:`sp4sc.deploy.onnx_export` applies these at every export and refuses to write a
model that fails.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sp4sc.deploy.onnx_graph import INPUT_NAME, OUTPUT_NAMES, WAVEFORM_INPUT_NAME

FP32_PROB_TOL = 1e-5
FP32_LOGIT_REL_TOL = 1e-4  # logits relative to their largest magnitude: keeps parity honest when probs saturate
FP16_PROB_TOL = 1e-2
WAVEFORM_PROB_TOL = 1e-4  # front end in the graph (float64 STFT) vs LogMel + torch model


def ort_session(model_proto_or_bytes, threads: int = 0, spin: bool = True, profile_prefix: str | None = None):
    """A CPU ONNX Runtime session from a ModelProto, bytes or path (``spin=False``: idle threads do not
    spin between runs, as the edge runner sets it; ``profile_prefix``: ONNX Runtime's per-node profiling on,
    its trace written by ``session.end_profiling()`` to a file starting with that prefix)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model_proto_or_bytes
    if hasattr(src, "SerializeToString"):
        src = src.SerializeToString()
    elif isinstance(src, Path):
        src = str(src)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])



def parity_inputs(n_mels: int, shapes: Sequence[tuple[int, int]], seed: int = 0,
                  model: nn.Module | None = None) -> list[np.ndarray]:
    """Log-mel-like inputs in dB, one ``(batch, 1, frames, mels)`` array per ``(batch, frames)``.

    When ``model`` has a folded input normalisation (``bn0``, a per-mel affine ``x * w + b``),
    the inputs follow its statistics (per-mel mean ``-b / w``, spread ``1 / |w|``) so that a
    trained model sees inputs like its training data and its probabilities do not saturate
    (a saturated softmax would hide differences). Otherwise: a random per-mel profile around
    -45 dB plus noise.
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(-45.0, 10.0, size=(1, 1, 1, n_mels))
    std = np.full((1, 1, 1, n_mels), 6.0)
    bn0 = getattr(model, "bn0", None) if model is not None else None
    w = getattr(bn0, "weight", None)
    b = getattr(bn0, "bias", None)
    if isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.numel() == n_mels and b.numel() == n_mels:
        w64, b64 = w.detach().double().numpy(), b.detach().double().numpy()
        if np.all(np.abs(w64) > 1e-6):
            mean = (-b64 / w64).reshape(1, 1, 1, n_mels)
            std = (1.0 / np.abs(w64)).reshape(1, 1, 1, n_mels)
    return [(mean + std * rng.standard_normal((bsz, 1, f, n_mels))).astype(np.float32) for bsz, f in shapes]


def torch_reference(model: nn.Module, inputs: list[np.ndarray], fn=None) -> list[np.ndarray]:
    """float64 logits of the torch model (or ``fn``) for each input."""
    out = []
    with torch.no_grad():
        for x in inputs:
            out.append((fn or model)(torch.from_numpy(x)).double().numpy())  # (batch, classes)
    return out


def compare(session, inputs: list[np.ndarray], ref_logits: list[np.ndarray],
             input_name: str = INPUT_NAME) -> list[dict[str, Any]]:
    rows = []
    for x, t_logits in zip(inputs, ref_logits):
        t_probs = torch.softmax(torch.from_numpy(t_logits), dim=-1).numpy()
        o_logits, o_probs = session.run(list(OUTPUT_NAMES), {input_name: x})
        scale = max(1.0, float(np.abs(t_logits).max()))
        rows.append({
            "shape": list(x.shape),
            "max_abs_prob": float(np.abs(o_probs - t_probs).max()),
            "mean_abs_prob": float(np.abs(o_probs - t_probs).mean()),
            "max_abs_logit": float(np.abs(o_logits - t_logits).max()),
            "max_rel_logit": float(np.abs(o_logits - t_logits).max() / scale),
            "top1_agreement": float(np.mean(o_probs.argmax(-1) == t_probs.argmax(-1))),
        })
    return rows


def summarise(rows: list[dict[str, Any]], tol: float | None, logit_rel_tol: float | None = None) -> dict[str, Any]:
    out = {
        "max_abs_prob": max(r["max_abs_prob"] for r in rows),
        "mean_abs_prob": float(np.mean([r["mean_abs_prob"] for r in rows])),
        "max_abs_logit": max(r["max_abs_logit"] for r in rows),
        "max_rel_logit": max(r["max_rel_logit"] for r in rows),
        "top1_agreement": float(np.mean([r["top1_agreement"] for r in rows])),
        "prob_tolerance": tol,
        "logit_rel_tolerance": logit_rel_tol,
        "shapes": rows,
    }
    ok = True
    if tol is not None:
        ok &= out["max_abs_prob"] <= tol
    if logit_rel_tol is not None:
        ok &= out["max_rel_logit"] <= logit_rel_tol
    out["passed"] = bool(ok) if tol is not None else None  # None: reported, not gated
    return out


def default_parity_shapes(n_frames: int, min_frames: int = 16) -> list[tuple[int, int]]:
    """Three (batch, frames) shapes: the clip length at batch 1, and two shorter ones at batch 3 and 2."""
    return [(1, n_frames), (3, max(min_frames, n_frames // 2 + 3)), (2, max(min_frames, n_frames // 4 + 1))]


def waveform_parity(proto, folded: nn.Module, cfg, shapes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """ORT waveform model vs :class:`sp4sc.frontend.features.LogMel` + torch model at the same (batch, frames) shapes."""
    from sp4sc.frontend.features import LogMel

    logmel = LogMel(cfg).eval()
    rng = np.random.default_rng(1)
    inputs = []
    for b, f in shapes:
        n = max(cfg.n_fft, (f - 1) * cfg.hop_length)
        envelope = np.exp(rng.normal(0.0, 1.0, size=(b, 1))) * 0.05
        inputs.append((rng.standard_normal((b, n)) * envelope).astype(np.float32))  # (batch, samples)

    def torch_fn(w: torch.Tensor) -> torch.Tensor:
        return folded(logmel(w).unsqueeze(1))  # (batch, 1, frames, mels) -> logits

    ref = torch_reference(folded, inputs, torch_fn)
    rows = compare(ort_session(proto), inputs, ref, input_name=WAVEFORM_INPUT_NAME)
    out = summarise(rows, WAVEFORM_PROB_TOL, FP32_LOGIT_REL_TOL * 10)
    out["reference"] = "sp4sc.frontend.features.LogMel + torch folded model"
    return out


def fp16_rounded(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose parameters and buffers are rounded to float16."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return m.eval()

