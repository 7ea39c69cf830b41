"""``sp4sc data summary``: counts per split, device, scene and city of a dataset.

    sp4sc data summary --dataset tau2020 --root PATH [--skip-audio-check] [--json]

Without ``--skip-audio-check`` every listed audio file must exist; the error
says how many do not and names the first few.
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
    p.add_argument("--root", required=True, help="dataset root (the folder with meta.csv, or meta/ and audio/ for esc)")
    p.add_argument("--skip-audio-check", action="store_true", help="do not check that the listed audio files exist")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    index = load_index(args.dataset, args.root, check_audio=not args.skip_audio_check)
    summary = summarize(index)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_tables(summary, index.classes, str(index.root), audio_checked=not args.skip_audio_check)
    return 0


def _print_tables(summary: dict, classes: tuple[str, ...], root: str, audio_checked: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    splits = summary["splits"]
    names = list(splits)
    checked = "all listed audio files exist" if audio_checked else "audio not checked"
    console.print(f"[bold]{summary['dataset']}[/bold] at {root}: {summary['total']} clips ({checked})")
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
