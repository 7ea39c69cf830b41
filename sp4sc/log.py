"""Logging: one logger for the package and notes said only once per run."""

from __future__ import annotations

import logging
import sys
import threading

logger = logging.getLogger("sp4sc")
_said: set[str] = set()
_lock = threading.Lock()


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at emit time.

    A plain StreamHandler keeps the stream it was made with; tests (and tools)
    that swap ``sys.stderr`` would then write to a closed file.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(debug: bool = False) -> None:
    """Send sp4sc's log records to stderr, one plain line each."""
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    # torch.compile's CPU backend says "No CUDA runtime is found, using CUDA_HOME=..." on every
    # CPU-only machine (torch's CUDA wheels): true and irrelevant to a CPU run
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.DEBUG if debug else logging.ERROR)
    logger.propagate = False
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)


def note_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    with _lock:
        if key in _said:
            return
        _said.add(key)
    logger.log(level, message)


def reset_notes() -> None:
    """Forget which notes were said (for tests)."""
    with _lock:
        _said.clear()
