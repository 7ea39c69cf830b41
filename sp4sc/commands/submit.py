"""``sp4sc submit``: write and validate a DCASE submission package.

``--edition 2021`` (default): Task 1A, TAU 2020/2021, one ``--ckpt``.
``--edition 2024``: Task 1 on TAU22, one system per development-train split:
``--split-ckpt 5=P5 --split-ckpt 10=P10 ... --split-ckpt 100=P100`` writes
``<label>.output.split_{5,10,25,50,100}.csv`` and ``<label>.meta.yaml``.
``--edition 2025``: Task 1 with device information: ``--ckpt`` (general model)
and optional ``--device-ckpt a=PATH`` per device; writes ``<label>.output.csv``,
``<label>.meta.yaml``, ``complexity.json`` (per device) and ``test_accuracy.json``.
See :mod:`sp4sc.challenge.editions`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edition", choices=("2021", "2024", "2025"), default="2021",
                        help="DCASE edition: 2021 Task 1A (default), 2024 Task 1 (one model per split), "
                             "2025 Task 1 (general model + optional per-device models)")
    parser.add_argument("--ckpt", metavar="C", help="model file or Lightning checkpoint (2021; the general model for 2025)")
    parser.add_argument("--split-ckpt", action="append", metavar="N=PATH",
                        help="2024: the model trained on split N (5, 10, 25, 50, 100); give all five")
    parser.add_argument("--device-ckpt", action="append", metavar="D=PATH",
                        help="2025: a device-specific model for device D (a, b, c, s1, ...); repeat per device")
    parser.add_argument("--eval-root", required=True, metavar="PATH",
                        help="evaluation folder: evaluation_setup/fold1_test.csv (2025: filename, device_id) or, for "
                             "2024, meta.csv; audio/<n>.wav")
    parser.add_argument("--dev-root", metavar="PATH",
                        help="development folder (2021: TAU 2020, fold1 evaluate; 2024/2025: TAU22 with split_setup/test.csv): "
                             "development results go into the meta file")
    parser.add_argument("--label", required=True, metavar="LABEL",
                        help="submission label: Lastname_INST_task1a_N (2021) or Lastname_INST_task1_N (2024/2025), N in 1..4")
    parser.add_argument("--tta", type=int, default=0, metavar="N",
                        help="test-time augmentation: average the softmax of N SpecAugment passes (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-time augmentation (same seed, same file)")
    parser.add_argument("--out", default="submissions", metavar="DIR", help="where <label>/ is written (default: submissions)")
    parser.add_argument("--force", action="store_true", help="replace an existing package")
    parser.add_argument("--no-budget", action="store_true",
                        help="write the package even if the model is over the complexity budget (said in the meta file)")
    parser.add_argument("--template", metavar="PATH",
                        help="hand-written meta fields (default: <out>/meta_template.yaml, else the repository's)")
    parser.add_argument("--precision", choices=("fp16", "fp32", "int8"), default="fp16",
                        help="weight precision the predictions and model_size use (default fp16; int8: the 2021 "
                             "package ships and predicts with the static int8 ONNX model, calibrated on --dev-root's "
                             "training clips; 2024/2025 count bytes at int8, predictions then run at fp16)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per inference batch")
    from sp4sc.commands.infer import add_clip_length_arguments

    add_clip_length_arguments(parser)  # as `sp4sc infer`: own length by default (TAU clips are all 10 s)


def run(args: argparse.Namespace) -> int:
    from sp4sc.errors import Sp4scError
    from sp4sc.challenge.submission import make_submission

    if args.batch_size < 1:
        raise Sp4scError(f"--batch-size {args.batch_size}: must be at least 1")
    if getattr(args, "edition", "2021") != "2021":
        return _run_edition(args)
    if args.ckpt is None:
        raise Sp4scError("--ckpt: required for --edition 2021 (the model file or Lightning checkpoint)")
    if args.split_ckpt or args.device_ckpt:
        raise Sp4scError("--split-ckpt / --device-ckpt: only for --edition 2024 / 2025")
    res = make_submission(
        args.ckpt,
        args.eval_root,
        args.label,
        dev_root=args.dev_root,
        out=args.out,
        tta=args.tta,
        seed=args.seed,
        force=args.force,
        no_budget=args.no_budget,
        template=args.template,
        precision=args.precision,
        batch_size=args.batch_size,
        pad=args.pad,
        crop=args.crop,
    )
    cx = res.complexity
    print(f"wrote {res.path}/ ({res.rows} evaluation rows), validated: OK")
    print(f"  {res.label}{'.output.csv'}, {res.label}.meta.yaml, ONNX model, complexity.json")
    print(f"  complexity (folded, {args.precision}): {cx['total_parameters']:,} parameters "
          f"({cx['total_parameters_non_zero']:,} non-zero), {cx['model_size']:.2f} KB")
    if args.tta:
        print(f"  test-time augmentation: {args.tta} SpecAugment passes averaged, seed {args.seed}")
    if res.results is not None:
        o = res.results["development_dataset"]["overall"]
        print(f"  development (fold1 evaluate): accuracy {o['accuracy']:.2f} %, log loss {o['logloss']:.4f}")
    if res.over_budget:
        print(f"  WARNING: model is {res.over_budget}")
    for w in res.warnings:
        if not (res.over_budget and w.endswith(res.over_budget)):
            print(f"  warning: {w}")
    print("  submit: zip the .output.csv and .meta.yaml of each label folder with your technical report")
    return 0


def _run_edition(args: argparse.Namespace) -> int:
    """``--edition 2024|2025`` (see :func:`sp4sc.challenge.editions.make_submission_edition`)."""
    from sp4sc.errors import Sp4scError
    from sp4sc.challenge.editions import make_submission_edition

    if args.tta:
        raise Sp4scError(f"--tta: not supported with --edition {args.edition} (the 2024/2025 packages run each model once)")
    res = make_submission_edition(
        args.edition, args.label, args.eval_root, ckpt=args.ckpt, split_ckpts=args.split_ckpt,
        device_ckpts=args.device_ckpt, dev_root=args.dev_root, out=args.out, template=args.template,
        precision=args.precision, force=args.force, no_budget=args.no_budget, batch_size=args.batch_size,
        predict_kwargs={"pad": args.pad, "crop": args.crop},
    )
    cx = res.complexity
    print(f"wrote {res.path}/ (DCASE {res.edition} Task 1, {res.rows} evaluation rows per output), validated: OK")
    print(f"  {', '.join(res.files)}")
    print(f"  largest model: {cx['params']:,} parameters, {cx['bytes']:,} bytes at {cx['precision']} "
          f"(limit 128,000), {cx['macs']:,} MACs per 1 s (NeSsi; limit 30,000,000)")
    for w in res.warnings:
        print(f"  warning: {w}")
    print(f"  submit: zip task1/{res.label}/ (the output and meta files) with your technical report")
    return 0
