"""Core plumbing: the CLI's error contract, atomic writes, the checkpoint reader."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys

import pytest
import torch

from sp4sc import fileio
from sp4sc.models.checkpoint import check_state_dict, read_checkpoint
from sp4sc.cli import main
from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.frontend.features import FrontEndConfig, frontend_preset


def test_unknown_command_is_one_line_error(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: unknown command 'no-such-command'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "fit", "data", "cache", "complexity", "export", "infer", "submit", "validate-submission", "probe", "bench"):
        assert name in out


def test_errors_exit_codes(monkeypatch, capsys):
    import sp4sc.cli as cli

    def boom(argv):
        raise BudgetExceeded("model: 100 params > 10")

    monkeypatch.setattr(cli, "_dispatch", boom)
    assert main(["x"]) == 3
    assert "100 params > 10" in capsys.readouterr().err

    def crash(argv):
        raise ValueError("internal")

    monkeypatch.setattr(cli, "_dispatch", crash)
    assert main(["x"]) == 1
    err = capsys.readouterr().err
    assert "--debug" in err and "Traceback" not in err
    assert main(["x", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sp4sc", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    fileio.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_leftovers_of_killed_writers_are_swept(tmp_path):
    import socket

    target = tmp_path / "pkg"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = tmp_path / f".pkg.{host}-{dead.pid}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "half").write_text("x")
    live = tmp_path / f".pkg.{host}-{os.getpid()}.def.tmp"  # a writer still running: kept
    live.mkdir()
    other_host = tmp_path / f".pkg.{host}x-{dead.pid}.ghi.tmp"  # another machine's: kept
    other_host.mkdir()
    with fileio.atomic_dir(target) as d:
        (d / "a").write_text("1")
    assert not stale_dir.exists() and live.exists() and other_host.exists()
    stale_file = tmp_path / f".f.txt.{host}-{dead.pid}.zz.tmp"
    stale_file.write_text("half")
    fileio.write_text(tmp_path / "f.txt", "done")
    assert not stale_file.exists()


def test_atomic_outputs_get_the_usual_modes(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.write_text(tmp_path / "f.txt", "x")
        with fileio.atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_refuses_overwrite_and_cleans_up(tmp_path):
    target = tmp_path / "pkg"
    with fileio.atomic_dir(target) as d:
        (d / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(Sp4scError, match="--force"):
        with fileio.atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(target, overwrite=True) as d:
            (d / "b").write_text("2")
            raise RuntimeError("half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with fileio.atomic_dir(target, overwrite=True) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_read_only_or_full_disk_is_clear_error(tmp_path, monkeypatch, err):
    # root ignores folder permissions, so fail the write the way the kernel would
    target = tmp_path / "x.txt"
    fileio.write_text(target, "old")

    def failing_replace(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(Sp4scError, match="x.txt: (cannot write here|no space left)"):
        fileio.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(Sp4scError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(Sp4scError, match="empty file"):
        read_checkpoint(empty)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(Sp4scError, match="notes.ckpt: not a readable checkpoint"):
        read_checkpoint(text)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(Sp4scError, match="truncated or corrupt"):
        read_checkpoint(truncated)
    assert torch.equal(read_checkpoint(good)["state_dict"]["w"], torch.ones(3))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_read_checkpoint_refuses_code(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil, pickle_module=pickle)
    with pytest.raises(Sp4scError, match="would run code"):
        read_checkpoint(evil)


def test_check_state_dict_names_keys():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(Sp4scError) as info:
        check_state_dict(model, {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}, "m.pt")
    msg = str(info.value)
    assert "missing keys bias" in msg and "unexpected keys extra" in msg and "weight (2, 4) vs (2, 3)" in msg


def test_frontend_config_roundtrip_and_digest():
    cfg = frontend_preset("sp4asc")
    assert cfg.n_frames == 431
    assert frontend_preset("panns").n_frames == 1001
    assert FrontEndConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest() != cfg.replace(hop_length=512).digest()
    assert cfg.digest() == cfg.replace(name="renamed").digest()
    with pytest.raises(Sp4scError, match="unknown keys"):
        FrontEndConfig.from_dict({**cfg.to_dict(), "hopp": 3})
    with pytest.raises(Sp4scError, match="unknown front end"):
        frontend_preset("nope")
