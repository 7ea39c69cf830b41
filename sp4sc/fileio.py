"""Atomic file and folder writes: a reader never sees half a file.

Everything sp4sc writes goes through these helpers: the content is written to a
temporary name in the destination folder, flushed, and renamed into place, so a
kill or a full disk leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from sp4sc.errors import Sp4scError


def _explain_oserror(path: Path, exc: OSError) -> Sp4scError:
    if exc.errno == errno.ENOSPC:
        return Sp4scError(f"{path}: no space left on the device; free some space or choose another output folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Sp4scError(f"{path}: cannot write here ({exc.strerror}); choose a writable output folder")
    return Sp4scError(f"{path}: cannot write ({exc.strerror or exc})")


def _tmp_prefix(path: Path) -> str:
    """Prefix of the temporary names beside ``path``: host and pid say whose they are."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(path: Path) -> None:
    """Remove temporaries beside ``path`` left by a killed process of this host.

    A kill between creating a temporary and renaming it leaves a hidden
    ``.<name>.<host>-<pid>.*.tmp``; it never looks complete, and the next write
    of the same target removes it once its process is gone. Temporaries of live
    processes, or of other hosts sharing the folder, are left alone.
    """
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(socket.gethostname())}-(\d+)\..*\.tmp$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask races with threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        os.close(fd)
    except OSError as exc:
        raise _explain_oserror(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _explain_oserror(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def to_plain(obj):
    """A JSON/YAML-safe copy of ``obj``.

    Dict keys become strings, tuples lists, numpy/torch scalars and arrays plain
    Python values (through ``tolist``); anything else unknown becomes its ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "tolist"):  # numpy and torch scalars and arrays
        return to_plain(obj.tolist())
    return str(obj)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` (made plain by :func:`to_plain`) as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(to_plain(obj), indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` on success.

    Args:
        path: the final folder.
        overwrite: replace an existing folder (the old one is removed only after
            the new one is complete). Without it an existing folder is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise Sp4scError(f"{path} already exists; pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder gets the usual mode
    except OSError as exc:
        raise _explain_oserror(path, exc) from exc
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain_oserror(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
