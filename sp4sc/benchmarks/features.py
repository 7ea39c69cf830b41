"""``sp4sc bench features``: feature-cache throughput at the sp4asc front end.

Writes ``--clips`` synthetic 10 s, 24-bit, 44.1 kHz wav files to a temporary
folder, then times :func:`sp4sc.data.cache.build_cache` on them end to end
(decode, log-mel, float16, memory-mapped write, manifest) after a warm-up, and
also times decoding alone and the log-mel alone. Prints clips/s and the
machine, and the CPU time per clip of all processes (which, unlike the wall
time, says what the cores can do when other programs share them). The target is 50 clips/s on 2 CPU cores (the TAU2020 dev set's
23,035 clips in under 8 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from sp4sc.cpu import cores

TARGET_CLIPS_PER_S = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=128, help="number of 10 s clips (default 128)")
    parser.add_argument("--frontend", default="sp4asc", help="front-end preset (default sp4asc)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: auto)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _write_clips(folder: Path, n: int, seconds: float = 10.0, sr: int = 44100) -> list[str]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    names = []
    base = (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)
    for i in range(n):
        name = f"clip{i:05d}.wav"
        x = np.roll(base, int(rng.integers(len(base)))) * rng.uniform(0.3, 1.0)
        sf.write(str(folder / name), x, sr, subtype="PCM_24")
        names.append(name)
    return names


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(n_clips: int = 128, frontend: str = "sp4asc", workers: int | None = None) -> dict:
    """Time cache building on ``n_clips`` synthetic 10 s clips; returns the figures."""
    import torch

    from sp4sc.frontend.audio import load_audio
    from sp4sc.machine import describe, line
    from sp4sc.data.cache import build_cache
    from sp4sc.frontend.features import LogMel, frontend_preset

    if n_clips < 1:
        from sp4sc.errors import Sp4scError

        raise Sp4scError(f"--clips {n_clips}: must be at least 1")
    cfg = frontend_preset(frontend, duration=10.0)
    n_cores = cores()
    with tempfile.TemporaryDirectory(prefix="sp4sc-bench-") as tmp:
        root = Path(tmp) / "audio"
        root.mkdir()
        names = _write_clips(root, n_clips)
        build_cache(root, names[:2], cfg, Path(tmp) / "warmup", workers=workers, progress=False)  # imports, first calls
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        build_cache(root, names, cfg, Path(tmp) / "cache", workers=workers, progress=False)
        total = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0

        k = min(n_clips, 32)
        start = time.perf_counter()
        waves = [load_audio(root / n, cfg.sample_rate, cfg.duration) for n in names[:k]]
        decode = time.perf_counter() - start
        logmel = LogMel(cfg)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the cache's worker processes: one clip at a time, one thread
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                for w in waves:
                    logmel(torch.from_numpy(w)[None])
                mel = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
    return {
        "frontend": cfg.name,
        "clips": n_clips,
        "clip_seconds": 10.0,
        "format": "wav PCM_24 44.1 kHz mono",
        "seconds": round(total, 3),
        "clips_per_s": round(n_clips / total, 1),
        "cpu_ms_per_clip": round(1000 * cpu / n_clips, 1),
        "cores": n_cores,
        "cpu_bound_clips_per_s_if_idle": round(n_cores * n_clips / cpu, 1) if cpu > 0 else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "decode_only_clips_per_s_one_thread": round(k / decode, 1),
        "logmel_only_clips_per_s_one_thread": round(k / mel, 1),
        "target_clips_per_s": TARGET_CLIPS_PER_S,
        "meets_target": n_clips / total >= TARGET_CLIPS_PER_S,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "machine": describe(),
        "machine_line": line(),
    }


def run(args: argparse.Namespace) -> int:
    r = measure(args.clips, args.frontend, args.workers)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(r["machine_line"])
    print(f"feature cache, {r['frontend']} front end, {r['clips']} x 10 s 24-bit 44.1 kHz wav on {r['device']}:")
    print(f"  end to end   {r['clips_per_s']:8.1f} clips/s  ({r['seconds']:.2f} s; target {TARGET_CLIPS_PER_S:g} clips/s: "
          f"{'met' if r['meets_target'] else 'NOT met'})")
    print(f"  CPU time     {r['cpu_ms_per_clip']:8.1f} ms/clip  (all processes; {r['cores']} cores, 1-min load average "
          f"{r['load_average_1min']}: CPU-bound rate on idle cores about {r['cpu_bound_clips_per_s_if_idle']} clips/s)")
    print(f"  decode only  {r['decode_only_clips_per_s_one_thread']:8.1f} clips/s  (one thread)")
    print(f"  log-mel only {r['logmel_only_clips_per_s_one_thread']:8.1f} clips/s  (one thread)")
    return 0
