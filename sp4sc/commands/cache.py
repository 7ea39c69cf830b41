"""``sp4sc cache``: build the feature cache a recipe's data section needs (resumable).

    sp4sc cache --config recipes/sp4sc.yaml --data.root PATH [--data.KEY VALUE ...]

The recipe's ``data:`` section (LightningCLI layout: the init arguments of
:class:`sp4sc.data.datamodule.SceneDataModule`, directly or under
``init_args:``) is read after expanding the recipe's ``# bases:`` line, exactly
as ``sp4sc fit`` does; ``--data.KEY VALUE`` flags override it. The cache of
every clip the train, validation, test and predict splits use is built (or
completed, after a kill) in the data module's ``cache_dir``.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path
from typing import Any

from sp4sc.errors import Sp4scError


def _init_params() -> dict[str, inspect.Parameter]:
    from sp4sc.data.datamodule import SceneDataModule

    params = inspect.signature(SceneDataModule.__init__).parameters
    return {k: p for k, p in params.items() if k != "self"}


DATAMODULE_SOURCE = Path(__file__).resolve().parents[1] / "data" / "datamodule.py"


def data_options() -> list[tuple[str, str, str]]:
    """``(name, default, description)`` of each SceneDataModule argument, read from its source.

    Building ``--help`` must not import the data module (torch and Lightning take
    seconds); its ``__init__`` signature and the ``Args:`` of its docstring are read
    with :mod:`ast` instead. Falls back to importing it when the source is not there.
    """
    import ast

    try:
        tree = ast.parse(DATAMODULE_SOURCE.read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SceneDataModule")
        init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    except (OSError, SyntaxError, StopIteration):
        return [(name, "" if p.default is inspect.Parameter.empty else repr(p.default), "")
                for name, p in _init_params().items()]
    docs = _args_section(ast.get_docstring(cls) or "")
    args = [a.arg for a in init.args.args[1:]] + [a.arg for a in init.args.kwonlyargs]
    defaults = [None] * (len(init.args.args) - 1 - len(init.args.defaults)) + list(init.args.defaults)
    defaults += list(init.args.kw_defaults)
    out = []
    for name, node in zip(args, defaults):
        try:
            default = "" if node is None else repr(ast.literal_eval(node))
        except ValueError:
            default = ast.unparse(node)
        out.append((name, default, docs.get(name, "")))
    return out


def _args_section(doc: str) -> dict[str, str]:
    """``{name: text}`` from a Google-style ``Args:`` section (continuation lines joined)."""
    out: dict[str, str] = {}
    current = None
    inside = False
    indent = None  # of the entries; deeper lines continue the current one
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            inside = True
            continue
        if not inside or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:  # the next section
            break
        head, sep, text = stripped.partition(": ")
        if depth == indent and sep and head.isidentifier():
            current = head
            out[current] = text.strip()
        elif current:
            out[current] += " " + stripped
    return {k: v.replace("``", "") for k, v in out.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", required=True,
                        help="recipe YAML (repeatable; later files override earlier ones)")
    for name, default, doc in data_options():
        text = f"override data.{name}" + (f": {doc.rstrip('.')}" if doc else "")
        if default and "default" not in doc:
            text += f" (default {default})"
        parser.add_argument(f"--data.{name}", dest=f"data__{name}", default=argparse.SUPPRESS, metavar="VALUE",
                            help=text.replace("%", "%%"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _data_section(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise Sp4scError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict):
        raise Sp4scError(f"--config {path}: the top level must be a mapping with a data: section")
    data = doc.get("data") or {}
    if not isinstance(data, dict):
        raise Sp4scError(f"--config {path}: data: must be a mapping of SceneDataModule arguments")
    if "init_args" in data or "class_path" in data:
        cls = data.get("class_path", "sp4sc.data.datamodule.SceneDataModule")
        if not str(cls).endswith("SceneDataModule"):
            raise Sp4scError(f"--config {path}: data.class_path {cls!r}: `sp4sc cache` knows only SceneDataModule")
        data = data.get("init_args") or {}
    return dict(data)


def recipe_data_args(configs: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The merged SceneDataModule arguments of recipes (bases expanded) and overrides; unknown keys are an error."""
    import yaml

    from sp4sc.commands.lightning import expand_configs

    argv: list[str] = []
    for c in configs:
        argv += ["--config", c]
    expanded = expand_configs(argv)
    files = [Path(expanded[i + 1]) for i in range(0, len(expanded), 2) if expanded[i] == "--config"]
    params = _init_params()
    merged: dict[str, Any] = {}
    for f in files:
        for key, value in _data_section(f).items():
            if key not in params:
                raise Sp4scError(f"--config {f}: data.{key}: unknown key; SceneDataModule takes {', '.join(params)}")
            merged[key] = value
    for key, raw in overrides.items():
        merged[key] = yaml.safe_load(raw) if isinstance(raw, str) else raw
    _check_types(merged, f"--config {files[-1]}" if files else "--data")
    return merged


def _check_types(merged: dict[str, Any], source: str) -> None:
    """Each value against SceneDataModule's annotation (int, float, str, bool, Optional): one line naming the key."""
    import typing

    from sp4sc.data.datamodule import SceneDataModule

    hints = typing.get_type_hints(SceneDataModule.__init__)
    simple = (int, float, str, bool, type(None))
    for key, value in merged.items():
        hint = hints.get(key)
        allowed = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        if hint is None or any(t not in simple for t in allowed):
            continue
        ok = any(
            (t is type(None) and value is None)
            or (t is bool and isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is str and isinstance(value, str))
            for t in allowed
        )
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise Sp4scError(f"{source}: data.{key}: {value!r} is not {names}")


def run(args: argparse.Namespace) -> int:
    from sp4sc.data.datamodule import SceneDataModule

    overrides = {k[len("data__"):]: v for k, v in vars(args).items() if k.startswith("data__")}
    kwargs = recipe_data_args(args.config, overrides)
    if args.no_progress:
        kwargs["progress"] = False
    try:
        dm = SceneDataModule(**kwargs)
    except TypeError as exc:
        raise Sp4scError(f"--config {args.config[-1]}: data: {exc}") from exc
    start = time.perf_counter()
    cache = dm.build_cache()
    seconds = time.perf_counter() - start
    n, frames, mels = cache.shape
    size = n * frames * mels * 2
    print(f"feature cache: {cache.dir}")
    print(f"  {n} clips x {frames} frames x {mels} mels, float16, {size / 2**20:.1f} MiB; front end "
          f"{dm.frontend_cfg.name} (digest {dm.frontend_cfg.digest()}); {seconds:.1f} s")
    return 0
