"""``sp4sc fit|validate|test|predict``: LightningCLI over SceneClassifier and SceneDataModule.

    sp4sc fit --config recipes/sp4sc.yaml --data.root /data/TAU-urban-acoustic-scenes-2020-mobile-development
    sp4sc fit --config recipes/sp4sc.yaml --data.root ... --ckpt_path last     # resume
    sp4sc test --config recipes/sp4sc.yaml --data.root ... --ckpt_path runs/sp4sc/checkpoints/best.ckpt

Recipes compose: shared trainer/data settings live in ``recipes/base/*.yaml``;
a recipe names its bases on a comment line ``# bases: base/trainer.yaml
base/tau2020.yaml`` (paths relative to the recipe), and this wrapper expands
``--config recipe.yaml`` into ``--config base1 --config base2 --config recipe``
(LightningCLI merges them in order; command-line flags come last and win). The
recipe keeps ``model: {backbone, backbone_kwargs}`` and ``data: {frontend,
duration}`` itself, so ``sp4sc complexity --config`` reads it alone.

What this wrapper adds to plain LightningCLI:

- checkpoints go to ``<trainer.default_root_dir>/checkpoints`` (not a new
  ``version_N`` folder per run), so ``--ckpt_path last`` finds the last one;
- ``config.yaml`` is overwritten on reruns instead of failing;
- when stdout is not a terminal (a log file, a pipe), the progress bar is
  replaced by one plain line per epoch (:mod:`sp4sc.training.progress`);
- a usage error (unknown key, wrong type, missing data root) is one line naming
  the key, exit code 2, no traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from sp4sc.cvfolder import CHECKPOINTS
from sp4sc.errors import Sp4scError

_BASES = re.compile(r"^#\s*bases:\s*(.+)$")


def expand_configs(argv: list[str]) -> list[str]:
    """Insert each recipe's bases before it: ``--config R`` -> ``--config B1 --config B2 --config R``.

    A recipe names its bases on a comment line ``# bases: a.yaml b.yaml`` (paths
    relative to the recipe); bases may name bases of their own. Later files
    override earlier ones, and command-line flags override all files.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        path = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            path, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        for p in _with_bases(Path(path), []):
            out += ["--config", str(p)]
    return out


def _with_bases(path: Path, seen: list[Path]) -> list[Path]:
    if not path.is_file():
        raise Sp4scError(f"--config {path}: no such file; recipes live in recipes/ (e.g. recipes/sp4sc.yaml)")
    real = path.resolve()
    if real in seen:
        raise Sp4scError(f"--config {path}: its bases include itself")
    _check_yaml(path)
    bases: list[Path] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = _BASES.match(line.strip())
            if m:
                bases += [path.parent / b for b in m.group(1).split()]
    out: list[Path] = []
    for b in bases:
        out += _with_bases(b, seen + [real])
    return out + [path]


def _check_yaml(path: Path) -> None:
    """A recipe that is not YAML is an error naming the file and the line (jsonargparse names neither)."""
    import yaml

    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise Sp4scError(f"--config {path}: not valid YAML{where} ({problem})") from exc


def _cli_class():
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    class Sp4scCLI(LightningCLI):
        """LightningCLI with stable checkpoint folders and checked data roots."""

        def before_instantiate_classes(self) -> None:
            cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
            data = cfg.get("data") or {}
            root = data.get("root") if hasattr(data, "get") else None
            dataset = data.get("dataset") if hasattr(data, "get") else None
            if root is not None and dataset != "toy" and not Path(str(root)).exists():
                raise Sp4scError(f"--data.root {root}: no such folder; give the dataset's root folder")

        def instantiate_trainer(self, **kwargs: Any):
            trainer = super().instantiate_trainer(**kwargs)
            from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
                trainer.strategy.checkpoint_io = _atomic_checkpoint_io()
            root = Path(trainer.default_root_dir)
            for cb in trainer.callbacks:
                if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                    cb.dirpath = str(root / CHECKPOINTS)
            from sp4sc.training.progress import use_line_progress

            use_line_progress(trainer)  # stdout not a terminal: one plain line per epoch instead of a bar
            return trainer

    return Sp4scCLI


def _atomic_checkpoint_io():
    """Checkpoint IO writing each file beside its final name, then renaming it (:mod:`sp4sc.fileio`).

    Lightning's own writes to the system temporary folder and moves the file into place, which is
    a copy when that folder is on another file system: a kill or a full disk can then leave a
    truncated checkpoint under its final name. Here disk errors are one-line Sp4scErrors too.
    """
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            import io

            import torch

            from sp4sc.fileio import write_bytes

            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            write_bytes(path, buf.getvalue())

    return AtomicCheckpointIO()


class _NoAdvert(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line (an advert, not about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Keep Lightning's noise that says nothing about the user's run off the terminal.

    Lightning's litlogger tip (logged at INFO by its rank-zero logger) and torch's
    ``LeafSpec`` deprecation warning, raised inside Lightning's own pytree helper on
    every step (nothing a user can change), are dropped; other warnings stay.
    """
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvert) for f in log.filters):
            log.addFilter(_NoAdvert())


def _first_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith("usage:"):
            return ln
    return lines[0] if lines else "invalid arguments"


def _make_cli(args: list[str], command: str | None):
    from jsonargparse import ArgumentError

    from sp4sc.data.datamodule import SceneDataModule
    from sp4sc.training.lit import SceneClassifier

    cli_cls = _cli_class()
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    quiet_lightning()
    parser_kwargs: dict[str, Any] = {"exit_on_error": False}
    if command is not None:
        parser_kwargs[command] = {"exit_on_error": False}
    try:
        return cli_cls(
            SceneClassifier,
            SceneDataModule,
            args=[command, *args] if command else args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            run=command is not None,
            auto_configure_optimizers=False,  # SceneClassifier.configure_optimizers: AdamW + cosine
        )
    except ArgumentError as exc:
        raise Sp4scError(f"sp4sc {command or 'recipe'}: {_one_line_usage_error(str(exc))}") from exc
    except OSError as exc:  # a full disk or a read-only output folder met inside Lightning
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
            raise
        from sp4sc.fileio import _explain_oserror

        raise _explain_oserror(Path(exc.filename2 or exc.filename or "."), exc) from exc


def main(command: str, argv: list[str]) -> int:
    """Run LightningCLI's ``command`` (fit, validate, test, predict) with ``argv``."""
    cli = _make_cli(expand_configs(argv), command)
    if command in ("validate", "test"):
        write_figures(cli, "val" if command == "validate" else "test")
    return 0


def write_figures(cli, stage: str) -> list[Path]:
    """``confusion.png`` and ``metrics.md`` of the ``stage`` just run, into the run folder (rank 0 only).

    The run folder is ``trainer.default_root_dir`` (where ``checkpoints/`` goes); the
    files are those of :mod:`sp4sc.training.report`, and their paths are said on stderr.
    """
    from sp4sc.log import logger
    from sp4sc.training.report import write_eval_report

    model, trainer = getattr(cli, "model", None), getattr(cli, "trainer", None)
    report = (getattr(model, "reports", None) or {}).get(stage)
    if report is None or trainer is None or not trainer.is_global_zero:
        return []
    split = "validation" if stage == "val" else "test"
    md, png = write_eval_report(report, list(model.classes), trainer.default_root_dir, title=f"{split} split")
    written = [p for p in (png, md) if p is not None]
    logger.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def build_cli(argv: list[str]):
    """Parse a recipe and flags (``["--config", R, "--trainer.max_epochs", "3", ...]``) without running.

    Returns the LightningCLI object: ``.trainer``, ``.model``, ``.datamodule``
    (what ``sp4sc demo`` drives).
    """
    return _make_cli(expand_configs(argv), None)


def _one_line_usage_error(msg: str) -> str:
    """jsonargparse's message cut to what names the key and the problem."""
    line = _first_line(msg)
    # e.g. 'Parser key "model.loss":' followed by details on later lines
    rest = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip() and not ln.strip().startswith("usage:")]
    if line.endswith(":") and rest:
        line = f"{line} {rest[0]}"
    return line[:400]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], sys.argv[2:]))
