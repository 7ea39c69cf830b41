"""Plain-text ``--help``: docstrings used as parser descriptions lose their reStructuredText markup.

Command modules often pass their module docstring as the description of a parser
(``description=__doc__``); in a terminal, ``sp4sc probe sweep --help`` should read
``sweep embeds ...`` and ``sp4sc.probes.sweep.run``, not ````sweep```` and
``:func:`sp4sc.probes.sweep.run```. :class:`PlainHelpParser` strips that markup
from the whole help text, for the parser and the sub-parsers it creates.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`<]*?)\s*(?:<([^>`]+)>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_LITERAL_BLOCK = re.compile(r"(\S)::$", re.M)


def _role(m: re.Match) -> str:
    text, target = m.group(1), m.group(2)
    if target is not None and text:
        return text
    text = text or target or ""
    return text.split(".")[-1] if text.startswith("~") else text


def plain(text: str) -> str:
    """``text`` without reST roles (``:func:`~a.b``` -> ``b``), literals (````x```` -> ``x``) and ``::`` markers."""
    text = _ROLE.sub(_role, text)
    text = _LITERAL.sub(r"\1", text)
    return _LITERAL_BLOCK.sub(r"\1:", text)


class PlainHelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose help is plain text; ``add_subparsers`` makes more of the same class."""

    def format_help(self) -> str:
        return plain(super().format_help())
