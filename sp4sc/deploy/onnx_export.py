"""``export_onnx``: fold, count, check the budget, export to ONNX, check parity, write the folder.

``export_onnx(loaded, out_dir)`` (behind ``sp4sc export``) does, in order:

1. fold BatchNorm and merge the SP4SC blocks (:func:`sp4sc.models.fold.fold_batchnorm`,
   :func:`sp4sc.models.fold.deploy_model`) and count parameters, bytes and MACs on the
   folded model (:func:`sp4sc.deploy.complexity.complexity_report`);
2. check the budget (:func:`sp4sc.deploy.complexity.check_budget`): over budget is a
   :class:`~sp4sc.errors.BudgetExceeded` unless ``no_budget=True``, and then every
   output says so (``"over_budget": true`` in the JSON files and the ONNX metadata);
3. export the graphs (:mod:`sp4sc.deploy.onnx_graph`: ``model.onnx`` and the fp16, int8
   and waveform variants) with the TorchScript-based exporter at opset
   :data:`~sp4sc.deploy.onnx_graph.OPSET`, dynamic batch and frame axes;
4. ``onnx.checker.check_model(full_check=True)``;
5. parity against torch with ONNX Runtime at three or more (batch, frames)
   shapes (:mod:`sp4sc.deploy.onnx_parity`); failing parity is an error;
6. writes the folder atomically (:func:`sp4sc.fileio.atomic_dir`): the models,
   ``frontend.json`` (what the edge runner needs), ``complexity.json`` and
   ``parity.json``. On any error nothing is left.

The names of :mod:`sp4sc.deploy.onnx_graph` and :mod:`sp4sc.deploy.onnx_parity` that callers
used from here are re-exported below.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.fileio import to_plain
from sp4sc.models.fold import DeploySepBlock, deploy_model  # noqa: F401  (re-exported)
from sp4sc.log import logger
from sp4sc.deploy.onnx_graph import (  # noqa: F401  (re-exported)
    FILES,
    INPUT_NAME,
    META_PREFIX,
    OPSET,
    OUTPUT_NAMES,
    WAVEFORM_INPUT_NAME,
    check_model,
    export_fingerprint,
    frontend_graph,
    quantize_int8,
    read_metadata,
    set_metadata,
    to_onnx,
    waveform_model,
    weights_hash,
)
from sp4sc.deploy.onnx_parity import (  # noqa: F401  (re-exported)
    FP16_PROB_TOL,
    FP32_LOGIT_REL_TOL,
    FP32_PROB_TOL,
    WAVEFORM_PROB_TOL,
    compare,
    default_parity_shapes,
    fp16_rounded,
    ort_session,
    parity_inputs,
    summarise,
    torch_reference,
    waveform_parity,
)

FRONTEND_FORMAT = 1  # export/edge_frontend.py FRONTEND_FORMAT

def export_onnx(
    loaded,
    out_dir: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    waveform: bool = False,
    calib: "np.ndarray | None" = None,
    eval_set: "tuple[np.ndarray, list[int] | None] | None" = None,
    no_budget: bool = False,
    overwrite: bool = False,
    parity_shapes: Sequence[tuple[int, int]] | None = None,
    max_macs_per_s: float | None = None,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Fold, count, check the budget, export to ONNX, check parity; write ``out_dir`` atomically.

    Args:
        loaded: a :class:`sp4sc.models.checkpoint.LoadedModel` (``load_model(path)``).
        out_dir: the export folder (must not exist unless ``overwrite``).
        fp16: also write ``model_fp16.onnx`` (parity within 1e-2 on probabilities).
        int8: also write ``model_int8.onnx``: static QDQ int8 (:mod:`sp4sc.deploy.quantize`) calibrated on
            ``calib``; parity against the fp32 graph reported, not gated. With ``waveform`` also
            ``model_waveform_int8.onnx`` (float front end + int8 model).
        waveform: also write ``model_waveform.onnx`` with the log-mel front end in the graph.
        calib: calibration log-mels ``(n, 1, frames, mels)`` (training clips); required with ``int8``.
        eval_set: optional ``(log-mels, labels or None)`` of evaluation clips: int8 vs fp32
            probabilities, top-1 agreement and accuracies on them go into the parity report.
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

    from sp4sc.deploy.complexity import check_budget, complexity_report
    from sp4sc.fileio import atomic_dir
    from sp4sc.models.fold import fold_batchnorm

    t0 = time.perf_counter()
    if int8:
        from sp4sc.deploy.quantize import require_calibration

        require_calibration(calib)
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
    # DCASE counts the bytes of the parameters as stored: a model deployed at int8 is held to the byte
    # limit at int8 (weights 1 B, biases and scales as stored), with no separate parameter limit
    precision = "int8" if int8 else "fp16"
    budget: dict[str, Any] = {"enforced": not no_budget, "within": True, "message": None,
                              "max_macs_per_s": max_macs_per_s, "precision": precision}
    try:
        if int8:
            check_budget(report, max_params=None, max_macs_per_s=max_macs_per_s, precision="int8")
        else:
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
    rows = compare(ort_session(proto), inputs, ref)
    parity["variants"]["fp32"] = summarise(rows, FP32_PROB_TOL, FP32_LOGIT_REL_TOL)
    models["fp32"] = proto

    if fp16:
        p16 = to_onnx(_copy(deployed), cfg.n_mels, trace_frames, half=True, opset=opset)
        set_metadata(p16, {**base_meta, "input": "logmel", "precision": "fp16"})
        check_model(p16, FILES["fp16"])
        # The gate compares with torch running the same float16-rounded weights (the export's fidelity);
        # the effect of rounding the weights to float16 at all is reported beside it ("vs_fp32"): for a
        # trained model it can exceed 1e-2 on some inputs (SP4ASC's weights: up to ~1.5e-2).
        sess16 = ort_session(p16)
        ref16 = torch_reference(fp16_rounded(deployed), inputs)
        summary = summarise(compare(sess16, inputs, ref16), FP16_PROB_TOL)
        summary["reference"] = "torch folded model with its weights rounded to float16 (computed in float32)"
        vs32 = summarise(compare(sess16, inputs, ref), None)
        summary["vs_fp32"] = {k: vs32[k] for k in ("max_abs_prob", "mean_abs_prob", "max_rel_logit", "top1_agreement")}
        parity["variants"]["fp16"] = summary
        models["fp16"] = p16

    if int8:
        from sp4sc.deploy.quantize import int8_initializer_bytes, int8_vs_fp32, quantize_static_int8

        p8 = quantize_static_int8(proto, calib, input_name=INPUT_NAME)
        set_metadata(p8, {**base_meta, "input": "logmel", "precision": "int8", "quantization": "static-qdq",
                          "calibration_clips": str(len(calib))})
        check_model(p8, FILES["int8"])
        sess8 = ort_session(p8)
        summary = summarise(compare(sess8, inputs, ref), None)
        summary["note"] = ("static int8 (QDQ, per-channel weights, calibrated on training clips): parity is reported, "
                           "not gated; 'clips' compares it with the fp32 graph on evaluation clips")
        summary["calibration_clips"] = int(len(calib))
        summary["stored_bytes"] = int8_initializer_bytes(p8)
        if eval_set is not None and len(eval_set[0]):
            summary["clips"] = int8_vs_fp32(ort_session(proto), sess8, eval_set[0], eval_set[1])
        parity["variants"]["int8"] = summary
        models["int8"] = p8
        if waveform:
            pw8 = waveform_model(p8, cfg)
            set_metadata(pw8, {**base_meta, "input": "waveform", "precision": "int8", "quantization": "static-qdq"})
            check_model(pw8, FILES["waveform_int8"])
            models["waveform_int8"] = pw8

    if waveform:
        pw = waveform_model(proto, cfg)
        set_metadata(pw, {**base_meta, "input": "waveform", "precision": "fp32"})
        check_model(pw, FILES["waveform"])
        parity["variants"]["waveform"] = waveform_parity(pw, folded, cfg, shapes)
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
                  "frames_per_clip": cfg.n_frames, "min_frames": min_frames},
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


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(to_plain(obj), indent=2) + "\n")

