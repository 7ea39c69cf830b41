"""``sp4sc submit``: write and validate a DCASE 2021 Task 1A submission package."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="C", help="model file or Lightning checkpoint")
    parser.add_argument("--eval-root", required=True, metavar="PATH",
                        help="TAU 2021 evaluation folder (evaluation_setup/fold1_test.csv, audio/<n>.wav) or any folder in that layout")
    parser.add_argument("--dev-root", metavar="PATH",
                        help="TAU 2020 development folder: development results on fold1 evaluate go into the meta file")
    parser.add_argument("--label", required=True, metavar="Lastname_INST_task1a_N", help="submission label (N in 1..4)")
    parser.add_argument("--tta", type=int, default=0, metavar="N",
                        help="test-time augmentation: average the softmax of N SpecAugment passes (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-time augmentation (same seed, same file)")
    parser.add_argument("--out", default="submissions", metavar="DIR", help="where <label>/ is written (default: submissions)")
    parser.add_argument("--force", action="store_true", help="replace an existing package")
    parser.add_argument("--no-budget", action="store_true",
                        help="write the package even if the model is over the complexity budget (said in the meta file)")
    parser.add_argument("--template", metavar="PATH",
                        help="hand-written meta fields (default: <out>/meta_template.yaml, else the repository's)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="weight precision the predictions and model_size use (default fp16, the DCASE 2021 counting)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per inference batch")
    from sp4sc.commands.infer import add_clip_length_arguments

    add_clip_length_arguments(parser)  # as `sp4sc infer`: own length by default (TAU clips are all 10 s)


def run(args: argparse.Namespace) -> int:
    from sp4sc.errors import Sp4scError
    from sp4sc.challenge.submission import make_submission

    if args.batch_size < 1:
        raise Sp4scError(f"--batch-size {args.batch_size}: must be at least 1")
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
