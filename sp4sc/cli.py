"""The ``sp4sc`` command.

Each sub-command lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int | None``; modules are imported only when their command runs,
so ``sp4sc --help`` stays fast. ``fit``, ``validate``, ``test`` and ``predict``
go to LightningCLI. Errors the user can fix (:class:`sp4sc.errors.Sp4scError`)
print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from sp4sc.errors import Sp4scError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sp4sc.commands.demo", "the main job on the embedded toy data: data, cache, train, fold, export, submit"),
    "data": ("sp4sc.commands.data", "dataset indexes: `data summary`"),
    "cache": ("sp4sc.commands.cache", "build the log-mel feature cache of a recipe (resumable)"),
    "complexity": ("sp4sc.commands.complexity", "parameters, bytes and MACs of a folded model; exit 3 if over budget"),
    "export": ("sp4sc.commands.export", "fold, check the budget, export ONNX and check parity"),
    "infer": ("sp4sc.commands.infer", "class probabilities for audio files"),
    "convert-sp4asc": ("sp4sc.commands.convert", "official SP4ASC checkpoint -> sp4sc model file"),
    "submit": ("sp4sc.commands.submit", "write a DCASE Task 1A submission package"),
    "validate-submission": ("sp4sc.commands.validate", "check a submission package against the DCASE rules"),
    "probe": ("sp4sc.commands.probe", "frozen-embedding linear probes at varying temporal support"),
    "bench": ("sp4sc.commands.bench", "benchmarks: features, train, infer"),
    "cv": ("sp4sc.commands.cv", "k-fold cross-validation, resumable; cv compare A B (paired), cv gap A (train fit)"),
    "doctor": ("sp4sc.commands.doctor", "versions, CPU features, GPU and extras: the block for a bug report"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    lines = ["usage: sp4sc [--debug] COMMAND [ARGS]", "", "commands:"]
    for name in LIGHTNING_COMMANDS:
        lines.append(f"  {name:<20} LightningCLI: sp4sc {name} --config recipes/<name>.yaml")
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<20} {help_}")
    lines.append("")
    lines.append("`sp4sc COMMAND --help` for a command's options; --debug shows tracebacks.")
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        import sp4sc

        print(sp4sc.__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from sp4sc.commands.lightning import main as lightning_main

        return lightning_main(command, rest) or 0
    if command not in COMMANDS:
        raise Sp4scError(f"unknown command {command!r}; run `sp4sc --help` for the list")
    module = importlib.import_module(COMMANDS[command][0])
    if hasattr(module, "main_argv") and not {"-h", "--help"} & set(rest):
        return module.main_argv(rest) or 0  # commands that pass unknown --key value pairs on (cv)
    from sp4sc.commands.helptext import PlainHelpParser  # help without reStructuredText markup

    parser = PlainHelpParser(prog=f"sp4sc {command}", description=COMMANDS[command][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return module.run(args) or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sp4sc`` console script."""
    from sp4sc import log

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    log.setup(debug)
    try:
        from sp4sc.commands import helpcache  # a command's --help that is slow to build is printed from a cache

        return helpcache.run(argv, _dispatch)
    except Sp4scError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse and LightningCLI exit this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception as exc:  # noqa: BLE001 - last-resort one-line report
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: unexpected {type(exc).__name__}: {first} (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
