"""Benchmark: the embedding extractor against the raw encoder forward, per δt.

Both are measured in the same run on the same built encoder:

* raw forward: ``bundle.embed`` on batches of ready-made windows already on
  the device (no I/O, no resampling, no windowing);
* extractor: :func:`sp4sc.probes.extract.embed_clips` on synthetic 44.1 kHz
  wav files (reading, soxr resampling, windowing, batching, host-to-device
  copy, the forward and writing a fresh embedding cache included).

The goal (issue 6) is an extractor at >= 90 % of the raw forward's windows/s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from sp4sc.probes.cost import raw_throughput
from sp4sc.probes.bundle import EncoderBundle
from sp4sc.probes.extract import embed_clips

GOAL = 0.90


def write_clips(folder: Path, n: int, seconds: float, sample_rate: int = 44100, seed: int = 0) -> list[str]:
    """Write ``n`` noise clips (24-bit wav) into ``folder``; return their names."""
    from sp4sc.frontend.audio import write_wav

    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"clip_{i:04d}.wav"
        write_wav(folder / name, (0.1 * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32), sample_rate)
        names.append(name)
    return names


def run_bench(
    bundle: EncoderBundle,
    dts: list[float],
    *,
    clips: int = 8,
    clip_seconds: float = 10.0,
    batch_size: int = 32,
    raw_batches: int = 3,
    raw_seconds: float = 0.0,
    workers: int = 0,
    distinct_files: int = 16,
) -> dict:
    """Raw forward vs extractor windows/s per δt (see the module docstring).

    The extractor reads ``clips`` clips cycling over ``distinct_files`` written
    files (so long runs need little disk; repeated files come from the page cache).
    """
    from sp4sc.machine import line

    rows = []
    with tempfile.TemporaryDirectory(prefix="sp4sc-probe-bench-") as tmp:
        tmp = Path(tmp)
        files = write_clips(tmp, min(clips, distinct_files), clip_seconds)
        names = [files[i % len(files)] for i in range(clips)]
        for dt in dts:
            raw = raw_throughput(bundle, dt, batch_size=batch_size, batches=raw_batches, warmup=1, min_seconds=raw_seconds)
            t0 = time.perf_counter()
            embs, st = embed_clips(
                bundle, tmp, names, dt=dt, cache_dir=tmp / f"cache_{dt:g}", batch_size=batch_size, workers=workers
            )
            wall = time.perf_counter() - t0
            windows = sum(len(e) for e in embs)
            ext_wps = windows / wall
            rows.append({
                "dt": dt,
                "raw_windows_per_s": raw.windows_per_s,
                "raw_windows": raw.windows,
                "raw_peak_mib": raw.peak_mib,
                "extractor_windows_per_s": ext_wps,
                "extractor_windows": windows,
                "extractor_encoder_share": st.encoder_s / wall if wall > 0 else None,
                "extractor_peak_mib": st.peak_mib,
                "memory_kind": raw.memory_kind,
                "ratio": ext_wps / raw.windows_per_s,
                "meets_goal": ext_wps / raw.windows_per_s >= GOAL,
            })
    return {
        "encoder": bundle.name,
        "random_init": bool(bundle.random_init),
        "device": str(bundle.device),
        "batch_size": batch_size,
        "clips": clips,
        "clip_seconds": clip_seconds,
        "workers": workers,
        "distinct_files": min(clips, distinct_files),
        "raw_seconds_min": raw_seconds,
        "goal_ratio": GOAL,
        "machine": line(),
        "rows": rows,
    }


def format_bench(result: dict) -> str:
    """Plain-text table of :func:`run_bench`'s result."""
    tag = " [random-init weights]" if result["random_init"] else ""
    lines = [
        f"{result['encoder']}{tag} on {result['device']}, batch {result['batch_size']}, "
        f"{result['clips']} clips of {result['clip_seconds']:g} s, {result['workers']} loader workers",
        f"{'dt (s)':>7} {'raw win/s':>10} {'extractor win/s':>16} {'ratio':>6} {'goal>=90%':>9} {'peak MiB':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['dt']:>7g} {r['raw_windows_per_s']:>10.2f} {r['extractor_windows_per_s']:>16.2f} "
            f"{100 * r['ratio']:>5.0f}% {'yes' if r['meets_goal'] else 'no':>9} {r['raw_peak_mib']:>9.0f}"
        )
    lines.append(result["machine"])
    return "\n".join(lines)
