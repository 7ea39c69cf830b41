"""``sp4sc convert-sp4asc IN.pth OUT``: official SP4ASC checkpoint -> sp4sc model file.

The output is read by ``sp4sc infer``, ``export``, ``submit`` and ``complexity --ckpt``
(front end ``sp4asc``, the 10 DCASE scenes). See :mod:`sp4sc.deploy.sp4asc_import`.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.pth", help="SP4ASC checkpoint {epoch, net, optim, scheduler, config}")
    parser.add_argument("output", metavar="OUT", help="model file to write (e.g. models/sp4asc_ce.pt)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from sp4sc.deploy.sp4asc_import import write_converted

    summary = write_converted(args.input, args.output, overwrite=args.force)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        cfg = summary["config"]
        print(f"wrote {summary['output']}: {summary['model']} ({summary['state_dict_values']:,} state-dict values), "
              f"front end {summary['frontend']}, from {summary['input']} (epoch {summary['epoch']}, "
              f"SpecAugment {cfg.get('specAugment')}, mixup {cfg.get('mixup_alpha')}, loss {cfg.get('loss', 'ce')})")
    return 0
