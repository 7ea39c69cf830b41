"""A cache of ``--help`` texts whose parser takes seconds to build.

``sp4sc fit --help`` is LightningCLI's: its parser is built from the signatures
of the Trainer, the LightningModule and the DataModule, which needs torch and
Lightning imported (8-15 s on two cores). Its text changes only when one of
these changes, so the first run stores it and later runs print the stored copy
in a few milliseconds. The same holds for any command whose help is slow to
build (``probe``, ``bench``); a help that builds in under :data:`SLOW_S` is never
stored.

The key of a stored text is a hash of everything the text depends on: the
command line, sp4sc's version and the size and modification time of every
source file of the package, the versions of torch, Lightning and jsonargparse,
the content of every recipe named with ``--config`` (bases included), the
terminal width and the environment variables that appear in defaults. A change
to any of them is a miss, and the help is built (and stored) again. Texts live
in ``$SP4SC_CACHE/help`` (default ``~/.cache/sp4sc/help``); ``SP4SC_NO_HELP_CACHE=1``
turns the cache off. A cache that cannot be read or written is ignored.

Before the cache, a plain ``sp4sc fit|validate|test|predict --help`` is answered from
the texts shipped with the package (:mod:`sp4sc.commands.statichelp`), so that the
first call after an install is fast too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

SLOW_S = 0.5
HELP_FLAGS = ("-h", "--help")
PACKAGE = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ("torch", "pytorch-lightning", "lightning", "jsonargparse", "hear21passt", "speechbrain")
ENV_KEYS = ("SP4SC_CACHE", "HOME", "COLUMNS")


def wants_help(argv: list[str]) -> bool:
    """``sp4sc COMMAND ... --help`` (a command's help, not ``sp4sc --help``)."""
    return len(argv) > 1 and any(a in HELP_FLAGS for a in argv[1:])


def cache_dir() -> Path:
    base = os.environ.get("SP4SC_CACHE") or str(Path.home() / ".cache" / "sp4sc")
    return Path(base) / "help"


def _versions() -> list[str]:
    from importlib import metadata

    out = []
    for name in DISTRIBUTIONS:
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=-")
    return out


def _configs(argv: list[str]) -> list[str]:
    """Content hashes of the recipes named with --config (and their bases)."""
    if "--config" not in argv and "-c" not in argv and not any(a.startswith("--config=") for a in argv):
        return []
    from sp4sc.commands.lightning import expand_configs

    expanded = expand_configs(argv[1:])
    paths = [expanded[i + 1] for i in range(len(expanded) - 1) if expanded[i] == "--config"]
    return [f"{p}:{hashlib.sha256(Path(p).read_bytes()).hexdigest()}" for p in paths]


def help_key(argv: list[str]) -> str:
    """The hash naming a stored help text (see the module docstring)."""
    import sp4sc

    h = hashlib.sha256()
    parts = [sp4sc.__version__, sys.version, sys.executable, "\0".join(argv),
             str(shutil.get_terminal_size().columns), *_versions(), *_configs(argv)]
    parts += [f"{k}={os.environ.get(k, '')}" for k in ENV_KEYS]
    for path in sorted(PACKAGE.rglob("*.py")):
        st = path.stat()
        parts.append(f"{path.relative_to(PACKAGE)}:{st.st_size}:{st.st_mtime_ns}")
    for part in parts:
        h.update(part.encode("utf-8", "replace") + b"\n")
    return h.hexdigest()[:32]


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream = stream
        self.buf = io.StringIO()

    def write(self, text: str) -> int:
        self.buf.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run(argv: list[str], dispatch: Callable[[list[str]], int]) -> int:
    """``dispatch(argv)``, but a command's ``--help`` comes from the cache when it is there.

    A miss runs ``dispatch`` with stdout copied; a help that exits 0 and took
    longer than :data:`SLOW_S` is stored for next time.
    """
    if not wants_help(argv) or os.environ.get("SP4SC_NO_HELP_CACHE"):
        return dispatch(argv)
    from sp4sc.commands import statichelp  # fit/validate/test/predict --help: shipped texts, no torch import

    shipped = statichelp.lookup(argv)
    if shipped is not None:
        sys.stdout.write(shipped)
        return 0
    try:
        key = help_key(argv)
        stored = cache_dir() / f"{key}.txt"
        text = stored.read_text(encoding="utf-8") if stored.is_file() else None
    except Exception:  # noqa: BLE001 - a broken cache or recipe: build the help as usual
        return dispatch(argv)
    if text is not None:
        sys.stdout.write(text)
        return 0
    tee = _Tee(sys.stdout)
    t0 = time.perf_counter()
    sys.stdout = tee
    code = 1
    try:
        code = dispatch(argv)
    except SystemExit as exc:  # argparse and jsonargparse exit after printing the help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        raise
    finally:
        sys.stdout = tee.stream
        if code == 0 and time.perf_counter() - t0 > SLOW_S and tee.buf.getvalue():
            _store(stored, tee.buf.getvalue())
    return code


def _store(path: Path, text: str) -> None:
    try:
        from sp4sc.fileio import write_text

        write_text(path, text)
    except Exception:  # noqa: BLE001 - no cache is no error
        pass
