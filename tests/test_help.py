"""`--help` is quick and plain: no torch imported to build it, no reST markup, every option explained, a cache
for the parsers that need torch (LightningCLI's `fit --help`)."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sp4sc.commands import helpcache
from sp4sc.cli import COMMANDS, LIGHTNING_COMMANDS, main
from sp4sc.commands.helptext import PlainHelpParser, plain

ROOT = Path(__file__).resolve().parents[1]



def _importable(name: str) -> bool:
    try:
        importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError:
        return False
    return True


COMMAND_NAMES = [n for n in COMMANDS if _importable(n)]


def _run(*argv: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    code = ("import sys; from sp4sc.cli import main; rc = main(sys.argv[1:]); "
            "sys.stderr.write('TORCH_IMPORTED=%s\\n' % ('torch' in sys.modules)); sys.exit(rc)")
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300)


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_command_help_does_not_import_torch(name, tmp_path):
    res = _run(name, "--help", env_extra={"SP4SC_NO_HELP_CACHE": "1"})
    assert res.returncode == 0, res.stderr[-1000:]
    assert "TORCH_IMPORTED=False" in res.stderr, f"sp4sc {name} --help imports torch"


def _parsers():
    for name in COMMAND_NAMES:
        parser = PlainHelpParser(prog=f"sp4sc {name}", description=COMMANDS[name][1])
        importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
        stack = [(f"sp4sc {name}", parser)]
        while stack:
            prog, p = stack.pop()
            yield prog, p
            for a in p._actions:
                if isinstance(a, argparse._SubParsersAction):
                    stack += [(f"{prog} {sub}", sp) for sub, sp in a.choices.items()]


def test_every_help_is_plain_text():
    for prog, parser in _parsers():
        text = parser.format_help()
        assert "``" not in text and ":func:`" not in text and ":class:`" not in text, prog


def test_every_option_has_help_text():
    missing = [f"{prog} {'/'.join(a.option_strings) or a.dest}" for prog, p in _parsers() for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []


def test_plain_strips_roles_literals_and_literal_blocks():
    assert plain("``sweep`` runs :func:`sp4sc.probes.sweep.run` with :class:`~sp4sc.x.SpecAugment`::") == \
        "sweep runs sp4sc.probes.sweep.run with SpecAugment:"
    assert plain("see :ref:`the docs <target>` and `data summary`") == "see the docs and `data summary`"


# ------------------------------------------------------------------ the help cache


def test_help_cache_stores_slow_helps_and_reprints_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SP4SC_CACHE", str(tmp_path))
    monkeypatch.delenv("SP4SC_NO_HELP_CACHE", raising=False)
    calls = []

    def slow(argv):
        calls.append(argv)
        print("usage: sp4sc slow ...")
        monkeypatch.setattr(helpcache.time, "perf_counter", lambda: 1e9)  # "took long"
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        helpcache.run(["slow", "--help"], slow)
    monkeypatch.undo()
    monkeypatch.setenv("SP4SC_CACHE", str(tmp_path))
    assert capsys.readouterr().out == "usage: sp4sc slow ...\n"
    assert len(list((tmp_path / "help").iterdir())) == 1
    assert helpcache.run(["slow", "--help"], slow) == 0 and len(calls) == 1  # from the cache
    assert capsys.readouterr().out == "usage: sp4sc slow ...\n"
    monkeypatch.setenv("COLUMNS", "57")  # another terminal width: another text
    with pytest.raises(SystemExit):
        helpcache.run(["slow", "--help"], slow)
    assert len(calls) == 2


def test_help_cache_key_follows_sources_and_recipes(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  lr: 1.0\n")
    argv = ["fit", "--config", str(recipe), "--help"]
    key = helpcache.help_key(argv)
    assert helpcache.help_key(argv) == key
    recipe.write_text("model:\n  lr: 2.0\n")
    assert helpcache.help_key(argv) != key
    key = helpcache.help_key(argv)
    source = helpcache.PACKAGE / "commands" / "helptext.py"
    st = source.stat()
    try:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert helpcache.help_key(argv) != key
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_help_cache_never_stores_fast_helps_errors_or_non_help(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SP4SC_CACHE", str(tmp_path))
    assert main(["validate-submission", "--help"]) == 0  # fast: built, not stored
    assert not (tmp_path / "help").exists()
    assert helpcache.run(["x", "--help"], lambda argv: 3) == 3  # an error exit is not stored
    assert helpcache.run(["x"], lambda argv: 7) == 7  # not a help: plain dispatch
    assert not (tmp_path / "help").exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("SP4SC_CACHE", str(blocked))  # cannot hold a folder: the help still prints
    assert main(["validate-submission", "--help"]) == 0
    assert "usage: sp4sc validate-submission" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("command", LIGHTNING_COMMANDS[:1])
def test_lightning_help_is_cached_without_torch_the_second_time(command, tmp_path):
    # with a recipe (a plain `fit --help` is a shipped text: test_lightning_help_first_call_is_shipped_text)
    recipe = ("--config", str(ROOT / "recipes" / "demo.yaml"))
    first = _run(command, *recipe, "--help", env_extra={"SP4SC_CACHE": str(tmp_path)})
    assert first.returncode == 0 and "--trainer.max_epochs" in first.stdout, first.stderr[-1000:]
    assert "TORCH_IMPORTED=True" in first.stderr
    second = _run(command, *recipe, "--help", env_extra={"SP4SC_CACHE": str(tmp_path)})
    assert second.returncode == 0 and second.stdout == first.stdout
    assert "TORCH_IMPORTED=False" in second.stderr


def test_cache_help_options_are_the_datamodules_arguments():
    from sp4sc.commands.cache import _init_params, data_options

    options = data_options()  # read from the source, for a quick --help
    assert [name for name, _, _ in options] == list(_init_params())  # the imported signature
    docs = {name: doc for name, _, doc in options}
    assert docs["batch_size"] == "training batch size." and all(docs.values())


# ------------------------------------------------- shipped Lightning helps (sp4sc.commands.statichelp)


def test_shipped_lightning_helps_are_in_sync_with_the_parser():
    """The stored `fit|validate|test|predict --help` texts equal a fresh LightningCLI build, fingerprint included.

    Fails after a change to the LightningModule's or DataModule's arguments or docstrings, or to
    Lightning/jsonargparse: regenerate with `python -m sp4sc.commands.statichelp --write`.
    """
    from sp4sc.commands import statichelp

    problems = statichelp.check()
    assert problems == [], "; ".join(problems) + "; run: python -m sp4sc.commands.statichelp --write"


@pytest.mark.parametrize("command", LIGHTNING_COMMANDS)
def test_lightning_help_first_call_is_shipped_text(command, tmp_path):
    """An empty help cache (the first call after an install): the shipped text, torch not imported."""
    from sp4sc.commands import statichelp

    if statichelp.lookup([command, "--help"]) is None:
        pytest.skip("the shipped texts are out of date (test_shipped_lightning_helps_are_in_sync_with_the_parser)")

    res = _run(command, "--help", env_extra={"SP4SC_CACHE": str(tmp_path), "SP4SC_NO_HELP_CACHE": ""})
    assert res.returncode == 0, res.stderr[-1000:]
    assert "TORCH_IMPORTED=False" in res.stderr
    assert res.stdout == (statichelp.FOLDER / f"{command}.txt").read_text() and "--trainer.max_epochs" in res.stdout
    assert not (tmp_path / "help").exists()  # nothing built, nothing cached


def test_shipped_help_is_used_only_while_its_fingerprint_holds(monkeypatch):
    from sp4sc.commands import statichelp

    if statichelp.lookup(["fit", "--help"]) is None:
        pytest.skip("the shipped texts are out of date (test_shipped_lightning_helps_are_in_sync_with_the_parser)")
    assert statichelp.lookup(["fit", "-h"]) == statichelp.lookup(["fit", "--help"])
    for argv in (["fit", "--config", "recipes/demo.yaml", "--help"], ["fit"], ["cv", "--help"], ["fit", "--help", "x"]):
        assert statichelp.lookup(argv) is None, argv  # a recipe's help shows its values: built and cached
    real = statichelp.fingerprint()
    monkeypatch.setattr(statichelp, "fingerprint", lambda: {**real, "versions": {**real["versions"],
                                                                                 "pytorch-lightning": "9.9"}})
    assert statichelp.lookup(["fit", "--help"]) is None  # another Lightning: build the help as before
    monkeypatch.setattr(statichelp, "FOLDER", statichelp.FOLDER / "missing")
    monkeypatch.setattr(statichelp, "fingerprint", lambda: real)
    assert statichelp.lookup(["fit", "--help"]) is None  # not shipped: no error either


def test_shipped_help_fingerprint_follows_the_init_not_the_rest_of_the_module(tmp_path):
    from sp4sc.commands.statichelp import _source_hash

    src = tmp_path / "m.py"
    base = 'class A:\n    """Doc."""\n\n    def __init__(self, x: int = 1):\n        """Args:\n            x: a."""\n\n    def f(self):\n        return 1\n'
    src.write_text(base)
    key = _source_hash(src, "A")
    src.write_text(base.replace("return 1", "return 2") + "\ndef g():\n    pass\n")
    assert _source_hash(src, "A") == key  # other code: same help
    for change in (("x: int = 1", "x: int = 2"), ("x: a.", "x: b."), ('"""Doc."""', '"""Other."""')):
        src.write_text(base.replace(*change))
        assert _source_hash(src, "A") != key, change
    assert _source_hash(src, "Missing") == _source_hash(src, None)  # no such class: the whole file
