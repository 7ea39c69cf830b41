"""``sp4sc validate-submission DIR [--eval-root PATH] [--json]``.

Prints one line per violation (``file:line: message [rule]``) and exits 0 when
the package is valid, 4 when it breaks a rule (2 when DIR cannot be read).
"""

from __future__ import annotations

import argparse
import json

EXIT_INVALID = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="package folder <label>/ holding <label>.output.csv and <label>.meta.yaml")
    parser.add_argument("--eval-root", metavar="PATH",
                        help="TAU evaluation folder: the output must list exactly the files of its evaluation_setup/fold1_test.csv")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--sum-tol", type=float, default=None, metavar="TOL",
                        help="tolerance on each row's probability sum (default 1e-3; sp4sc submit uses 1e-6)")
    parser.add_argument("--strict", action="store_true",
                        help="warnings (scene_label not the argmax, empty dev results, over budget) count as violations")


def run(args: argparse.Namespace) -> int:
    from sp4sc.errors import Sp4scError
    from sp4sc.validate import SUM_TOL, validate_submission

    tol = SUM_TOL if args.sum_tol is None else args.sum_tol
    if not tol >= 0:
        raise Sp4scError(f"--sum-tol {args.sum_tol}: must be a non-negative number")
    report = validate_submission(args.directory, eval_root=args.eval_root, sum_tol=tol, strict=args.strict)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for v in report.violations:
            print(str(v))
        for w in report.warnings:
            print(f"warning: {w}")
        if report.ok:
            print(f"OK: {report.directory} is a valid DCASE 2021 Task 1A package ({report.rows} rows, {len(report.warnings)} warnings)")
        else:
            print(f"INVALID: {report.directory}: {len(report.violations)} violation(s), {len(report.warnings)} warning(s)")
    return 0 if report.ok else EXIT_INVALID
