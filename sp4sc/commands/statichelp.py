"""Stored ``--help`` texts of ``sp4sc fit|validate|test|predict``, printed without importing torch.

LightningCLI builds these helps from the signatures of the Trainer, the
LightningModule and the DataModule: torch and Lightning must be imported first
(3.5 s on two cores, most of it ``import pytorch_lightning``), so the first
``sp4sc fit --help`` after an install was slow even with :mod:`helpcache`.
The four texts are generated once, stored in ``sp4sc/commands/lightning_help/``
(shipped with the package) and printed as they are for a plain
``sp4sc COMMAND --help`` (no other argument).

A stored text is used only while its fingerprint holds: the Python minor
version, the versions of the packages that shape the text (torch, Lightning,
jsonargparse and its docstring readers) and the source it is read from
(:data:`SOURCES`: the docstring and ``__init__`` of the LightningModule and of the
DataModule, and the CLI module). Anything else (another
Lightning, an edited LightningModule docstring, ``--config R --help``) builds
the help as before, through the cache. ``tests/test_help.py`` fails when the
stored texts are out of date; regenerate them with::

    python -m sp4sc.commands.statichelp --write

They are generated at :data:`COLUMNS` columns, the width of a default terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

COMMANDS = ("fit", "validate", "test", "predict")
FOLDER = Path(__file__).resolve().parent / "lightning_help"
INDEX = "index.json"
PACKAGE = Path(__file__).resolve().parents[1]
# what LightningCLI turns into the help: module (path in the package) -> the class whose docstring and
# __init__ (signature, docstring, body) it reads, or None for the whole module
SOURCES = {"training/lit.py": "SceneClassifier", "data/datamodule.py": "SceneDataModule",
           "commands/lightning.py": None}
DISTRIBUTIONS = ("torch", "pytorch-lightning", "jsonargparse", "docstring-parser", "typeshed-client")
COLUMNS = 80
HELP_FLAGS = ("-h", "--help")


def fingerprint() -> dict:
    """What the stored texts depend on (see the module docstring); cheap: no torch import."""
    from importlib import metadata

    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    sources = {rel: _source_hash(PACKAGE / rel, cls) for rel, cls in SOURCES.items()}
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "versions": versions, "sources": sources}


def _source_hash(path: Path, cls: str | None) -> str | None:
    """Hash of ``cls``'s docstring and ``__init__`` in ``path`` (the whole file when ``cls`` is None or absent).

    Edits elsewhere in the module (a training step, another class) leave the help and this hash
    alone, so the shipped texts stay valid while the module's other code changes.
    """
    import ast

    try:
        source = path.read_text(encoding="utf-8")
    except OSError:
        return None
    part = source
    if cls is not None:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tree = None
        node = next((n for n in (tree.body if tree else []) if isinstance(n, ast.ClassDef) and n.name == cls), None)
        init = next((n for n in (node.body if node else []) if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                    None)
        if init is not None:
            part = f"{ast.get_docstring(node, clean=False)}\0{ast.get_source_segment(source, init)}"
    return hashlib.sha256(part.encode("utf-8")).hexdigest()[:16]


def lookup(argv: list[str]) -> str | None:
    """The stored help of ``argv`` (``["fit", "--help"]``), or None when there is none or it is out of date."""
    if len(argv) != 2 or argv[0] not in COMMANDS or argv[1] not in HELP_FLAGS:
        return None
    try:
        index = json.loads((FOLDER / INDEX).read_text(encoding="utf-8"))
        if index.get("fingerprint") != fingerprint() or index.get("columns") != COLUMNS:
            return None
        return (FOLDER / f"{argv[0]}.txt").read_text(encoding="utf-8")
    except (OSError, ValueError):  # not shipped, unreadable: build the help as usual
        return None


_BUILD = """
import contextlib, io, json, sys
sys.argv[0] = "sp4sc"  # the usage line names the console script, whatever ran this
from sp4sc.cli import main
out = {}
for command in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main([command, "--help"])
        except SystemExit as exc:
            code = exc.code
    if code not in (0, None):
        raise SystemExit(f"sp4sc {command} --help exited with {code}")
    out[command] = buf.getvalue()
sys.stdout.write(json.dumps(out))
"""


def build() -> dict[str, str]:
    """Build the four helps the slow way, in a child process at :data:`COLUMNS` columns (a few seconds)."""
    env = {**os.environ, "COLUMNS": str(COLUMNS), "SP4SC_NO_HELP_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-c", _BUILD, *COMMANDS], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        from sp4sc.errors import Sp4scError

        raise Sp4scError(f"building the Lightning helps failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def write() -> Path:
    """Regenerate the stored texts and their fingerprint (each file written atomically); returns the folder."""
    from sp4sc.fileio import write_text

    texts = build()
    for command, text in texts.items():
        write_text(FOLDER / f"{command}.txt", text)
    write_text(FOLDER / INDEX, json.dumps({"columns": COLUMNS, "fingerprint": fingerprint(),
                                           "regenerate": "python -m sp4sc.commands.statichelp --write"},
                                          indent=1, sort_keys=True) + "\n")
    return FOLDER


def check() -> list[str]:
    """What is out of date: ``[]`` when the fingerprint holds and every stored text equals a fresh build."""
    problems = []
    try:
        index = json.loads((FOLDER / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{FOLDER / INDEX}: {exc}"]
    if index.get("fingerprint") != fingerprint():
        problems.append(f"fingerprint: stored {index.get('fingerprint')}, now {fingerprint()}")
    fresh = build()
    for command in COMMANDS:
        path = FOLDER / f"{command}.txt"
        stored = path.read_text(encoding="utf-8") if path.is_file() else None
        if stored != fresh[command]:
            problems.append(f"{path.name}: differs from `sp4sc {command} --help`")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m sp4sc.commands.statichelp --write`` (regenerate) or ``--check`` (exit 1 when out of date)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        print(f"wrote {write()}")
        return 0
    if argv == ["--check"]:
        problems = check()
        for p in problems:
            print(p)
        if problems:
            print("regenerate with: python -m sp4sc.commands.statichelp --write")
        return 1 if problems else 0
    print("usage: python -m sp4sc.commands.statichelp --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
