"""``sp4sc infer --ckpt C [--json] FILE...``: class probabilities of audio files.

The torch-side twin of ``python export/edge_infer.py``: same audio handling,
same front end, same output (``--json``: ``{"classes", "files", "probs"}``).

Clip length: each clip runs at its own length (the models accept any number of
frames). ``--pad silence|repeat`` pads clips shorter than the model's trained
length up to it, ``--crop`` cuts longer ones; when lengths differ from the trained
one, a line on stderr says how many clips and what was done. ``sp4sc submit`` and
the edge runner take the same options with the same meaning.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="model file (sp4sc save_model) or Lightning checkpoint")
    src.add_argument("--onnx", help="an exported model*.onnx (fp32, fp16 or int8) with its frontend.json beside it: "
                                    "runs it under ONNX Runtime at its stored precision")
    parser.add_argument("--json", action="store_true", help='print {"classes", "files", "probs"} as JSON')
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    parser.add_argument("--tta", type=int, default=0, help="test-time augmentation passes (SpecAugment; default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TTA stripes (default 0)")
    add_clip_length_arguments(parser)
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg)")


def add_clip_length_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pad`` and ``--crop``, shared by ``infer`` and ``submit`` (the edge runner has the same two)."""
    parser.add_argument("--pad", choices=("silence", "repeat"), default=None,
                        help="pad clips shorter than the model's trained length up to it: with silence, or by "
                             "repeating the clip (default: each clip runs at its own length)")
    parser.add_argument("--crop", action="store_true",
                        help="cut clips longer than the model's trained length to their first part of that length "
                             "(default: each clip runs at its own length)")


def run(args: argparse.Namespace) -> int:
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.infer import format_table, predict_files, result_json

    if args.onnx:
        from sp4sc.deploy.onnx_infer import predict_files_onnx
        from sp4sc.errors import Sp4scError

        if args.tta:
            raise Sp4scError("--tta: test-time augmentation runs the torch model; drop --tta with --onnx")
        probs, classes = predict_files_onnx(args.onnx, args.files, batch_size=args.batch_size, pad=args.pad,
                                            crop=args.crop)
        print(json.dumps(result_json(classes, args.files, probs)) if args.json else format_table(classes, args.files, probs))
        return 0
    loaded = load_model(args.ckpt)
    probs = predict_files(loaded, args.files, tta=args.tta, seed=args.seed, batch_size=args.batch_size,
                          pad=args.pad, crop=args.crop)
    if args.json:
        print(json.dumps(result_json(loaded.classes, args.files, probs)))
    else:
        print(format_table(loaded.classes, args.files, probs))
    return 0
