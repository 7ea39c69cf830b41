"""``sp4sc complexity``: parameters, bytes and MACs of the folded model; exit 3 when over budget.

    sp4sc complexity --model sp4sc                       # registry model at its front end (sp4asc)
    sp4sc complexity --model cnn6 --frontend panns --duration 1
    sp4sc complexity --config recipes/sp4sc.yaml         # backbone + front end of a recipe
    sp4sc complexity --ckpt runs/sp4sc/checkpoints/best.ckpt --json
    sp4sc complexity --rules dcase2024 --model cpmobile --duration 1   # 128 kB as stored, 30 M NeSsi MACs per 1 s

``--rules`` picks an edition's limits and counting (:data:`sp4sc.deploy.complexity.RULES`):
``dcase2021`` (the default: 65,536 parameters and 131,072 bytes at fp16),
``dcase2024`` and ``dcase2025`` (parameter bytes at ``--precision`` <= 128,000
and <= 30,000,000 MACs per 1 s clip counted as NeSsi does). Exit 3 when over.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sp4sc.constants import BUDGET_BYTES, BUDGET_MACS_PER_SECOND, BUDGET_PARAMS, SCENES
from sp4sc.errors import BudgetExceeded, Sp4scError

_BASES = re.compile(r"^#\s*bases:\s*(.+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="model file or Lightning checkpoint (sp4sc model spec inside)")
    src.add_argument("--model", help="registry model name (see sp4sc.models.list_models())")
    src.add_argument("--config", help="recipe YAML: model.backbone(+_kwargs) and data.frontend/duration are read")
    parser.add_argument("--frontend", help="front-end preset for --model (default: the model's own)")
    parser.add_argument("--n-classes", type=int, default=len(SCENES), help="classes for --model (default 10)")
    parser.add_argument("--duration", type=float, help="clip length in seconds for the MAC count (default: the front end's)")
    parser.add_argument("--rules", choices=("dcase2021", "dcase2024", "dcase2025"), default="dcase2021",
                        help="edition whose limits and counting apply (default dcase2021; 2024/2025: 128 kB as stored, "
                             "30 M NeSsi MACs per 1 s)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                        help="storage precision of the byte count (default fp16, as the DCASE baselines ship)")
    parser.add_argument("--max-params", type=int, default=None,
                        help=f"parameter limit (default: the edition's; dcase2021 {BUDGET_PARAMS:,})")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help=f"byte limit (default: the edition's; dcase2021 {BUDGET_BYTES:,} at fp16, 2024/2025 128,000)")
    parser.add_argument(
        "--max-macs", type=_macs, default=None, metavar="N",
        help=f"MAC limit for a 1 s clip, torchinfo count, e.g. 30M (DCASE 2022+: {BUDGET_MACS_PER_SECOND:,}); default: none",
    )
    parser.add_argument("--no-budget", action="store_true", help="report only; do not fail when over budget")
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC counters")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _macs(text: str) -> int:
    t = text.strip().upper().replace("_", "").replace(",", "")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a MAC count: {text!r} (e.g. 30M or 30000000)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value)


def _section(doc: dict, key: str) -> dict[str, Any]:
    """``doc[key]`` with LightningCLI's ``init_args`` nesting flattened."""
    sec = doc.get(key) or {}
    if not isinstance(sec, dict):
        return {}
    if isinstance(sec.get("init_args"), dict):
        merged = {k: v for k, v in sec.items() if k not in ("init_args", "class_path")}
        merged.update(sec["init_args"])
        sec = merged
    return sec


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    import yaml

    if not path.is_file():
        raise Sp4scError(f"--config {path}: no such file")
    if path.resolve() in seen:
        raise Sp4scError(f"--config {path}: its bases include itself")
    text = path.read_text(encoding="utf-8")
    docs: list[dict] = []
    for line in text.splitlines():  # the recipes' "# bases: a.yaml b.yaml" line (see commands/lightning.py)
        m = _BASES.match(line.strip())
        if m:
            for base in m.group(1).split():
                docs += _read_yaml(path.parent / base, seen + (path.resolve(),))
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise Sp4scError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict):
        raise Sp4scError(f"--config {path}: expected a mapping with model: and data: sections")
    return docs + [doc]


def model_from_config(path: str | Path):
    """(model, front end) described by a recipe: ``model.backbone``/``backbone_kwargs``, ``data.frontend``/``duration``.

    Accepts the flat layout and LightningCLI's ``class_path``/``init_args`` nesting; follows
    the ``# bases:`` line; later files override earlier ones, section by section.
    """
    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model, model_entry

    path = Path(path)
    model_sec: dict[str, Any] = {}
    data_sec: dict[str, Any] = {}
    for doc in _read_yaml(path):
        model_sec.update(_section(doc, "model"))
        data_sec.update(_section(doc, "data"))
    name = model_sec.get("backbone")
    if not isinstance(name, str):
        raise Sp4scError(f"--config {path}: no model.backbone (a registry name such as sp4sc) in the recipe")
    kwargs = dict(model_sec.get("backbone_kwargs") or {})
    frontend_name = data_sec.get("frontend") or model_entry(name).frontend
    overrides = {}
    if data_sec.get("duration") is not None:
        try:
            overrides["duration"] = float(data_sec["duration"])
        except (TypeError, ValueError):
            raise Sp4scError(f"--config {path}: data.duration: {data_sec['duration']!r} is not a number of seconds") from None
    cfg = frontend_preset(str(frontend_name), **overrides)
    kwargs.setdefault("n_mels", cfg.n_mels)
    kwargs.setdefault("n_classes", len(SCENES))  # every dataset here has 10 classes (TAU scenes, ESC-10)
    return create_model(name, **kwargs), cfg


def _resolve(args: argparse.Namespace):
    from sp4sc.frontend.features import frontend_preset

    if args.ckpt:
        from sp4sc.models.checkpoint import load_model

        loaded = load_model(args.ckpt)
        return loaded.model, loaded.frontend
    if args.config:
        return model_from_config(args.config)
    from sp4sc.models import create_model, model_entry

    cfg = frontend_preset(args.frontend or model_entry(args.model).frontend)
    return create_model(args.model, n_classes=args.n_classes, n_mels=cfg.n_mels), cfg


def run(args: argparse.Namespace) -> int:
    from sp4sc.deploy.complexity import check_budget, complexity_report, format_report

    if args.frontend and not args.model:
        raise Sp4scError("--frontend: only with --model (a checkpoint or recipe names its own front end)")
    if args.duration is not None and not args.duration > 0:
        raise Sp4scError(f"--duration: must be positive, got {args.duration}")
    if args.max_macs is not None and args.no_macs:
        raise Sp4scError("--max-macs: needs the MAC count; drop --no-macs")
    model, cfg = _resolve(args)
    report = complexity_report(model, cfg, duration=args.duration, count_macs=not args.no_macs)
    rules = getattr(args, "rules", "dcase2021") or "dcase2021"
    if rules != "dcase2021":
        return _run_rules(args, model, report, rules)
    # dcase2021 counts bytes at fp16; --precision int8 checks --max-bytes against the bytes as an int8
    # export stores them (weights 1 B, biases int32, per-channel scales: complexity.int8_stored_bytes)
    precision = getattr(args, "precision", None) or "fp16"
    # 2021's limit is 128 KB of parameters; 65,536 parameters is that at fp16. At int8 the bytes alone decide.
    default_params = BUDGET_PARAMS if precision == "fp16" else None
    limits = {"max_params": default_params if args.max_params is None else args.max_params,
              "max_bytes": BUDGET_BYTES if args.max_bytes is None else args.max_bytes,
              "max_macs_per_s": args.max_macs, "precision": precision}
    error: BudgetExceeded | None = None
    if args.no_budget:
        report["budget"] = {"checked": False, "limits": limits}
    else:
        try:
            check_budget(report, **limits)
            report["budget"] = {"checked": True, "within_budget": True, "limits": limits}
        except BudgetExceeded as exc:
            report["budget"] = {"checked": True, "within_budget": False, "limits": limits, "message": str(exc)}
            error = exc
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.no_budget:
            print("budget              not checked (--no-budget)")
        elif error is None:
            params = "no parameter limit" if limits["max_params"] is None else f"{limits['max_params']:,} params"
            print(f"budget              within ({params}, {limits['max_bytes']:,} bytes at {precision}"
                  + (f", {args.max_macs:,} MACs per 1 s" if args.max_macs else "") + ")")
    if error is not None:
        raise error
    return 0


def _run_rules(args: argparse.Namespace, model, report: dict[str, Any], rules: str) -> int:
    """``--rules dcase2024|dcase2025``: bytes as stored and NeSsi MACs per 1 s against the edition's limits."""
    from sp4sc.deploy.complexity import apply_rules, edition_rules, format_report, format_rules

    verdict = apply_rules(report, model, edition_rules(rules), precision=args.precision, max_params=args.max_params,
                          max_bytes=args.max_bytes, max_macs_per_s=args.max_macs, count_macs=not args.no_macs)
    report["budget"] = {"checked": not args.no_budget, "within_budget": verdict["within"], "limits": verdict["limits"]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(format_rules(verdict))
        if args.no_budget and not verdict["within"]:
            print("budget              not enforced (--no-budget)")
    if not verdict["within"] and not args.no_budget:
        raise BudgetExceeded(f"{report['model']} is over the {rules} limits: " + "; ".join(verdict["over"])
                             + "; choose a smaller model or pass --no-budget to report only")
    return 0
