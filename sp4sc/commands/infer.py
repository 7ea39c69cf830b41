"""``sp4sc infer --ckpt C [--json] FILE...``: class probabilities of audio files.

The torch-side twin of ``python export/edge_infer.py``: same audio handling,
same front end, same output (``--json``: ``{"classes", "files", "probs"}``).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="model file (sp4sc save_model) or Lightning checkpoint")
    parser.add_argument("--json", action="store_true", help='print {"classes", "files", "probs"} as JSON')
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    parser.add_argument("--tta", type=int, default=0, help="test-time augmentation passes (SpecAugment; default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TTA stripes (default 0)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg)")


def run(args: argparse.Namespace) -> int:
    from sp4sc.checkpoint import load_model
    from sp4sc.infer import format_table, predict_files, result_json

    loaded = load_model(args.ckpt)
    probs = predict_files(loaded, args.files, tta=args.tta, seed=args.seed, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result_json(loaded.classes, args.files, probs)))
    else:
        print(format_table(loaded.classes, args.files, probs))
    return 0
