"""``sp4sc cv compare A B``: a paired comparison of two cross-validations, fold by fold and class by class.

    sp4sc cv compare runs/cv/esc50_sp4sc runs/cv/esc50_sp4sc_kd
    sp4sc cv compare runs/cv/esc50_sp4sc runs/cv/esc50_sp4sc_kd --json

Reads each folder's ``fold<k>/result.json`` (what ``sp4sc cv`` writes) and pairs the folds both have:
accuracy and log loss of A and B per fold, the difference B - A per fold and its mean +/- sample
std (the paired figure: fold-to-fold difficulty cancels), and per class the accuracy over the
pooled validation clips of the shared folds (from the confusion matrices), with the classes B
gains most and loses most. The two runs must have the same classes in the same order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sp4sc.cvfolder import fold_results
from sp4sc.errors import Sp4scError


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; one value has no spread (None, not 0). ``sp4sc cv`` uses it too."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return mean, std


def _class_accuracy(results: list[dict[str, Any]], n: int) -> list[tuple[int, int]]:
    """``(correct, clips)`` per class, pooled over the folds' confusion matrices (rows: true class)."""
    pooled = [[0, 0] for _ in range(n)]
    for r in results:
        for i, row in enumerate(r["confusion"]):
            pooled[i][0] += int(row[i])
            pooled[i][1] += int(sum(row))
    return [tuple(p) for p in pooled]


def compare(a_dir: str | Path, b_dir: str | Path) -> dict[str, Any]:
    """The paired comparison of two ``sp4sc cv`` folders (see the module docstring)."""
    a, b = fold_results(Path(a_dir)), fold_results(Path(b_dir))
    folds = sorted(set(a) & set(b))
    if not folds:
        raise Sp4scError(f"{a_dir} has folds {sorted(a)} and {b_dir} folds {sorted(b)}: none in common to pair")
    classes = a[folds[0]].get("classes")
    if any(r.get("classes") != classes for r in [a[f] for f in folds] + [b[f] for f in folds]):
        raise Sp4scError(f"{a_dir} and {b_dir}: the runs' classes differ; a paired comparison needs the same data")
    rows = [{"fold": f, "a": a[f]["accuracy"], "b": b[f]["accuracy"], "diff": b[f]["accuracy"] - a[f]["accuracy"],
             "a_logloss": a[f]["logloss"], "b_logloss": b[f]["logloss"]} for f in folds]
    summary = {key: mean_std([r[key] for r in rows]) for key in ("a", "b", "diff", "a_logloss", "b_logloss")}
    per_class = []
    ca = _class_accuracy([a[f] for f in folds], len(classes))
    cb = _class_accuracy([b[f] for f in folds], len(classes))
    for name, (ra, n), (rb, _) in zip(classes, ca, cb):
        per_class.append({"class": name, "clips": n, "a": ra / n if n else None, "b": rb / n if n else None,
                          "diff": (rb - ra) / n if n else None})
    return {"a": str(a_dir), "b": str(b_dir), "folds": folds, "per_fold": rows,
            "mean": {k: v[0] for k, v in summary.items()}, "std": {k: v[1] for k, v in summary.items()},
            "per_class": per_class}


def plus_minus(mean: float, std: float | None, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """``mean ± std`` scaled and formatted (the std without a sign); ``mean`` alone when there is no std."""
    body = fmt.format(scale * mean)
    return body if std is None else f"{body} ± " + fmt.replace("+", "").format(abs(scale * std))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def text(report: dict[str, Any], top: int = 8) -> str:
    """The comparison as a Markdown table per fold, the paired mean and the classes that moved most."""
    m, s = report["mean"], report["std"]

    def pm(key: str, scale: float = 100.0, fmt: str = "{:+.1f}") -> str:
        return plus_minus(m[key], s[key], fmt, scale)

    lines = [f"A = {report['a']}", f"B = {report['b']}", "",
             "| fold | A accuracy | B accuracy | B - A (points) | A log loss | B log loss |",
             "|---|---|---|---|---|---|"]
    for r in report["per_fold"]:
        lines.append(f"| {r['fold']} | {_pct(r['a'])} % | {_pct(r['b'])} % | {100 * r['diff']:+.1f} | "
                     f"{r['a_logloss']:.3f} | {r['b_logloss']:.3f} |")
    lines.append(f"| mean | {pm('a', fmt='{:.1f}')} % | {pm('b', fmt='{:.1f}')} % | {pm('diff')} | "
                 f"{pm('a_logloss', 1.0, '{:.3f}')} | {pm('b_logloss', 1.0, '{:.3f}')} |")
    moved = sorted((c for c in report["per_class"] if c["diff"] is not None), key=lambda c: c["diff"])
    clips = moved[0]["clips"] if moved else 0

    def names(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{c['class']} {_pct(c['a'])} → {_pct(c['b'])}" for c in items) or "none"

    gained = [c for c in reversed(moved) if c["diff"] > 0][:top]
    lost = [c for c in moved if c["diff"] < 0][:top]
    same = sum(1 for c in moved if c["diff"] == 0)
    lines += ["", f"Per class, accuracy (%) over the shared fold(s) {' '.join(map(str, report['folds']))} "
              f"({clips} clips per class when classes are balanced):",
              f"- B gains most: {names(gained)}", f"- B loses most: {names(lost)}",
              f"- {sum(1 for c in moved if c['diff'] > 0)} classes up, {sum(1 for c in moved if c['diff'] < 0)} down, "
              f"{same} unchanged"]
    return "\n".join(lines)


def main_argv(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sp4sc cv compare",
                                     description="paired comparison of two `sp4sc cv` folders: per fold, mean "
                                                 "difference +/- std, and per class")
    parser.add_argument("a", help="the reference `sp4sc cv --out` folder (A)")
    parser.add_argument("b", help="the folder compared with it (B)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--top", type=int, default=8, help="classes listed as most gained / lost (default 8)")
    args = parser.parse_args(argv)
    report = compare(args.a, args.b)
    print(json.dumps(report, indent=2) if args.json else text(report, args.top))
    return 0
