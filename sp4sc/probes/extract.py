"""Clip -> E: the window embeddings of each clip, through the embedding cache.

Audio is read and resampled to the encoder's rate (``sp4sc.frontend.audio.load_audio``)
and cut into windows (:mod:`sp4sc.probes.windows`) in DataLoader workers while
the main process batches windows of several clips and runs the encoder; every
``chunk_clips`` finished clips are written to the cache, so a killed run
resumes from its last chunk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.log import logger
from sp4sc.probes.cache import EmbeddingCache, EmbeddingKey, file_stamp
from sp4sc.probes.cost import PeakMemory
from sp4sc.probes.bundle import EncoderBundle
from sp4sc.probes.windows import cut_windows, window_samples


@dataclass
class ExtractStats:
    """What one extraction did.

    Attributes:
        clips: clips asked for.
        cached: clips found in the cache.
        computed: clips embedded now.
        windows: windows embedded now.
        audio_s: seconds of audio embedded now (clip lengths).
        encoder_s: seconds this process spent launching the encoder and waiting for its results.
        wall_s: seconds of the whole extraction (loading, windowing, caching included).
        peak_mib: peak memory during the extraction.
        memory_kind: what ``peak_mib`` measures.
    """

    clips: int = 0
    cached: int = 0
    computed: int = 0
    windows: int = 0
    audio_s: float = 0.0
    encoder_s: float = 0.0
    wall_s: float = 0.0
    peak_mib: float = 0.0
    memory_kind: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _ClipWindows(torch.utils.data.Dataset):
    """Loads one clip at the encoder's rate and cuts it into windows."""

    def __init__(self, paths: list[Path], sample_rate: int, win: int, hop: int) -> None:
        self.paths = paths
        self.sample_rate = sample_rate
        self.win = win
        self.hop = hop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from sp4sc.frontend.audio import load_audio

        wave = load_audio(self.paths[i], self.sample_rate)
        return i, cut_windows(wave, self.win, self.hop), len(wave) / self.sample_rate


def _only(batch):
    return batch[0]


def embed_clips(
    bundle: EncoderBundle,
    root: str | Path,
    names: list[str],
    *,
    dt: float,
    hop: float | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    workers: int = 0,
    chunk_clips: int = 256,
) -> tuple[list[np.ndarray], ExtractStats]:
    """Window embeddings of clips, from the cache or computed (and cached).

    Args:
        bundle: a built encoder.
        root: dataset root; ``names`` are relative to it.
        names: clip paths relative to ``root``.
        dt: window length, s.
        hop: hop between windows, s (default ``dt``).
        cache_dir: embedding cache folder; None computes without caching.
        batch_size: windows per encoder forward.
        workers: DataLoader worker processes reading audio (0: in this process).
        chunk_clips: clips per cache chunk (the unit of resumption).

    Returns:
        one float32 array ``(n_windows, dim)`` per name, and the statistics.
    """
    hop = dt if hop is None else hop
    if bundle.max_window_s is not None and dt > bundle.max_window_s + 1e-9:
        raise Sp4scError(f"--dt {dt:g}: {bundle.name} accepts windows up to {bundle.max_window_s:g} s")
    if dt < bundle.min_window_s:
        raise Sp4scError(f"--dt {dt:g}: {bundle.name} needs windows of at least {bundle.min_window_s:g} s")
    if hop <= 0:
        raise Sp4scError(f"--hop {hop:g}: must be positive")
    root = Path(root)
    win = window_samples(dt, bundle.sample_rate)
    hop_n = window_samples(hop, bundle.sample_rate)
    key = EmbeddingKey(bundle.name, bundle.identity, float(dt), float(hop), int(bundle.sample_rate))
    cache = EmbeddingCache(cache_dir, key, bundle.dim) if cache_dir is not None else None

    stats = ExtractStats(clips=len(names))
    out: list[np.ndarray | None] = [None] * len(names)
    stamps = [file_stamp(root / n) for n in names]
    todo = []
    for i, (name, stamp) in enumerate(zip(names, stamps)):
        if cache is not None and cache.valid(name, stamp):
            out[i] = cache.get(name)
            stats.cached += 1
        else:
            todo.append(i)
    if not todo:
        return out, stats  # type: ignore[return-value]

    dataset = _ClipWindows([root / names[i] for i in todo], bundle.sample_rate, win, hop_n)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_only,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
    )
    pin = bundle.device.type == "cuda"
    buffer: list[np.ndarray] = []  # window arrays waiting for the encoder, in order
    owners: list[list[int]] = []  # [todo position, windows of it still in the buffer]
    buffered = 0
    parts: dict[int, list[np.ndarray]] = {}
    needed: dict[int, int] = {}
    done_chunk: list[int] = []
    next_log = 500
    t_start = time.perf_counter()

    pending: list[tuple[torch.Tensor, object, int]] = []  # launched batches not yet distributed

    def run_encoder(n: int) -> None:
        """Launch the encoder on the next ``n`` buffered windows; distribute the previous batch.

        On a GPU the result is copied to pinned memory asynchronously and collected
        only after the next batch is launched, so the device keeps working while
        this process prepares batches.
        """
        nonlocal buffer, buffered
        flat = np.concatenate(buffer, axis=0) if len(buffer) > 1 else buffer[0]
        batch, rest = flat[:n], flat[n:]
        buffer = [rest] if len(rest) else []
        buffered = len(rest)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if pin:
            x = x.pin_memory()
        t0 = time.perf_counter()
        emb = bundle.embed(x)  # (n, dim) on the device
        event = None
        if pin:
            host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
            host.copy_(emb, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            emb = host
        stats.encoder_s += time.perf_counter() - t0
        stats.windows += n
        pending.append((emb, event, n))
        if len(pending) > 1:
            collect()

    def collect() -> None:
        """Wait for the oldest launched batch and hand its embeddings to their clips."""
        emb_t, event, n = pending.pop(0)
        t0 = time.perf_counter()
        if event is not None:
            event.synchronize()
        emb = emb_t.cpu().numpy()
        stats.encoder_s += time.perf_counter() - t0
        pos = 0
        while pos < n:
            owner = owners[0]
            take = min(owner[1], n - pos)
            parts.setdefault(owner[0], []).append(emb[pos : pos + take])
            pos += take
            owner[1] -= take
            if owner[1] == 0:
                owners.pop(0)
                k = owner[0]
                if sum(len(p) for p in parts[k]) == needed[k]:
                    finish(k)

    def finish(k: int) -> None:
        i = todo[k]
        out[i] = np.concatenate(parts.pop(k), axis=0)
        done_chunk.append(k)
        stats.computed += 1
        if cache is not None and len(done_chunk) >= chunk_clips:
            flush()

    def flush() -> None:
        if cache is not None and done_chunk:
            cache.add([(names[todo[k]], stamps[todo[k]], out[todo[k]]) for k in done_chunk])
        done_chunk.clear()

    with PeakMemory(bundle.device) as mem:
        for k, windows, seconds in loader:
            needed[k] = len(windows)
            stats.audio_s += seconds
            buffer.append(windows)
            owners.append([k, len(windows)])
            buffered += len(windows)
            while buffered >= batch_size:
                run_encoder(batch_size)
            if stats.computed >= next_log:
                logger.info(f"embedded {stats.computed}/{len(todo)} clips ({bundle.name}, dt={dt:g} s)")
                next_log += 500
        if buffered:
            run_encoder(buffered)
        while pending:
            collect()
        flush()
    stats.wall_s = time.perf_counter() - t_start
    stats.peak_mib = mem.peak_mib
    stats.memory_kind = mem.kind
    return out, stats  # type: ignore[return-value]
