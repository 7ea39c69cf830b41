"""``sp4sc data summary``: counts per split, device, scene and city of a dataset.

    sp4sc data summary --dataset tau2020 --root PATH [--skip-audio-check] [--json]
    sp4sc data summary --dataset tau2022 --root PATH [--split-dir DIR]

Without ``--skip-audio-check`` every listed audio file must exist; the error
says how many do not and names the first few. tau2022 (DCASE 2022-2025 Task 1)
is the exception when ``ROOT/audio/`` is absent altogether: the split files
alone are summarised (the line says the audio was not checked; training reads
``ROOT/audio/<name>.wav`` as the split files name them). Its summary also
checks the splits' structure (each inside the next, none overlapping test).
"""

from __future__ import annotations

import argparse
import json

from sp4sc.data.index import DATASETS, load_index, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{summary}")
    p = sub.add_parser("summary", help="clip counts per split, device, scene and city",
                       description="Clip counts per split, device, scene and city of a dataset.")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="metadata layout")
    p.add_argument("--root", required=True, help="dataset root (the folder with meta.csv, or meta/ and audio/ for esc; tau2022: "
                        "split_setup/ and/or meta.csv, audio/ beside them)")
    p.add_argument("--skip-audio-check", action="store_true", help="do not check that the listed audio files exist")
    p.add_argument("--split-dir", metavar="DIR",
                   help="tau2022: folder of split5..split100.csv and test.csv (default ROOT/split_setup)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    check = not args.skip_audio_check
    note = None
    if check and args.dataset == "tau2022" and not (Path(args.root).expanduser() / "audio").is_dir():
        check = False  # the split files alone: counts need no audio
        note = f"audio not checked: {Path(args.root) / 'audio'} is absent (training reads the clips from there)"
    index = load_index(args.dataset, args.root, check_audio=check, split_dir=getattr(args, "split_dir", None))
    summary = summarize(index)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_tables(summary, index.classes, str(index.root), audio_checked=check, note=note)
    return 0


def _print_tables(summary: dict, classes: tuple[str, ...], root: str, audio_checked: bool, note: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    splits = summary["splits"]
    names = list(splits)
    checked = "all listed audio files exist" if audio_checked else (note or "audio not checked")
    console.print(f"[bold]{summary['dataset']}[/bold] at {root}: {summary['total']} clips ({checked})")
    if "structure_problems" in summary:
        problems = summary["structure_problems"]
        console.print(f"splits from {summary['split_dir']}: "
                      + ("each inside the next, none overlapping test" if not problems else "; ".join(problems))
                      + (f"; absent: {', '.join(m + '.csv' for m in summary['missing_splits'])}"
                         if summary.get("missing_splits") else ""))
    for key, title in (("by_scene", "class"), ("by_device", "device"), ("by_city", "city")):
        rows = sorted({k for s in splits.values() for k in s[key]})
        if not rows:
            continue
        if key == "by_scene":
            rows = [c for c in classes if c in rows]
        table = Table(title=f"clips per {title}", title_justify="left")
        table.add_column(title)
        for n in names:
            table.add_column(n, justify="right")
        for r in rows:
            table.add_row(r, *(str(splits[n][key].get(r, 0)) for n in names))
        table.add_row("[bold]total[/bold]", *(f"[bold]{splits[n]['n']}[/bold]" for n in names))
        console.print(table)
    if not any(splits[n]["by_scene"] or splits[n]["by_device"] for n in names):
        table = Table(title="clips per split", title_justify="left")
        table.add_column("split")
        table.add_column("clips", justify="right")
        for n in names:
            table.add_row(n, str(splits[n]["n"]))
        console.print(table)
