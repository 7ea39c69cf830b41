"""``sp4sc demo``: the whole job on the embedded toy data, on a CPU, in a few minutes.

With no arguments: generate the toy dataset (TAU2020 layout), build its
feature cache, train ``recipes/demo.yaml`` (SP4SC on 2 s clips with the small
``demo`` front end), evaluate the best checkpoint on the toy evaluation split,
and print a summary table (accuracy, log loss, per-device accuracy,
parameters, time per step). Output goes to ``--out`` (default ``runs/demo``):
``checkpoints/{best,last}.ckpt``, ``model.pt`` (an sp4sc model file),
``confusion.png`` and ``metrics.md`` (the test split, :mod:`sp4sc.training.report`),
``lightning_logs/`` (TensorBoard), ``export/`` (ONNX), ``submissions/`` and
``summary.json``. The steps after training live in :mod:`sp4sc.commands.demo_steps`.

How the demo is built -- and how to add a step
----------------------------------------------
The demo is the list :data:`STEPS` of ``(name, function, description)``;
each function takes the shared context dict ``ctx`` and returns nothing. Steps
run in order, each timed; ``--skip name,...`` leaves some out. To add a step
(fold, budget, export, parity, edge runner, submission...), write
``def step_x(ctx: dict) -> None`` here (or in your module and wrap it here),
insert ``("x", step_x, "one line")`` in :data:`STEPS` after the step whose
outputs it needs, read what it needs from ``ctx``, and report with
``ctx["echo"](line)`` and ``ctx["summary"].append((label, value))`` (rows
of the final table, both strings). Keys set by the built-in steps:

==================  ===================================================================
key                 set by / meaning
==================  ===================================================================
``args``            argparse namespace of ``sp4sc demo``
``out``             Path of the run folder (created)
``echo``            print one line (rich console)
``console``         the rich Console
``seed``            int seed
``summary``         list of (label, value) rows printed at the end
``times``           dict step name -> seconds
``cli``             "data": the parsed LightningCLI (``cli.trainer``, ``cli.model``, ``cli.datamodule``)
``datamodule``      "data": the :class:`sp4sc.data.datamodule.SceneDataModule`
``toy_root``        "data": Path of the toy dataset (TAU2020 layout; fold1_test = evaluation list)
``frontend``        "data": the :class:`sp4sc.frontend.features.FrontEndConfig`
``cache``           "cache": the :class:`sp4sc.data.cache.FeatureCache`
``model``           "train": the trained :class:`sp4sc.training.lit.SceneClassifier`
``best_ckpt``       "train": Path of the best Lightning checkpoint (lowest val log loss)
``model_file``      "evaluate": Path of ``model.pt`` (:func:`sp4sc.models.checkpoint.save_model`),
                    what ``export``/``infer``/``submit`` take (``load_model`` reads both)
``results``         "evaluate": DCASE results dict (:func:`sp4sc.metrics.dcase_results` layout)
``params``          "evaluate": parameter count of the trained (unfolded) backbone
``figures``         "evaluate": paths of ``confusion.png`` and ``metrics.md``
==================  ===================================================================
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from sp4sc.errors import Sp4scError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = REPO_ROOT / "recipes" / "demo.yaml"

Step = tuple[str, Callable[[dict], None], str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="training recipe (default: recipes/demo.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's max_epochs")
    parser.add_argument("--toy-n", type=int, default=None,
                        help="toy clips per scene and device (default: the toy dataset's, 12 -> 360 clips)")
    parser.add_argument("--duration", type=float, default=None, help="toy clip length in seconds (default 2)")
    parser.add_argument("--toy-root", default=None,
                        help="where the toy dataset lives (default: $SP4SC_CACHE or ~/.cache/sp4sc)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of the training run, so reruns train the same model (default 0)")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out: " + ", ".join(
        name for name, _, _ in STEPS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override, e.g. --set model.lr=1e-3 (repeatable)")


# -------------------------------------------------------------------- steps

def step_data(ctx: dict) -> None:
    """Parse the recipe and generate the toy dataset."""
    from sp4sc.commands.lightning import build_cli

    args = ctx["args"]
    overrides = [
        "--trainer.default_root_dir", str(ctx["out"]),
        "--seed_everything", str(ctx["seed"]),
        "--data.dataset", "toy",
        "--trainer.enable_model_summary", "false",
    ]
    if args.epochs is not None:
        overrides += ["--trainer.max_epochs", str(args.epochs)]
    if args.toy_n is not None:
        overrides += ["--data.toy_n_per_class_device", str(args.toy_n)]
    if args.duration is not None:
        overrides += ["--data.toy_duration", str(args.duration), "--data.duration", str(args.duration)]
    if args.toy_root is not None:
        overrides += ["--data.root", str(args.toy_root)]
    for item in args.set:
        if "=" not in item:
            raise Sp4scError(f"--set {item!r}: expected KEY=VALUE, e.g. model.lr=1e-3")
        key, value = item.split("=", 1)
        overrides += [f"--{key}", value]
    cli = build_cli(["--config", str(args.recipe), *overrides])
    dm = cli.datamodule
    ctx["cli"], ctx["datamodule"] = cli, dm
    ctx["toy_root"] = Path(dm.dataset_root())
    ctx["frontend"] = dm.frontend_cfg
    index = dm.index()
    sizes = {name: len(clips) for name, clips in dm.split_clips().items()}
    ctx["echo"](f"toy data: {ctx['toy_root']} ({len(index.all_clips())} clips; train {sizes['train']}, "
                f"evaluate {sizes['val']}, test {sizes['predict']})")
    ctx["summary"].append(("data", f"toy, {sizes['train']} train / {sizes['val']} evaluate clips"))


def step_cache(ctx: dict) -> None:
    """Build (or reuse) the log-mel feature cache."""
    dm = ctx["datamodule"]
    ctx["cache"] = cache = dm.build_cache()
    cfg = ctx["frontend"]
    ctx["echo"](f"feature cache: {len(cache)} clips, front end {cfg.name!r} "
                f"({cfg.n_frames} frames x {cfg.n_mels} mels per {cfg.duration:g} s clip)")


def step_train(ctx: dict) -> None:
    """Train the recipe on the CPU."""
    cli = ctx["cli"]
    trainer, model = cli.trainer, cli.model
    trainer.fit(model, datamodule=ctx["datamodule"])
    ctx["model"] = model
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        raise Sp4scError("training wrote no checkpoint; is checkpointing disabled in the recipe?")
    ctx["best_ckpt"] = Path(best)
    ctx["echo"](f"trained {trainer.current_epoch} epochs; best checkpoint {best}")


def step_evaluate(ctx: dict) -> None:
    """Test the best checkpoint on the toy evaluation split; write model.pt."""
    from sp4sc.models.checkpoint import save_model

    cli, model = ctx["cli"], ctx["model"]
    cli.trainer.test(model, datamodule=ctx["datamodule"], ckpt_path=str(ctx["best_ckpt"]), verbose=False)
    results = dict(model.reports["test"])
    ctx["results"] = results
    ctx["params"] = sum(p.numel() for p in model.backbone.parameters())
    ctx["model_file"] = ctx["out"] / "model.pt"
    save_model(ctx["model_file"], model.backbone, model.model_spec())
    o = results["overall"]
    ctx["summary"].append(("accuracy (class-averaged, DCASE)", f"{100 * o['accuracy']:.1f} %"))
    ctx["summary"].append(("accuracy (all clips)", f"{100 * o['micro_accuracy']:.1f} %"))
    ctx["summary"].append(("log loss", f"{o['logloss']:.3f}"))
    for dev, r in results["device_wise"].items():
        ctx["summary"].append((f"accuracy, device {dev}", f"{100 * r['accuracy']:.1f} %"))
    ctx["summary"].append(("parameters (unfolded)", f"{ctx['params']:,}"))
    ctx["echo"](f"model file: {ctx['model_file']}")
    from sp4sc.training.report import write_eval_report

    md, png = write_eval_report(results, model.classes, ctx["out"], title="sp4sc demo: toy evaluation split")
    ctx["figures"] = [p for p in (png, md) if p is not None]
    ctx["echo"](f"confusion matrix and metrics table: {', '.join(str(p) for p in ctx['figures'])}")


def _later_step(name: str) -> Callable[[dict], None]:
    """A step of :mod:`sp4sc.commands.demo_steps` (``step_<name>``), imported only when it runs."""

    def step(ctx: dict) -> None:
        from sp4sc.commands import demo_steps

        getattr(demo_steps, f"step_{name}")(ctx)

    step.__name__ = f"step_{name}"
    return step


STEPS: list[Step] = [
    ("data", step_data, "generate the toy dataset, parse the recipe"),
    ("cache", step_cache, "build the log-mel feature cache"),
    ("train", step_train, "train the demo recipe on the CPU"),
    ("evaluate", step_evaluate, "test the best checkpoint; write model.pt"),
    # sp4sc/commands/demo_steps.py: they need model_file
    ("fold", _later_step("fold"), "fold BatchNorm; folded == unfolded on toy clips"),
    ("budget", _later_step("budget"), "parameters, bytes, MACs; DCASE 2021 budget check"),
    ("export", _later_step("export"), "ONNX export (fp32 + fp16) with parity check"),
    ("parity", _later_step("parity"), "ONNX Runtime vs torch at three shapes"),
    ("edge", _later_step("edge"), "torch-free edge runner on two clips vs sp4sc infer"),
    ("submit", _later_step("submit"), "write and validate a submission package for the toy evaluation split"),
]
REQUIRED = ("data", "cache", "train", "evaluate")


# ---------------------------------------------------------------------- run

def run_steps(ctx: dict, steps: list[Step]) -> None:
    """Run ``steps`` in order, timing each into ``ctx["times"]``."""
    for name, fn, description in steps:
        ctx["console"].rule(f"[bold]{name}[/]: {description}")
        t0 = time.perf_counter()
        fn(ctx)
        ctx["times"][name] = time.perf_counter() - t0


def summary_table(ctx: dict):
    """The final rich table: the steps' summary rows, then the time per step."""
    from rich.table import Table

    table = Table(title="sp4sc demo")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for label, value in ctx["summary"]:
        table.add_row(label, value)
    for name, sec in ctx["times"].items():
        table.add_row(f"time: {name}", f"{sec:.1f} s")
    table.add_row("time: total", f"{sum(ctx['times'].values()):.1f} s")
    return table


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    names = [name for name, _, _ in STEPS]
    unknown = skip - set(names)
    if unknown:
        raise Sp4scError(f"--skip: unknown steps {sorted(unknown)}; steps are {', '.join(names)}")
    if skip & set(REQUIRED):
        raise Sp4scError(f"--skip: {', '.join(sorted(skip & set(REQUIRED)))} cannot be skipped "
                         "(later steps need their outputs)")
    if not Path(args.recipe).is_file():
        raise Sp4scError(f"--recipe {args.recipe}: not found; run the demo from a source checkout "
                         "(pip install -e .) or pass --recipe path/to/demo.yaml")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Sp4scError(f"--out {out}: cannot create the folder ({exc.strerror})") from exc
    ctx: dict[str, Any] = {"args": args, "out": out, "console": console, "echo": console.print,
                           "seed": args.seed, "summary": [], "times": {}}
    run_steps(ctx, [s for s in STEPS if s[0] not in skip])
    console.print(summary_table(ctx))
    from sp4sc.machine import line
    from sp4sc.fileio import write_json

    console.print(line())
    for text in where_to_look(ctx):
        console.print(text)
    write_json(out / "summary.json", {
        "results": ctx.get("results"), "params": ctx.get("params"), "times_s": ctx["times"],
        "total_s": sum(ctx["times"].values()), "machine": line(),
        "rows": [list(r) for r in ctx["summary"]],
        "figures": [str(p) for p in ctx.get("figures", [])],
    })
    return 0


def where_to_look(ctx: dict) -> list[str]:
    """The closing lines: the figures of this run and the TensorBoard command for its curves."""
    out = Path(ctx["out"])
    lines = []
    if ctx.get("figures"):
        lines.append("figures: " + ", ".join(str(p) for p in ctx["figures"]) +
                     " (confusion matrix: counts and row-normalised; metrics per class and device)")
    logs = out / "lightning_logs"
    lines.append(f"training curves: tensorboard --logdir {logs if logs.is_dir() else out}")
    return lines
