"""ONNX export of a folded model, with a budget check and a parity report.

``export_onnx(loaded, out_dir)`` (behind ``sp4sc export``) does, in order:

1. fold BatchNorm (:func:`sp4sc.fold.fold_batchnorm`) and count parameters,
   bytes and MACs on the folded model (:func:`sp4sc.complexity.complexity_report`);
2. check the budget (:func:`sp4sc.complexity.check_budget`): over budget is a
   :class:`~sp4sc.errors.BudgetExceeded` unless ``no_budget=True``, and then every
   output says so (``"over_budget": true`` in the JSON files and the ONNX metadata);
3. export the folded model with the TorchScript-based exporter at opset
   :data:`OPSET`, dynamic batch and frame axes;
4. ``onnx.checker.check_model(full_check=True)``;
5. parity against torch with ONNX Runtime at three or more (batch, frames)
   shapes: probabilities within 1e-5 (fp32) and 1e-2 (fp16); failing parity is an error;
6. writes the folder atomically (:func:`sp4sc.fileio.atomic_dir`): on any error
   nothing is left.

The exported graph (``model.onnx``):

- input ``logmel`` float32 ``(batch, 1, frames, mels)``: the library's log-mel
  (:class:`sp4sc.features.LogMel`) with the settings in ``frontend.json``;
- outputs ``logits`` float32 ``(batch, classes)`` and ``probs`` float32
  ``(batch, classes)`` (softmax of the logits, computed in the graph so the edge
  side needs no maths of its own).

Variants: ``model_fp16.onnx`` (weights and compute in float16, float32 input and
outputs), ``model_int8.onnx`` (ONNX Runtime dynamic quantization: int8 weights,
activations quantized per call), ``model_waveform.onnx`` (input ``waveform``
float32 ``(batch, samples)`` at the front end's rate; the log-mel front end is in
the graph: reflect padding, the ONNX ``STFT`` op in float64, mel ``MatMul``, log).

Every model carries ONNX metadata (``metadata_props``) ``sp4sc.fingerprint``: a
hash of the folded weights, the front end's digest, the class names and the
model name. ``frontend.json`` repeats it; the edge runner refuses a model whose
fingerprint differs from its ``frontend.json`` (a file from another export).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.fileio import to_plain
from sp4sc.log import logger

OPSET = 17  # STFT needs >= 17; ONNX Runtime 1.18+ runs it on the CPU
INPUT_NAME = "logmel"
WAVEFORM_INPUT_NAME = "waveform"
OUTPUT_NAMES = ("logits", "probs")
FRONTEND_FORMAT = 1  # export/edge_frontend.py FRONTEND_FORMAT
META_PREFIX = "sp4sc."
FP32_PROB_TOL = 1e-5
FP32_LOGIT_REL_TOL = 1e-4  # logits relative to their largest magnitude: keeps parity honest when probs saturate
FP16_PROB_TOL = 1e-2
WAVEFORM_PROB_TOL = 1e-4  # front end in the graph (float64 STFT) vs LogMel + torch model

FILES = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8.onnx",
    "waveform": "model_waveform.onnx",
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


class DeploySepBlock(nn.Module):
    """A folded SP4SC block rewritten for inference: the same function in fewer, larger ops.

    The two 3-tap dilated depthwise convolutions (time and mel) share their centre
    tap and sum into one plus-shaped 5x5 depthwise kernel; in the first block
    (one input channel) the 1x1 convolution is merged in too, giving one dense
    1 -> C 5x5 convolution. ONNX Runtime then runs Conv+ReLU fused and skips the
    two full-size intermediate tensors and the Add (about 2x faster at the sp4asc
    front end on 2 cores). Parity against the folded torch model is checked at
    every export.

    Args:
        block: a folded :class:`sp4sc.models.sp4sc.SepBlock`.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        kernel = block.plus_kernel().detach().clone()  # (C, 1, 5, 5)
        bias = block.sp_conv2.bias.detach().clone() if block.sp_conv2.bias is not None else None
        channels, pad = kernel.shape[0], kernel.shape[-1] // 2
        pointwise = block.ch_conv1
        if pointwise.in_channels == 1:
            self.pointwise = None
            self.conv = nn.Conv2d(1, channels, kernel.shape[-1], padding=pad, bias=bias is not None)
            merged = kernel * pointwise.weight.detach()  # (C, 1, 5, 5) * (C, 1, 1, 1)
        else:
            self.pointwise = nn.Conv2d(pointwise.in_channels, channels, 1, bias=False)
            self.pointwise.weight.data.copy_(pointwise.weight.detach())
            self.conv = nn.Conv2d(channels, channels, kernel.shape[-1], padding=pad, groups=channels,
                                  bias=bias is not None)
            merged = kernel
        self.conv.weight.data.copy_(merged)
        if bias is not None:
            self.conv.bias.data.copy_(bias)
        self.pool = block.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, cin, frames, mels)
        if self.pointwise is not None:
            x = self.pointwise(x)  # (batch, C, frames, mels)
        x = torch.relu(self.conv(x))  # (batch, C, frames, mels)
        return self.pool(x)  # (batch, C, frames // 2, mels // 2)


def deploy_model(folded: nn.Module) -> nn.Module:
    """A copy of a folded model with its SP4SC blocks replaced by :class:`DeploySepBlock` (others unchanged)."""
    import copy

    from sp4sc.models.sp4sc import SepBlock

    model = copy.deepcopy(folded).eval()
    for name, child in list(model.named_modules()):
        for sub_name, sub in list(child.named_children()):
            if isinstance(sub, SepBlock) and sub.folded and isinstance(sub.bn, nn.Identity):
                setattr(child, sub_name, DeploySepBlock(sub).eval())
    return model


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


# ---------------------------------------------------------------- export

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

    The definition of :class:`sp4sc.features.LogMel`: reflect padding of n_fft // 2,
    periodic Hann window centred in n_fft, ``STFT`` (float64, one-sided), power,
    mel ``MatMul`` (float32), ``10 * log10(max(P, amin))``.
    """
    from onnx import TensorProto, helper, numpy_helper

    from sp4sc.features import mel_filterbank

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
    """ONNX Runtime dynamic quantization: int8 weights (uint8 for Conv, which ORT's CPU ConvInteger needs)."""
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


# ---------------------------------------------------------------- checks

def ort_session(model_proto_or_bytes, threads: int = 0):
    """A CPU ONNX Runtime session from a ModelProto, bytes or path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = model_proto_or_bytes
    if hasattr(src, "SerializeToString"):
        src = src.SerializeToString()
    elif isinstance(src, Path):
        src = str(src)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def check_model(model_proto, what: str) -> None:
    """``onnx.checker.check_model(full_check=True)`` with a one-line error."""
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Sp4scError(f"{what}: ONNX checker failed ({first[:300]})") from exc


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


def _compare(session, inputs: list[np.ndarray], ref_logits: list[np.ndarray],
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


def _summary(rows: list[dict[str, Any]], tol: float | None, logit_rel_tol: float | None = None) -> dict[str, Any]:
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


# ---------------------------------------------------------------- the export

def export_onnx(
    loaded,
    out_dir: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    waveform: bool = False,
    no_budget: bool = False,
    overwrite: bool = False,
    parity_shapes: Sequence[tuple[int, int]] | None = None,
    max_macs_per_s: float | None = None,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Fold, count, check the budget, export to ONNX, check parity; write ``out_dir`` atomically.

    Args:
        loaded: a :class:`sp4sc.checkpoint.LoadedModel` (``load_model(path)``).
        out_dir: the export folder (must not exist unless ``overwrite``).
        fp16: also write ``model_fp16.onnx`` (parity within 1e-2 on probabilities).
        int8: also write ``model_int8.onnx`` (dynamic quantization; parity reported, not gated).
        waveform: also write ``model_waveform.onnx`` with the log-mel front end in the graph.
        no_budget: export an over-budget model anyway, marked ``over_budget`` everywhere.
        overwrite: replace an existing ``out_dir`` (only once the new one is complete).
        parity_shapes: ``(batch, frames)`` pairs (at least three); default
            :func:`default_parity_shapes` of the front end's clip length.
        max_macs_per_s: optional MAC budget per second of audio (DCASE 2022+: 30e6).
        opset: ONNX opset (default :data:`OPSET`).

    Returns:
        The report: ``{"out", "files", "fingerprint", "complexity", "budget", "parity", "over_budget", "seconds"}``.

    Raises:
        BudgetExceeded: over budget and not ``no_budget``.
        Sp4scError: the checker or the parity check failed (nothing is written).
    """
    import onnx
    import onnxruntime

    from sp4sc.complexity import check_budget, complexity_report
    from sp4sc.fileio import atomic_dir
    from sp4sc.fold import fold_batchnorm

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise Sp4scError(f"{out_dir} already exists; pass --force to replace it")
    cfg = loaded.frontend
    classes = [str(c) for c in loaded.classes]
    if not classes:
        raise Sp4scError(f"{out_dir}: the model file lists no class names; save it with model_spec(..., classes)")
    folded = fold_batchnorm(loaded.model).float().eval()

    # complexity and budget
    report = complexity_report(folded, cfg)
    budget: dict[str, Any] = {"enforced": not no_budget, "within": True, "message": None,
                              "max_macs_per_s": max_macs_per_s}
    try:
        check_budget(report, max_macs_per_s=max_macs_per_s)
    except BudgetExceeded as exc:
        if not no_budget:
            raise
        budget.update(within=False, message=f"exported with --no-budget although over budget: {exc}")
        logger.warning("%s", budget["message"])
    over_budget = not budget["within"]

    # fingerprint
    digest = cfg.digest()
    wsha = weights_hash(folded)
    fingerprint = export_fingerprint(wsha, digest, classes, loaded.name)
    base_meta = {
        "fingerprint": fingerprint,
        "frontend_digest": digest,
        "classes": json.dumps(classes),
        "model": loaded.name,
        "model_kwargs": json.dumps(loaded.model_kwargs, sort_keys=True),
        "weights_sha256": wsha,
        "over_budget": "true" if over_budget else "false",
        "outputs": "logits,probs",
    }
    try:
        import sp4sc

        base_meta["version"] = sp4sc.__version__
    except AttributeError:  # pragma: no cover
        pass

    min_frames = int(getattr(folded, "min_frames", 16))
    shapes = [tuple(int(v) for v in s) for s in (parity_shapes or default_parity_shapes(cfg.n_frames, min_frames))]
    if len(shapes) < 3:
        raise Sp4scError(f"parity_shapes: need at least three (batch, frames) shapes, got {shapes}")
    inputs = parity_inputs(cfg.n_mels, shapes, model=folded)
    ref = torch_reference(folded, inputs)
    trace_frames = 4 * min_frames  # any length: the frame axis is dynamic

    models: dict[str, Any] = {}
    parity: dict[str, Any] = {
        "opset": opset, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        "reference": "torch folded float32 model, softmax in float64", "inputs": "synthetic log-mel dB (seeded), following the folded input normalisation's per-mel statistics when the model has one",
        "over_budget": over_budget, "variants": {},
    }

    # fp32
    deployed = deploy_model(folded)
    proto = to_onnx(_copy(deployed), cfg.n_mels, trace_frames, opset=opset)
    set_metadata(proto, {**base_meta, "input": "logmel", "precision": "fp32"})
    check_model(proto, FILES["fp32"])
    rows = _compare(ort_session(proto), inputs, ref)
    parity["variants"]["fp32"] = _summary(rows, FP32_PROB_TOL, FP32_LOGIT_REL_TOL)
    models["fp32"] = proto

    if fp16:
        p16 = to_onnx(_copy(deployed), cfg.n_mels, trace_frames, half=True, opset=opset)
        set_metadata(p16, {**base_meta, "input": "logmel", "precision": "fp16"})
        check_model(p16, FILES["fp16"])
        # The gate compares with torch running the same float16-rounded weights (the export's fidelity);
        # the effect of rounding the weights to float16 at all is reported beside it ("vs_fp32"): for a
        # trained model it can exceed 1e-2 on some inputs (SP4ASC's weights: up to ~1.5e-2).
        sess16 = ort_session(p16)
        ref16 = torch_reference(_fp16_rounded(deployed), inputs)
        summary = _summary(_compare(sess16, inputs, ref16), FP16_PROB_TOL)
        summary["reference"] = "torch folded model with its weights rounded to float16 (computed in float32)"
        vs32 = _summary(_compare(sess16, inputs, ref), None)
        summary["vs_fp32"] = {k: vs32[k] for k in ("max_abs_prob", "mean_abs_prob", "max_rel_logit", "top1_agreement")}
        parity["variants"]["fp16"] = summary
        models["fp16"] = p16

    if int8:
        p8 = quantize_int8(proto)
        set_metadata(p8, {**base_meta, "input": "logmel", "precision": "int8"})
        check_model(p8, FILES["int8"])
        summary = _summary(_compare(ort_session(p8), inputs, ref), None)
        summary["note"] = ("int8 parity is reported, not gated; accuracy on real data is not measured here "
                           "(measure it with `sp4sc infer`/edge_infer.py on labelled clips)")
        parity["variants"]["int8"] = summary
        models["int8"] = p8

    if waveform:
        pw = waveform_model(proto, cfg)
        set_metadata(pw, {**base_meta, "input": "waveform", "precision": "fp32"})
        check_model(pw, FILES["waveform"])
        parity["variants"]["waveform"] = _waveform_parity(pw, folded, cfg, shapes)
        models["waveform"] = pw

    failed = [k for k, v in parity["variants"].items() if v["passed"] is False]
    if failed:
        detail = "; ".join(
            f"{k}: max |dprob| {parity['variants'][k]['max_abs_prob']:.2e} (tol {parity['variants'][k]['prob_tolerance']:g}), "
            f"max rel dlogit {parity['variants'][k]['max_rel_logit']:.2e}"
            for k in failed
        )
        raise Sp4scError(f"{out_dir}: ONNX Runtime disagrees with torch ({detail}); nothing was written")

    frontend_doc = {
        "format": FRONTEND_FORMAT,
        "frontend": cfg.to_dict(),
        "frontend_digest": digest,
        "classes": classes,
        "fingerprint": fingerprint,
        "model": loaded.name,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, "frames", cfg.n_mels], "dtype": "float32",
                  "frames_per_clip": cfg.n_frames},
        "waveform_input": ({"name": WAVEFORM_INPUT_NAME, "shape": ["batch", "samples"], "dtype": "float32",
                            "samples_per_clip": cfg.n_samples} if waveform else None),
        "outputs": {"logits": ["batch", len(classes)], "probs": ["batch", len(classes)]},
        "over_budget": over_budget,
    }
    complexity_doc = {**to_plain(report), "budget": budget, "over_budget": over_budget, "model": loaded.name,
                      "fingerprint": fingerprint}
    files = {k: FILES[k] for k in models}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for key, proto_k in models.items():
            onnx.save(proto_k, tmp / FILES[key])
        _write_json(tmp / "frontend.json", frontend_doc)
        _write_json(tmp / "complexity.json", complexity_doc)
        _write_json(tmp / "parity.json", parity)
    sizes = {k: (out_dir / f).stat().st_size for k, f in files.items()}
    return {
        "out": str(out_dir),
        "files": files,
        "file_bytes": sizes,
        "fingerprint": fingerprint,
        "complexity": complexity_doc,
        "budget": budget,
        "parity": parity,
        "over_budget": over_budget,
        "seconds": time.perf_counter() - t0,
    }


def _waveform_parity(proto, folded: nn.Module, cfg, shapes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """ORT waveform model vs :class:`sp4sc.features.LogMel` + torch model at the same (batch, frames) shapes."""
    from sp4sc.features import LogMel

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
    rows = _compare(ort_session(proto), inputs, ref, input_name=WAVEFORM_INPUT_NAME)
    out = _summary(rows, WAVEFORM_PROB_TOL, FP32_LOGIT_REL_TOL * 10)
    out["reference"] = "sp4sc.features.LogMel + torch folded model"
    return out


def _fp16_rounded(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose parameters and buffers are rounded to float16."""
    m = _copy(model)
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return m.eval()


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(to_plain(obj), indent=2) + "\n")


# ---------------------------------------------------------------- `sp4sc demo` steps
# Registered in sp4sc/commands/demo.py (STEPS) after "evaluate", which sets ctx["model_file"].
# Each step reads what it needs from ctx, reports with ctx["echo"] and adds rows to ctx["summary"].

def demo_step_fold(ctx: dict) -> None:
    """Fold BatchNorm of the trained model; check folded == unfolded on toy log-mels."""
    from sp4sc.checkpoint import load_model
    from sp4sc.fold import fold_batchnorm

    loaded = load_model(ctx["model_file"])
    folded = fold_batchnorm(loaded.model)
    cfg = loaded.frontend
    x = torch.from_numpy(_demo_features(ctx, loaded, n=4))  # (4, 1, frames, mels)
    with torch.no_grad():
        a, b = loaded.model(x).double(), folded(x).double()
    rel = float((a - b).abs().max() / max(1.0, float(a.abs().max())))
    ctx["loaded"], ctx["folded"] = loaded, folded
    ctx["echo"](f"folded {loaded.name}: no BatchNorm left; folded vs unfolded logits on {x.shape[0]} toy clips "
                f"({cfg.n_frames} frames x {cfg.n_mels} mels): max relative difference {rel:.1e}")
    if rel > 1e-5:
        raise Sp4scError(f"folding changed the model's output (relative {rel:.1e} > 1e-5); report this as a bug")
    ctx["summary"].append(("fold: max rel. logit change", f"{rel:.1e}"))


def demo_step_budget(ctx: dict) -> None:
    """Count parameters, bytes and MACs of the folded model; check the DCASE 2021 budget."""
    from sp4sc.checkpoint import load_model
    from sp4sc.complexity import check_budget, complexity_report, format_report

    loaded = ctx.get("loaded") or load_model(ctx["model_file"])
    report = complexity_report(loaded.model, loaded.frontend)
    for line in format_report(report).splitlines():
        ctx["echo"](line)
    check_budget(report)  # BudgetExceeded stops the demo: over budget is an error
    ctx["complexity"] = report
    ctx["echo"]("within the DCASE 2021 budget (65,536 parameters, 128 KB at fp16)")
    ctx["summary"].append(("parameters (folded)", f"{report['params']:,}"))
    ctx["summary"].append(("bytes at fp16 (folded)", f"{report['bytes_fp16']:,} ({report['kb_fp16']} KB)"))
    if report.get("macs_thop") is not None:
        ctx["summary"].append((f"MACs per {report['duration']:g} s clip (thop / torchinfo)",
                               f"{report['macs_thop']:,} / {report['macs_torchinfo']:,}"))


def demo_step_export(ctx: dict) -> None:
    """Export to ONNX (fp32 + fp16) with the parity check, into <out>/export."""
    from sp4sc.checkpoint import load_model

    loaded = ctx.get("loaded") or load_model(ctx["model_file"])
    out = Path(ctx["out"]) / "export"
    report = export_onnx(loaded, out, fp16=True, overwrite=True)
    ctx["export"] = report
    ctx["export_dir"] = out
    for key, name in report["files"].items():
        ctx["echo"](f"wrote {out / name} ({report['file_bytes'][key]:,} bytes)")
    ctx["echo"](f"fingerprint {report['fingerprint']} (ONNX metadata and frontend.json)")
    ctx["summary"].append(("ONNX export", f"{out} ({', '.join(report['files'].values())})"))


def demo_step_parity(ctx: dict) -> None:
    """Report the export's parity check: ONNX Runtime vs torch at three (batch, frames) shapes."""
    report = ctx.get("export")
    if report is None:
        ctx["echo"]("no export in this run (step skipped); nothing to compare")
        return
    for name, v in report["parity"]["variants"].items():
        shapes = ", ".join("x".join(str(d) for d in r["shape"]) for r in v["shapes"])
        ctx["echo"](f"{name}: max |dprob| {v['max_abs_prob']:.1e} (tolerance {v['prob_tolerance']:g}) "
                    f"at inputs {shapes}: {'ok' if v['passed'] else 'FAILED'}")
        ctx["summary"].append((f"parity ONNX {name} (max |dprob|)", f"{v['max_abs_prob']:.1e}"))


def demo_step_edge(ctx: dict) -> None:
    """Run the torch-free edge runner on two toy evaluation clips; compare with sp4sc infer."""
    import subprocess
    import sys

    from sp4sc.infer import predict_files

    out = ctx.get("export_dir")
    script = Path(__file__).resolve().parents[1] / "export" / "edge_infer.py"
    if out is None or not script.exists():
        ctx["echo"]("skipped: " + ("no export in this run" if out is None else f"{script} not found (not a checkout)"))
        return
    files = _demo_clips(ctx, 2)
    cmd = [sys.executable, str(script), "--model", str(out / FILES["fp32"]), "--json", *files]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise Sp4scError(f"edge runner failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    edge = json.loads(res.stdout)
    probs = np.asarray(edge["probs"])
    ref = predict_files(ctx.get("loaded") or _load(ctx), files)
    diff = float(np.abs(probs - ref).max())
    ctx["echo"](f"$ python export/edge_infer.py --model {out / FILES['fp32']} --json <2 clips>")
    for f, row in zip(edge["files"], probs):
        k = int(row.argmax())
        ctx["echo"](f"  {Path(f).name}: {edge['classes'][k]} ({row[k]:.3f})")
    ctx["echo"](f"edge runner (numpy + ONNX Runtime, no torch) vs sp4sc infer: max |dprob| {diff:.1e}")
    if diff > 1e-4:
        raise Sp4scError(f"edge runner and sp4sc infer disagree (max |dprob| {diff:.1e} > 1e-4)")
    ctx["summary"].append(("edge runner vs sp4sc infer (max |dprob|)", f"{diff:.1e}"))


def demo_steps() -> list[tuple[str, Any, str]]:
    """The export developer's ``sp4sc demo`` steps, in order: ``(name, function, description)``."""
    return [
        ("fold", demo_step_fold, "fold BatchNorm; folded == unfolded"),
        ("budget", demo_step_budget, "parameters, bytes, MACs; DCASE 2021 budget check"),
        ("export", demo_step_export, "ONNX export (fp32 + fp16) with parity check"),
        ("parity", demo_step_parity, "ONNX Runtime vs torch at three shapes"),
        ("edge", demo_step_edge, "torch-free edge runner on two clips vs sp4sc infer"),
    ]


def _load(ctx: dict):
    from sp4sc.checkpoint import load_model

    ctx["loaded"] = load_model(ctx["model_file"])
    return ctx["loaded"]


def _demo_clips(ctx: dict, n: int) -> list[str]:
    """The first ``n`` clips of the toy evaluation split (absolute paths)."""
    from sp4sc.data.index import load_index

    index = load_index("tau2020", ctx["toy_root"], check_audio=False)
    clips = index.split("test")[:n]
    return [str(Path(index.root) / c.path) for c in clips]


def _demo_features(ctx: dict, loaded, n: int) -> np.ndarray:
    """Log-mels ``(n, 1, frames, mels)`` of the first toy evaluation clips."""
    from sp4sc.audio import load_audio
    from sp4sc.features import LogMel

    cfg = loaded.frontend
    wav = np.stack([load_audio(f, cfg.sample_rate, cfg.duration) for f in _demo_clips(ctx, n)])
    with torch.no_grad():
        return LogMel(cfg)(torch.from_numpy(wav)).unsqueeze(1).numpy()
