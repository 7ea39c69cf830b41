"""Helpers of the robustness suite (tests/test_robustness.py).

- runners: the real ``sp4sc`` command in-process (:func:`run_cli`) or in a
  subprocess (:func:`run_proc`), the torch-free edge runner in a subprocess;
- :func:`assert_clean_error`: the one-line error contract;
- bad-file makers (audio, checkpoints);
- kill hooks for the fault rows: ``python tests/robust_helpers.py kill-at-replace
  SUBSTR N -- sp4sc ARGS...`` runs the real command and SIGKILLs it right before
  the N-th ``os.replace`` whose destination contains SUBSTR (the moment a
  finished file or folder would be published); :class:`KillAtStep`, a Lightning
  callback a recipe can name, SIGKILLs a fit after a chosen optimizer step;
- ``python tests/robust_helpers.py capped-read LIMIT_BYTES ...``: reads
  through a feature cache / DataModule under ``RLIMIT_DATA``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "export" / "edge_infer.py"


@dataclass
class Result:
    """What a command gave back."""

    rc: int
    out: str
    err: str


def run_cli(argv: list[str], capsys) -> Result:
    """Run ``sp4sc ARGV`` in this process (sp4sc.cli.main) and capture its output."""
    from sp4sc import log
    from sp4sc.cli import main

    capsys.readouterr()
    log.reset_notes()
    log.setup(False)  # its handler writes to the current sys.stderr, i.e. capsys's
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return Result(rc, cap.out, cap.err)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_proc(argv: list[str], *, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT) -> Result:
    """Run a command line in a subprocess."""
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env or child_env(), cwd=cwd,
                       timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def run_edge(argv: list[str]) -> Result:
    """``python export/edge_infer.py ARGV`` in a subprocess."""
    return run_proc([sys.executable, str(EDGE), *argv], timeout=120)


def sp4sc_argv(*args) -> list[str]:
    return [sys.executable, "-m", "sp4sc", *[str(a) for a in args]]


LOG_PREFIXES = ("INFO: ", "WARNING: ", "DEBUG: ")


def assert_clean_error(res: Result, names: list[str], *, codes: tuple[int, ...] | None = None) -> str:
    """Non-zero exit; stderr holds exactly one line ``error: ...`` (besides sp4sc log lines) naming ``names``."""
    assert res.rc != 0, f"exit 0 for bad input; stdout={res.out[-500:]!r} stderr={res.err[-500:]!r}"
    if codes is not None:
        assert res.rc in codes, f"exit {res.rc}, expected one of {codes}: {res.err[-800:]}"
    assert "Traceback" not in res.err, f"a traceback reached the user:\n{res.err[-3000:]}"
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    other = [ln for ln in lines if not ln.startswith("error:") and not ln.startswith(LOG_PREFIXES)]
    assert len(errors) == 1, f"expected one 'error:' line, got {len(errors)}:\n{res.err[-2000:]}"
    assert not other, f"stderr has more than the error line:\n{res.err[-2000:]}"
    assert lines[-1] == errors[0], f"the error line is not the last line of stderr:\n{res.err[-2000:]}"
    line = errors[0]
    for name in names:
        assert str(name) in line, f"error line does not name {name!r}: {line}"
    return line


# ------------------------------------------------------------------ bad files


def write_wav(path: Path, x: np.ndarray, sr: int, subtype: str = "PCM_24") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype, format="WAV")
    return path


def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise plus a tone at -20 dBFS: ``(samples,)`` or ``(samples, channels)`` float32."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sr)))
    t = np.arange(n) / sr
    x = 0.1 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(n)
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return x


class Evil:
    """Pickles to a call of ``os.system``: what a malicious checkpoint holds."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    """A .pt file that, loaded without weights_only, would create ``marker``."""
    import torch

    torch.save({"state_dict": {}, "payload": Evil(f"touch {marker}")}, path, pickle_module=pickle)
    return path


# ------------------------------------------------------------------ kill hooks


def _kill_at_replace(substr: str, n: int, argv: list[str]) -> int:
    """Run ``sp4sc ARGV``; SIGKILL right before the n-th os.replace/os.rename onto a path containing ``substr``."""
    import shutil

    count = {"n": 0}
    real_replace, real_rename = os.replace, os.rename

    def check(dst) -> None:
        if substr in str(dst):
            count["n"] += 1
            if count["n"] >= n:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *a, **k):
        check(dst)
        return real_replace(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        check(dst)
        return real_rename(src, dst, *a, **k)

    os.replace = replace
    os.rename = rename
    shutil.os.rename = rename  # shutil.move (fsspec commits) renames through its own os reference
    from sp4sc.cli import main

    return main(argv)


try:  # a Lightning callback a recipe can name: tests.robust_helpers.KillAtStep
    from pytorch_lightning.callbacks import Callback as _Callback
except Exception:  # pragma: no cover - lightning missing: the fit rows fail on their own
    _Callback = object


class KillAtStep(_Callback):
    """SIGKILL the training process once ``trainer.global_step`` reaches ``step`` (a fault-injection hook)."""

    def __init__(self, step: int = 1):
        super().__init__()
        self.step = int(step)

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def data_bytes() -> int:
    """The process's data segment (VmData: what RLIMIT_DATA limits), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _cap(extra: int) -> int:
    """Limit RLIMIT_DATA to the current data segment plus ``extra`` bytes; returns the limit."""
    import resource

    limit = data_bytes() + extra
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    return limit


def _capped(mode: str, extra: int, args: list[str]) -> int:
    """Under RLIMIT_DATA = now + ``extra``: read through a cache folder, or a DataModule's train split."""
    import torch

    torch.set_num_threads(1)
    if mode == "cache":
        from sp4sc.data.cache import FeatureCache

        cache = FeatureCache(args[0])
        _ = cache.array  # open the memmap before capping
        _cap(extra)
        total = 0.0
        for i in range(len(cache)):
            total += float(np.asarray(cache[i], dtype=np.float32).sum())
        # a whole-split copy must fail under the cap (the test measures the limit, not only our reader)
        try:
            np.array(cache.array, dtype=np.float32)
            print("WHOLE-COPY-FITS")
        except MemoryError:
            print("WHOLE-COPY-REFUSED")
        print(f"READ {len(cache)} {total:.3f}")
        return 0
    if mode == "datamodule":
        from sp4sc.data.datamodule import SceneDataModule

        root, cache_dir = args[0], args[1]
        dm = SceneDataModule(dataset="tau2020", root=root, frontend=args[2], duration=float(args[3]), batch_size=2,
                             num_workers=0, cache_dir=cache_dir, progress=False, cache_workers=0)
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        next(it)  # first batch before the cap (allocator warm-up)
        _cap(extra)
        n = 2
        for batch in it:
            n += batch["x"].shape[0]
        print(f"READ {n}")
        return 0
    if mode == "build":
        from sp4sc.data.cache import build_cache
        from sp4sc.frontend.features import FrontEndConfig
        import json

        cfg = FrontEndConfig.from_dict(json.loads(args[0]))
        root, cache_dir, paths = args[1], args[2], args[3:]
        _cap(extra)
        cache = build_cache(root, paths, cfg, cache_dir, workers=0, progress=False, chunk_size=1, device="cpu")
        print(f"BUILT {cache.shape} {cache.array_path.stat().st_size}")
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "kill-at-replace":
        sep = sys.argv.index("--")
        substr, n = sys.argv[2], int(sys.argv[3])
        sys.exit(_kill_at_replace(substr, n, sys.argv[sep + 1 :]))
    if cmd == "capped":
        sys.exit(_capped(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
    raise SystemExit(f"unknown helper {cmd}")
