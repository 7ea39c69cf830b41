"""The exported ONNX graphs: the logmel model, its float16, int8 and waveform variants, and their metadata.

The exported graph (``model.onnx``):

- input ``logmel`` float32 ``(batch, 1, frames, mels)``: the library's log-mel
  (:class:`sp4sc.frontend.features.LogMel`) with the settings in ``frontend.json``;
- outputs ``logits`` float32 ``(batch, classes)`` and ``probs`` float32
  ``(batch, classes)`` (softmax of the logits, computed in the graph so the edge
  side needs no maths of its own).

Variants: ``model_fp16.onnx`` (weights and compute in float16, float32 input and
outputs, :func:`to_onnx` with ``half=True``), ``model_int8.onnx`` (static QDQ int8,
:mod:`sp4sc.deploy.quantize`; :func:`quantize_int8` is ONNX Runtime's dynamic
quantization, kept for comparison only), ``model_waveform.onnx`` (input
``waveform`` float32 ``(batch, samples)`` at the front end's rate; the log-mel front
end is in the graph, :func:`waveform_model`: reflect padding, the ONNX ``STFT`` op
in float64, mel ``MatMul``, log).

Every model carries ONNX metadata (``metadata_props``) ``sp4sc.fingerprint``
(:func:`export_fingerprint`): a hash of the folded weights, the front end's digest,
the class names and the model name. ``frontend.json`` repeats it; the edge runner
refuses a model whose fingerprint differs from its ``frontend.json``.

Nothing here checks parity (:mod:`sp4sc.deploy.onnx_parity`) or writes files
(:mod:`sp4sc.deploy.onnx_export`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from sp4sc.errors import Sp4scError

OPSET = 17  # STFT needs >= 17; ONNX Runtime 1.18+ runs it on the CPU
INPUT_NAME = "logmel"
WAVEFORM_INPUT_NAME = "waveform"
OUTPUT_NAMES = ("logits", "probs")
META_PREFIX = "sp4sc."

FILES = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8.onnx",
    "waveform": "model_waveform.onnx",
    "waveform_int8": "model_waveform_int8.onnx",
}


class _ExportHead(nn.Module):
    """The graph that is exported: backbone logits and their softmax, float32 in and out.

    Args:
        backbone: the folded model, ``(batch, 1, frames, mels)`` -> logits.
        half: run the backbone in float16 (its weights must be float16).
    """

    def __init__(self, backbone: nn.Module, half: bool = False):
        super().__init__()
        self.backbone = backbone
        self.half = half

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (batch, 1, frames, mels) float32
        if self.half:
            x = x.half()
        logits = self.backbone(x).float()  # (batch, classes)
        return logits, torch.softmax(logits, dim=-1)  # (batch, classes) twice


# ---------------------------------------------------------------- fingerprint

def weights_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_fingerprint(weights_sha: str, frontend_digest: str, classes: Sequence[str], model_name: str) -> str:
    """The fingerprint shared by every file of one export (ONNX metadata and ``frontend.json``)."""
    doc = json.dumps(
        {"weights": weights_sha, "frontend": frontend_digest, "classes": list(classes), "model": model_name},
        sort_keys=True,
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def set_metadata(model_proto, meta: dict[str, str]) -> None:
    """Replace the ``sp4sc.*`` entries of an ONNX model's ``metadata_props``."""
    keep = [p for p in model_proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model_proto.metadata_props.add(key=META_PREFIX + k, value=str(v))


def read_metadata(model_proto) -> dict[str, str]:
    """The ``sp4sc.*`` metadata of an ONNX model, without the prefix."""
    return {p.key[len(META_PREFIX):]: p.value for p in model_proto.metadata_props if p.key.startswith(META_PREFIX)}


# ---------------------------------------------------------------- graphs

def to_onnx(backbone: nn.Module, n_mels: int, frames: int, *, half: bool = False, opset: int = OPSET):
    """Export ``backbone`` (logmel -> logits) as an ONNX ``ModelProto`` with logits and probs outputs.

    Dynamic axes: batch and frames. Uses the TorchScript-based exporter
    (``dynamo=False``): it needs no onnxscript and handles these plain CNNs.
    """
    import onnx

    head = _ExportHead(backbone.half() if half else backbone, half=half).eval()
    example = torch.zeros(1, 1, frames, n_mels)  # (batch, 1, frames, mels)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        with torch.no_grad():
            torch.onnx.export(
                head, (example,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "frames"}, "logits": {0: "batch"}, "probs": {0: "batch"}},
            )
    return onnx.load_from_string(buf.getvalue())


def frontend_graph(cfg, opset: int = OPSET):
    """ONNX model: ``waveform`` ``(batch, samples)`` -> ``logmel`` ``(batch, 1, frames, mels)``.

    The definition of :class:`sp4sc.frontend.features.LogMel`: reflect padding of n_fft // 2,
    periodic Hann window centred in n_fft, ``STFT`` (float64, one-sided), power,
    mel ``MatMul`` (float32), ``10 * log10(max(P, amin))``.
    """
    from onnx import TensorProto, helper, numpy_helper

    from sp4sc.frontend.features import mel_filterbank

    if getattr(cfg, "style", "librosa") != "librosa":
        raise Sp4scError(f"front end {cfg.name!r} ({cfg.style} style) has no ONNX waveform graph; export without "
                         "the waveform model and compute its log-mels with sp4sc.frontend.features.LogMel")

    n = np.arange(cfg.win_length)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)  # periodic Hann
    left = (cfg.n_fft - cfg.win_length) // 2
    win = np.pad(win, (left, cfg.n_fft - cfg.win_length - left)).astype(np.float64)
    pad = cfg.n_fft // 2
    inits = [
        numpy_helper.from_array(np.array([0, pad, 0, pad], dtype=np.int64), "fe_pads"),
        numpy_helper.from_array(np.array(cfg.hop_length, dtype=np.int64), "fe_hop"),
        numpy_helper.from_array(win, "fe_window"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "fe_last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "fe_axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "fe_axis2"),
        numpy_helper.from_array(mel_filterbank(cfg).astype(np.float32), "fe_mel_fb"),
        numpy_helper.from_array(np.array(cfg.amin, dtype=np.float32), "fe_amin"),
        numpy_helper.from_array(np.array(10.0 / math.log(10.0), dtype=np.float32), "fe_db"),
    ]
    nodes = [
        helper.make_node("Cast", [WAVEFORM_INPUT_NAME], ["fe_x64"], to=TensorProto.DOUBLE),
        helper.make_node("Pad", ["fe_x64", "fe_pads"], ["fe_padded"], mode="reflect"),  # (batch, samples + n_fft)
        helper.make_node("Unsqueeze", ["fe_padded", "fe_axis2"], ["fe_signal"]),  # (batch, samples + n_fft, 1)
        helper.make_node("STFT", ["fe_signal", "fe_hop", "fe_window"], ["fe_stft"], onesided=1),  # (batch, frames, bins, 2)
        helper.make_node("Mul", ["fe_stft", "fe_stft"], ["fe_sq"]),
        helper.make_node("ReduceSum", ["fe_sq", "fe_last_axis"], ["fe_power64"], keepdims=0),  # (batch, frames, bins)
        helper.make_node("Cast", ["fe_power64"], ["fe_power"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["fe_power", "fe_mel_fb"], ["fe_mel"]),  # (batch, frames, mels)
        helper.make_node("Max", ["fe_mel", "fe_amin"], ["fe_clamped"]),
        helper.make_node("Log", ["fe_clamped"], ["fe_ln"]),
        helper.make_node("Mul", ["fe_ln", "fe_db"], ["fe_db_out"]),
        helper.make_node("Unsqueeze", ["fe_db_out", "fe_axis1"], [INPUT_NAME]),  # (batch, 1, frames, mels)
    ]
    graph = helper.make_graph(
        nodes, "sp4sc_logmel",
        [helper.make_tensor_value_info(WAVEFORM_INPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, "frames", cfg.n_mels])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def waveform_model(logmel_model, cfg):
    """Prepend the log-mel front end graph to an exported logmel model."""
    import onnx

    fe = frontend_graph(cfg, opset=_opset_of(logmel_model))
    fe.ir_version = logmel_model.ir_version
    return onnx.compose.merge_models(fe, logmel_model, io_map=[(INPUT_NAME, INPUT_NAME)], name="sp4sc_waveform")


def _opset_of(model_proto) -> int:
    return next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(model_proto):
    """ONNX Runtime *dynamic* quantization (uint8 Conv weights, activations quantised at run time).

    Not what ``sp4sc export --int8`` writes (static QDQ, :mod:`sp4sc.deploy.quantize`); kept as the
    ``int8-dynamic`` row of ``sp4sc bench infer``: several times slower than fp32 for these CNNs.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model_proto, src)
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            quantize_dynamic(src, dst, weight_type=QuantType.QUInt8, per_channel=False)
        return onnx.load(dst)


@contextlib.contextmanager
def _quiet_root_logger():
    """Silence ``logging.warning(...)`` advice from onnxruntime.quantization without leaving a root handler."""
    root = logging.getLogger()
    null = logging.NullHandler()
    root.addHandler(null)  # keeps logging.warning() from calling basicConfig()
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.removeHandler(null)


def check_model(model_proto, what: str) -> None:
    """``onnx.checker.check_model(full_check=True)`` with a one-line error."""
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Sp4scError(f"{what}: ONNX checker failed ({first[:300]})") from exc

