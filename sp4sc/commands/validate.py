"""``sp4sc validate-submission DIR [--edition 2021|2024|2025] [--eval-root PATH | --rows N] [--official] [--json]``.

``--edition 2024`` / ``2025`` checks a DCASE 2024 / 2025 Task 1 package
(:func:`sp4sc.challenge.editions.validate_edition`): 2024 needs the five
``.output.split_N.csv`` files and, without ``--eval-root``, the 135,730 files of
the 2024 evaluation set; 2025 needs ``complexity.json`` within the limits per device.

Prints one line per violation (``file:line: message [rule]``; rules the
organisers' validator does not enforce are marked "stricter than the official
validator", and their reasons follow once) and exits 0 when the package is
valid, 4 when it breaks a rule (2 when DIR cannot be read). ``--official``
applies the organisers' rules only. Without ``--eval-root`` the output must list
the 7,920 files of the TAU 2021 evaluation set (``--rows`` for another count).
"""

from __future__ import annotations

import argparse
import json

EXIT_INVALID = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="package folder <label>/ holding <label>.output.csv and <label>.meta.yaml")
    parser.add_argument("--edition", choices=("2021", "2024", "2025"), default="2021",
                        help="DCASE edition of the package (default 2021 Task 1A)")
    parser.add_argument("--eval-root", metavar="PATH",
                        help="TAU evaluation folder: the output must list exactly the files of its evaluation_setup/fold1_test.csv")
    parser.add_argument("--rows", type=int, default=None, metavar="N",
                        help="without --eval-root: the number of files the output must list (default 7920, the TAU "
                             "2021 evaluation set for task 1A, whose names 0.wav ... 7919.wav are checked too; "
                             "--edition 2024: 135,730, names 0.wav ... 135729.wav; 2025: not checked)")
    parser.add_argument("--official", action="store_true",
                        help="apply only the rules of the organisers' DCASE 2021 task 1 validator (default: those "
                             "and sp4sc's stricter ones, marked as such)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--sum-tol", type=float, default=None, metavar="TOL",
                        help="tolerance on each row's probability sum (default 1e-3; sp4sc submit uses 1e-6)")
    parser.add_argument("--strict", action="store_true",
                        help="warnings (scene_label not the argmax, empty dev results, over budget) count as violations")


def run(args: argparse.Namespace) -> int:
    from sp4sc.errors import Sp4scError
    from sp4sc.challenge.validate import EVAL_ROWS, SUM_TOL, validate_submission

    tol = SUM_TOL if args.sum_tol is None else args.sum_tol
    if not tol >= 0:
        raise Sp4scError(f"--sum-tol {args.sum_tol}: must be a non-negative number")
    if args.rows is not None and args.eval_root is not None:
        raise Sp4scError("--rows and --eval-root: give one (--eval-root checks the exact list of files)")
    if args.official and args.strict:
        raise Sp4scError("--official and --strict: give one (--strict turns sp4sc's warnings into violations)")
    if getattr(args, "edition", "2021") != "2021":
        return _run_edition(args, tol)
    report = validate_submission(args.directory, eval_root=args.eval_root, sum_tol=tol, strict=args.strict,
                                 official=args.official, rows=EVAL_ROWS if args.rows is None else args.rows)
    return _print_report(report, "DCASE 2021 Task 1A", args.json)


def _run_edition(args: argparse.Namespace, tol: float) -> int:
    from sp4sc.challenge.editions import validate_edition

    report = validate_edition(args.directory, args.edition, eval_root=args.eval_root, rows=args.rows,
                              official=args.official, sum_tol=tol, strict=args.strict)
    return _print_report(report, f"DCASE {args.edition} Task 1", args.json)


def _print_report(report, what: str, as_json: bool) -> int:
    """Print a validation report (its JSON, or its violations, warnings and verdict); the exit status."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else EXIT_INVALID
    for v in report.violations:
        print(str(v))
    for w in report.warnings:
        print(f"warning: {w}")
    for rule, why in report.stricter_reasons().items():
        print(f"stricter rule [{rule}]: {why}")
    rules = "the organisers' rules only" if report.official_only else "the organisers' rules and sp4sc's stricter ones"
    if report.ok:
        print(f"OK: {report.directory} is a valid {what} package ({report.rows} rows, "
              f"{len(report.warnings)} warnings; {rules})")
    else:
        stricter = len(report.stricter_only)
        split = (f" ({stricter} of them stricter than the official validator; --official checks the organisers' "
                 "rules only)" if stricter else "")
        print(f"INVALID: {report.directory}: {len(report.violations)} violation(s){split}, "
              f"{len(report.warnings)} warning(s); {rules}")
    return 0 if report.ok else EXIT_INVALID
