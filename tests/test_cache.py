"""Feature cache: memory-mapped float16, reuse, per-file and per-config invalidation, resume after a kill."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sp4sc.data.cache as cache_mod
from sp4sc.frontend.audio import load_audio
from sp4sc.data.cache import KILL_ENV, build_cache
from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import LogMel, frontend_preset

ROOT = Path(__file__).resolve().parents[1]
CFG = frontend_preset("demo", duration=0.5)
N = 14


@pytest.fixture
def clips(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(N):
        name = f"audio/c{i:02d}.wav"
        sf.write(str(root / name), (0.05 * (i + 1) / N * rng.standard_normal(22050)).astype(np.float32), 44100, subtype="PCM_24")
        names.append(name)
    return root, names


@pytest.fixture
def counted(monkeypatch):
    """Count the clips the cache computes (as opposed to reuses)."""
    seen: list[int] = []
    real = cache_mod._compute_chunks

    def spy(root, paths, chunks, cfg, workers, device):
        for idx, feats in real(root, paths, chunks, cfg, workers, device):
            seen.extend(idx)
            yield idx, feats

    monkeypatch.setattr(cache_mod, "_compute_chunks", spy)
    return seen


def test_values_memmap_and_reopen(clips, tmp_path, counted):
    root, names = clips
    c = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False, chunk_size=4)
    assert len(c) == N and c.shape == (N, CFG.n_frames, CFG.n_mels) and c.paths == names and c.cfg == CFG
    assert isinstance(c.array, np.memmap) and c[3].dtype == np.float16 and c[3].shape == (CFG.n_frames, CFG.n_mels)
    ref = LogMel(CFG)(torch.from_numpy(load_audio(root / names[3], CFG.sample_rate, CFG.duration))[None])[0].numpy()
    assert np.abs(c[3].astype(np.float32) - ref).max() <= 0.07  # float16 rounding at ~-60 dB
    assert len(pickle.dumps(c)) < 20_000  # pickles the path, not the features
    manifest = json.loads((c.dir / "manifest.json").read_text())
    assert manifest["digest"] == CFG.digest() and manifest["shape"] == [N, CFG.n_frames, CFG.n_mels]
    assert {"path", "size", "mtime_ns"} <= set(manifest["files"][0])
    assert not (c.dir / "progress.json").exists() and not list(c.dir.glob("*.partial.npy"))
    assert sorted(counted) == list(range(N))
    counted.clear()
    again = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False)
    assert counted == [] and again.array_path == c.array_path


def test_worker_processes_match_inline(clips, tmp_path):
    root, names = clips
    a = build_cache(root, names, CFG, tmp_path / "a", workers=0, progress=False, chunk_size=5)
    b = build_cache(root, names, CFG, tmp_path / "b", workers=2, progress=False, chunk_size=5)
    assert np.array_equal(np.asarray(a.array), np.asarray(b.array))


def test_changed_file_recomputes_only_that_file(clips, tmp_path, counted):
    root, names = clips
    first = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False)
    before = np.array(first.array)
    sf.write(str(root / names[5]), np.zeros(22050, np.float32) + 0.01, 44100, subtype="PCM_24")
    os.utime(root / names[5], ns=(1, 1_000_000_000))  # a different mtime even on coarse clocks
    counted.clear()
    second = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False)
    assert counted == [5]
    after = np.asarray(second.array)
    assert not np.array_equal(after[5], before[5])
    assert np.array_equal(np.delete(after, 5, 0), np.delete(before, 5, 0))
    assert len(list(second.dir.glob("features-*.npy"))) == 1  # the stale array is gone


def test_changed_config_invalidates_and_old_stays_valid(clips, tmp_path, counted):
    root, names = clips
    a = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False)
    other = CFG.replace(n_mels=32)
    counted.clear()
    b = build_cache(root, names, other, tmp_path / "cache", workers=0, progress=False)
    assert sorted(counted) == list(range(N)) and b.shape[2] == 32 and b.dir != a.dir
    counted.clear()
    build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False)
    assert counted == []
    # a different path list under the same front end reuses the rows it shares
    build_cache(root, names[:6], CFG, tmp_path / "cache", workers=0, progress=False)
    assert counted == []


def test_missing_and_bad_audio_are_errors(clips, tmp_path):
    root, names = clips
    with pytest.raises(Sp4scError, match="1 audio file is missing.*audio/nope.wav"):
        build_cache(root, names + ["audio/nope.wav"], CFG, tmp_path / "cache", workers=0, progress=False)
    (root / "audio/bad.wav").write_text("not audio")
    with pytest.raises(Sp4scError, match="bad.wav"):
        build_cache(root, names + ["audio/bad.wav"], CFG, tmp_path / "cache", workers=0, progress=False)
    with pytest.raises(Sp4scError, match="listed twice"):
        build_cache(root, names + names[:1], CFG, tmp_path / "cache", workers=0, progress=False)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(clips, tmp_path, counted):
    root, names = clips
    script = textwrap.dedent(f"""
        import sys
        from sp4sc.data.cache import build_cache
        from sp4sc.frontend.features import frontend_preset
        names = {names!r}
        build_cache({str(root)!r}, names, frontend_preset("demo", duration=0.5), {str(tmp_path / "cache")!r},
                    workers=2, progress=False, chunk_size=3)
        print("finished")
    """)
    env = {**os.environ, KILL_ENV: "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    folder = next((tmp_path / "cache").glob("*/*"))
    assert not (folder / "manifest.json").exists()
    assert json.loads((folder / "progress.json").read_text())["done_chunks"] == 2
    counted.clear()
    resumed = build_cache(root, names, CFG, tmp_path / "cache", workers=0, progress=False, chunk_size=3)
    assert sorted(counted) == list(range(6, N))  # the first two chunks of 3 are kept
    fresh = build_cache(root, names, CFG, tmp_path / "fresh", workers=0, progress=False, chunk_size=3)
    assert np.array_equal(np.asarray(resumed.array), np.asarray(fresh.array))
    assert (folder / "manifest.json").exists() and not (folder / "progress.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batched_path_matches_cpu(clips, tmp_path):
    root, names = clips
    cpu = build_cache(root, names, CFG, tmp_path / "cpu", workers=0, progress=False, device="cpu")
    gpu = build_cache(root, names, CFG, tmp_path / "gpu", workers=2, progress=False, device="cuda")
    diff = np.abs(np.asarray(cpu.array, dtype=np.float32) - np.asarray(gpu.array, dtype=np.float32))
    assert diff.max() <= 0.07  # float16 rounding of values around -60 dB
