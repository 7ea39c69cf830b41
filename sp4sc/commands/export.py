"""``sp4sc export --ckpt C --out DIR``: fold, check the budget, export ONNX, check parity.

See :mod:`sp4sc.deploy.onnx_export` for what is written and checked.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="model file (sp4sc save_model) or Lightning checkpoint")
    parser.add_argument("--out", required=True, help="export folder to create (written atomically)")
    parser.add_argument("--fp16", action="store_true", help="also write model_fp16.onnx (float16 weights and compute)")
    parser.add_argument("--int8", action="store_true",
                        help="also write model_int8.onnx: static int8 (QDQ, per-channel int8 weights, int8 activations) "
                             "calibrated on training clips; needs calibration data (see --calib-data)")
    parser.add_argument("--calib", type=int, default=None, metavar="N",
                        help="calibration clips for --int8, class-balanced, deterministic (default 300)")
    parser.add_argument("--calib-data", default=None, metavar="ROOT",
                        help="dataset root of the training clips to calibrate on (default: the data a Lightning "
                             "checkpoint records)")
    parser.add_argument("--calib-dataset", default=None, choices=("esc", "tau2020", "tau2022"),
                        help="layout of --calib-data (default: the checkpoint's)")
    parser.add_argument("--calib-fold", type=int, default=None,
                        help="esc: the validation fold, left out of calibration and used for the int8 report (default: the "
                             "checkpoint's, else 1)")
    parser.add_argument("--eval-clips", type=int, default=None, metavar="N",
                        help="evaluation clips for the int8-vs-fp32 report (default 400; 0: none)")
    parser.add_argument("--waveform", action="store_true",
                        help="also write model_waveform.onnx: waveform input, log-mel front end inside the graph")
    parser.add_argument("--no-budget", action="store_true",
                        help="export even if over the complexity budget (the outputs then say so); with --int8 the "
                             "budget is 128 KB of parameters as stored at int8, with no separate parameter limit")
    parser.add_argument("--max-macs-per-s", type=float, default=None,
                        help="also enforce a MAC budget per second of audio (DCASE 2022+: 30e6)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (once the new one is complete)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.onnx_export import export_onnx

    loaded = load_model(args.ckpt)
    calib = eval_set = None
    if args.int8:
        calib, eval_set = int8_data(args, loaded)
    report = export_onnx(
        loaded, args.out, fp16=args.fp16, int8=args.int8, waveform=args.waveform, no_budget=args.no_budget,
        overwrite=args.force, max_macs_per_s=args.max_macs_per_s, calib=calib, eval_set=eval_set,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(summary_lines(report))
    return 0


def int8_data(args: argparse.Namespace, loaded):
    """Calibration log-mels and the evaluation set ``(log-mels, labels)`` for ``--int8``."""
    from sp4sc.deploy.quantize import (
        CALIB_DEFAULT, EVAL_CLIPS_DEFAULT, calibration_clips, clip_features, data_from_checkpoint,
        require_calibration, split_clips,
    )
    from sp4sc.errors import Sp4scError
    from sp4sc.log import logger

    data = data_from_checkpoint(args.ckpt) or {}
    if args.calib_data:
        data = {"dataset": args.calib_dataset or data.get("dataset"), "root": args.calib_data,
                "fold": data.get("fold") if args.calib_dataset in (None, data.get("dataset")) else None}
        if not data["dataset"]:
            raise Sp4scError("--calib-data: also pass --calib-dataset esc|tau2020|tau2022 (the layout of the folder)")
    if args.calib_fold is not None:
        data["fold"] = args.calib_fold
    if not data.get("root"):
        require_calibration(None)
    n = CALIB_DEFAULT if args.calib is None else args.calib
    n_eval = EVAL_CLIPS_DEFAULT if args.eval_clips is None else args.eval_clips
    kw = {k: data.get(k) for k in ("fold", "split", "split_dir")}
    index, train = split_clips(data["dataset"], data["root"], part="train", **kw)
    chosen = calibration_clips(train, n)
    logger.info("int8: calibrating on %d of %d training clips of %s (%s)", len(chosen), len(train), data["dataset"], index.root)
    calib = clip_features(index, chosen, loaded.frontend)
    eval_set = None
    if n_eval > 0:
        _, val = split_clips(data["dataset"], data["root"], part="eval", **kw)
        picked = calibration_clips(val, n_eval) if len(val) > n_eval else val
        same_classes = [str(c) for c in index.classes] == [str(c) for c in loaded.classes]
        eval_set = (clip_features(index, picked, loaded.frontend),
                    [int(c.label) for c in picked] if same_classes else None)  # accuracy only with the model's classes
    return calib, eval_set


def summary_lines(report: dict) -> str:
    """A short human summary of an export report."""
    from sp4sc.deploy.complexity import format_report

    c = report["complexity"]
    lines = [f"exported {c.get('model')} to {report['out']} (fingerprint {report['fingerprint']})"]
    lines += ["  " + line for line in format_report(c).splitlines()]
    if report["over_budget"]:
        lines.append(f"  OVER BUDGET, exported because of --no-budget: {report['budget']['message']}")
    for name, v in report["parity"]["variants"].items():
        gate = "reported only" if v["passed"] is None else ("ok" if v["passed"] else "FAILED")
        tol = f" (tol {v['prob_tolerance']:g})" if v["prob_tolerance"] is not None else ""
        shapes = " ".join("x".join(str(d) for d in r["shape"]) for r in v["shapes"])
        lines.append(
            f"  parity {name:<8} max |dprob| {v['max_abs_prob']:.2e}{tol}, max rel dlogit {v['max_rel_logit']:.2e}, "
            f"top-1 agreement {v['top1_agreement']:.3f} at {shapes}: {gate}"
        )
        if "clips" in v:
            c = v["clips"]
            acc = (f"; accuracy fp32 {100 * c['accuracy_fp32']:.1f} %, int8 {100 * c['accuracy_int8']:.1f} %"
                   if "accuracy_fp32" in c else "")
            lines.append(f"    int8 vs fp32 on {c['clips']} evaluation clips: max |dp| {c['max_abs_prob']:.2e}, "
                         f"mean |dp| {c['mean_abs_prob']:.1e}, top-1 agreement {c['top1_agreement']:.3f}{acc} "
                         f"(calibrated on {v['calibration_clips']} training clips)")
        if "vs_fp32" in v:
            w = v["vs_fp32"]
            lines.append(f"    {name} weights vs the fp32 model: max |dprob| {w['max_abs_prob']:.2e}, mean {w['mean_abs_prob']:.1e}, "
                         f"top-1 agreement {w['top1_agreement']:.3f} (reported, not gated)")
    for name, f in report["files"].items():
        lines.append(f"  {f}: {report['file_bytes'][name]:,} bytes")
    return "\n".join(lines)
