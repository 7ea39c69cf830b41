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
    parser.add_argument("--int8", action="store_true", help="also write model_int8.onnx (ONNX Runtime dynamic quantization)")
    parser.add_argument("--waveform", action="store_true",
                        help="also write model_waveform.onnx: waveform input, log-mel front end inside the graph")
    parser.add_argument("--no-budget", action="store_true",
                        help="export even if over the complexity budget (the outputs then say so)")
    parser.add_argument("--max-macs-per-s", type=float, default=None,
                        help="also enforce a MAC budget per second of audio (DCASE 2022+: 30e6)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (once the new one is complete)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.onnx_export import export_onnx

    loaded = load_model(args.ckpt)
    report = export_onnx(
        loaded, args.out, fp16=args.fp16, int8=args.int8, waveform=args.waveform, no_budget=args.no_budget,
        overwrite=args.force, max_macs_per_s=args.max_macs_per_s,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(summary_lines(report))
    return 0


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
        if "vs_fp32" in v:
            w = v["vs_fp32"]
            lines.append(f"    {name} weights vs the fp32 model: max |dprob| {w['max_abs_prob']:.2e}, mean {w['mean_abs_prob']:.1e}, "
                         f"top-1 agreement {w['top1_agreement']:.3f} (reported, not gated)")
    for name, f in report["files"].items():
        lines.append(f"  {f}: {report['file_bytes'][name]:,} bytes")
    return "\n".join(lines)
