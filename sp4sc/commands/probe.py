"""``sp4sc probe {sweep,bench,embed}``: frozen-embedding linear probes at varying temporal support δt.

``sweep`` embeds a dataset with a frozen encoder (PaSST, BEATs, EfficientAT)
at each δt, trains linear probes (several seeds), aggregates window
predictions, measures the encoder's cost and writes results.json, table.md
and plot.png into ``--out``.
``bench`` compares the extractor's windows/s with the raw encoder forward.
``embed`` gives the window embeddings of audio files (JSON or .npz) and, for
an AudioSet-trained encoder, each file's top-K AudioSet tags.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sp4sc.errors import Sp4scError


def _encoder_names() -> list[str]:
    from sp4sc.probes.encoders import ENCODERS

    return sorted(ENCODERS)


def _encoder_help() -> str:
    """Help text of --encoder without importing torch (the built-in names)."""
    from sp4sc.probes import EFFICIENTAT_VARIANTS

    return (f"passt, beats or efficientat_mnXX with XX one of {' '.join(v[2:] for v in EFFICIENTAT_VARIANTS)} "
            "(EfficientAT width x10; mn04: the released AudioSet tagger)")


def _weights(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ckpt", help="encoder checkpoint file (PaSST state dict; BEATs {'cfg', 'model'} file; "
                   "EfficientAT state dict such as mn04_as_mAP_432.pt)")
    g.add_argument("--random-init", action="store_true",
                   help="random encoder weights: pipeline and cost checks only; every output says so")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random encoder weights")


def _gpu_workers(gpu: bool) -> int:
    """Audio-loading workers: on a GPU enough to keep it fed (cores - 1, at most 8); none on a CPU."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if gpu else 0


def _default_cache() -> str:
    base = os.environ.get("SP4SC_CACHE") or str(Path.home() / ".cache" / "sp4sc")
    return str(Path(base) / "embeddings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="probe_command", required=True, metavar="{sweep,bench,embed}")
    s = sub.add_parser("sweep", help="accuracy and cost of linear probes per δt", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--encoder", required=True, help=_encoder_help())
    _weights(s)
    s.add_argument("--dataset", required=True, choices=["tau2020", "esc", "toy"],
                   help="tau2020: fold1 train -> fold1 evaluate; esc: k-fold over its folds; toy: the generated toy set")
    s.add_argument("--root", help="dataset root (as for `sp4sc data summary`); optional for toy")
    s.add_argument("--dt", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 10.0], metavar="S",
                   help="window lengths in seconds (default 1 2 3 5 10)")
    s.add_argument("--hop", type=float, default=None, metavar="S", help="hop between windows, s (default: = δt)")
    s.add_argument("--seeds", type=int, default=3, help="probe seeds (default 3)")
    s.add_argument("--compare", nargs="*", default=[], metavar="CKPT",
                   help="CNN6/SP4SC model files or Lightning checkpoints to compare on the same eval split, or "
                        "`sp4sc cv` output folders (their mean over the same folds)")
    s.add_argument("--out", default=None, help="output folder (default probe_results/<encoder>_<dataset>)")
    s.add_argument("--json", action="store_true", help="print the results JSON instead of the tables")
    s.add_argument("--max-clips", type=int, default=None, metavar="N",
                   help="quick runs: at most N clips per split (TAU train and evaluate each; ESC in all, equal per fold), class-balanced")
    s.add_argument("--cache-dir", default=None, help=f"embedding cache (default {_default_cache()})")
    s.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    s.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    s.add_argument("--batch-size", type=int, default=32, help="windows per encoder forward (default 32)")
    s.add_argument("--workers", type=int, default=None, help="audio loading processes (default: cores - 1 up to 8 on GPU, 0 on CPU)")
    s.add_argument("--cost-windows", type=int, default=None,
                   help="windows timed for the cost per δt (default 64 on GPU, 4 on CPU)")
    s.add_argument("--aggregation", nargs="+", default=None, metavar="A",
                   help="mean-embedding mean-prediction majority-vote (default all three)")
    s.add_argument("--hidden", type=int, default=0, help="hidden units of the probe (0: linear, default)")
    s.add_argument("--epochs", type=int, default=30, help="probe training epochs (best on the selection split kept)")
    s.add_argument("--probe-batch-size", type=int, default=256, help="linear-probe training batch size (default 256)")
    s.add_argument("--lr", type=float, default=1e-3, help="linear-probe learning rate, Adam (default 1e-3)")
    s.add_argument("--weight-decay", type=float, default=1e-4, help="linear-probe weight decay (default 1e-4)")
    s.set_defaults(_run=_run_sweep)

    b = sub.add_parser("bench", help="extractor windows/s vs the raw encoder forward, per δt")
    b.add_argument("--encoder", required=True, help=_encoder_help())
    _weights(b)
    b.add_argument("--dt", type=float, nargs="+", default=[1.0, 3.0, 5.0, 10.0], metavar="S",
                   help="window lengths to time, in seconds (default 1 3 5 10)")
    b.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    b.add_argument("--batch-size", type=int, default=32, help="windows per encoder forward (default 32)")
    b.add_argument("--raw-batches", type=int, default=3, help="timed raw-forward batches per δt (at least)")
    b.add_argument("--raw-seconds", type=float, default=None,
                   help="time the raw forward for at least this long per δt (default 5 on GPU, 0 on CPU)")
    b.add_argument("--clips", type=int, default=None,
                   help="clips the extractor reads per δt, cycling over 16 written files (default 2048 on GPU, 4 on CPU)")
    b.add_argument("--clip-seconds", type=float, default=10.0, help="length of the synthetic clips timed, s (default 10)")
    b.add_argument("--workers", type=int, default=None, help="audio loading processes (default: cores - 1 up to 8 on GPU, 0 on CPU)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.set_defaults(_run=_run_bench)

    e = sub.add_parser(
        "embed", help="window embeddings (and AudioSet tags) of audio files",
        description="Embed each file in windows of --dt seconds (window i starts at i * hop; a tail "
                    "window is kept zero-padded when it holds at least half a window).",
    )
    e.add_argument("--encoder", required=True, help=_encoder_help())
    _weights(e)
    e.add_argument("--dt", type=float, default=1.0, metavar="S",
                   help="window length in seconds (default 1; --dt 10 makes a 10 s file one window)")
    e.add_argument("--hop", type=float, default=None, metavar="S", help="hop between windows, s (default: = --dt)")
    e.add_argument("--out", default=None, metavar="F.npz",
                   help="also write the embeddings (and logits, tags) to this .npz, atomically")
    e.add_argument("--json", action="store_true",
                   help='print {"encoder", "dt", "hop", "files", "windows", "embeddings" (per file, per window), ["tags"]}')
    e.add_argument("--tags", type=int, default=0, metavar="K",
                   help="add each file's top-K AudioSet labels (mean of the window sigmoid probabilities); "
                        "AudioSet-trained encoders only (efficientat_*)")
    e.add_argument("--labels", default=None, metavar="CSV",
                   help="AudioSet class_labels_indices.csv for --tags (default: the one beside --ckpt; never downloaded)")
    e.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    e.add_argument("--batch-size", type=int, default=32, help="windows per encoder forward (default 32)")
    e.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg; any rate, mixed to mono)")
    e.set_defaults(_run=_run_embed)


def run(args: argparse.Namespace) -> int | None:
    return args._run(args)


def _run_sweep(args: argparse.Namespace) -> int:
    from sp4sc.probes.probe import AGGREGATIONS, ProbeConfig
    from sp4sc.probes.sweep import SweepConfig, resolve_device, run_sweep, write_outputs

    if args.encoder not in _encoder_names():
        raise Sp4scError(f"--encoder {args.encoder!r}: choose one of {', '.join(_encoder_names())}")
    gpu = resolve_device(args.device).type == "cuda"
    out = args.out or str(Path("probe_results") / f"{args.encoder}_{args.dataset}")
    cfg = SweepConfig(
        encoder=args.encoder,
        dataset=args.dataset,
        root=args.root,
        dts=tuple(args.dt),
        hop=args.hop,
        ckpt=args.ckpt,
        random_init=args.random_init,
        init_seed=args.init_seed,
        seeds=args.seeds,
        compare=tuple(args.compare),
        out=out,
        cache_dir=None if args.no_cache else (args.cache_dir or _default_cache()),
        max_clips=args.max_clips,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers if args.workers is not None else _gpu_workers(gpu),
        cost_windows=args.cost_windows or (64 if gpu else 4),
        aggregations=tuple(args.aggregation or AGGREGATIONS),
        probe=ProbeConfig(hidden=args.hidden, epochs=args.epochs, batch_size=args.probe_batch_size,
                          lr=args.lr, weight_decay=args.weight_decay),
    )
    for path in cfg.compare:
        if not (Path(path).is_file() or (Path(path) / "cv.json").is_file()):
            raise Sp4scError(f"--compare {path}: neither a model file nor an `sp4sc cv` folder (with cv.json)")
    result = run_sweep(cfg)
    paths = write_outputs(result, out)
    result["outputs"] = paths
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from sp4sc.probes.sweep import format_tables

        print(format_tables(result))
        print(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from sp4sc.probes.bench import format_bench, run_bench
    from sp4sc.probes.encoders import load_encoder
    from sp4sc.probes.sweep import resolve_device

    if args.encoder not in _encoder_names():
        raise Sp4scError(f"--encoder {args.encoder!r}: choose one of {', '.join(_encoder_names())}")
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    bundle = load_encoder(args.encoder, ckpt=args.ckpt, random_init=args.random_init, seed=args.init_seed, device=device)
    result = run_bench(
        bundle, list(args.dt), clips=args.clips or (2048 if gpu else 4), clip_seconds=args.clip_seconds,
        batch_size=args.batch_size, raw_batches=args.raw_batches,
        raw_seconds=args.raw_seconds if args.raw_seconds is not None else (5.0 if gpu else 0.0),
        workers=args.workers if args.workers is not None else _gpu_workers(gpu),
    )
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from sp4sc.log import logger
    from sp4sc.probes.encoders import create_encoder, load_encoder
    from sp4sc.probes.files import (
        check_files, default_labels_path, embed_files, load_labels, save_npz, to_json, top_tags,
    )
    from sp4sc.probes.sweep import RANDOM_INIT_NOTE, check_dts, resolve_device

    if args.encoder not in _encoder_names():
        raise Sp4scError(f"--encoder {args.encoder!r}: choose one of {', '.join(_encoder_names())}")
    if args.out is not None and Path(args.out).suffix != ".npz":
        raise Sp4scError(f"--out {args.out}: must end in .npz (e.g. --out embeddings.npz)")
    if args.hop is not None and args.hop <= 0:
        raise Sp4scError(f"--hop {args.hop:g}: must be positive")
    if args.batch_size < 1:
        raise Sp4scError(f"--batch-size {args.batch_size}: must be positive")
    check_dts(create_encoder(args.encoder), [args.dt])  # before anything is built or read
    check_files(args.files)
    labels = None
    if args.tags:
        probe = create_encoder(args.encoder)
        if not probe.n_logits or probe.label_set != "audioset":
            raise Sp4scError(f"--tags: {args.encoder} has no AudioSet head; use an AudioSet-trained encoder (efficientat_*)")
        if not 1 <= args.tags <= probe.n_logits:
            raise Sp4scError(f"--tags {args.tags}: choose K between 1 and {probe.n_logits}")
        path = args.labels or default_labels_path(args.ckpt)
        if path is None:
            raise Sp4scError(
                "--tags: no AudioSet label file beside the checkpoint; pass --labels PATH to "
                "class_labels_indices.csv (a local file, never downloaded)"
            )
        labels = load_labels(path, probe.n_logits)
    device = resolve_device(args.device)
    bundle = load_encoder(args.encoder, ckpt=args.ckpt, random_init=args.random_init, seed=args.init_seed, device=device)
    if bundle.random_init:
        logger.warning(f"{bundle.name}: {RANDOM_INIT_NOTE}")
    result = embed_files(bundle, args.files, dt=args.dt, hop=args.hop, batch_size=args.batch_size)
    tags = top_tags(result, labels, args.tags) if labels is not None else None
    if args.out is not None:
        save_npz(args.out, result, tags)
    if args.json:
        print(json.dumps(to_json(result, tags)))
        return 0
    print(f"{result.encoder} ({result.weights[:23]}), {result.dim}-d, dt {result.dt:g} s, hop {result.hop:g} s")
    for i, (name, n) in enumerate(zip(result.files, result.windows)):
        print(f"{name}: {n} window{'s' if n != 1 else ''}")
        if tags is not None:
            print("    " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in tags[i]))
    if result.random_init:
        print(f"Note: {RANDOM_INIT_NOTE}.")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
