"""Cost of an encoder per δt: throughput, peak memory, FLOPs per window.

Peak memory is CUDA's ``max_memory_allocated`` on a GPU; on the CPU it is the
highest resident set size (RSS) of the process seen by a 2 ms sampler while
the measured code runs (it includes the model and everything else the process
holds).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass

import torch

from sp4sc.probes.bundle import EncoderBundle
from sp4sc.probes.windows import window_samples

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager measuring peak memory on ``device`` (see the module docstring).

    Attributes:
        peak_mib: the peak, MiB (after the block).
        kind: ``"cuda_max_allocated"`` or ``"cpu_rss"``.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss"
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mib = self._peak / 2**20


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_window(bundle: EncoderBundle, dt: float) -> float:
    """FLOPs of one window of ``dt`` seconds, counted with ``torch.utils.flop_counter.FlopCounterMode``.

    The counter charges 2 FLOPs per multiply-accumulate of matrix products and
    convolutions (attention included) and nothing for element-wise operations,
    the STFT or the mel front end.
    """
    from torch.utils.flop_counter import FlopCounterMode

    win = window_samples(dt, bundle.sample_rate)
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(1, win, generator=gen)
    counter = FlopCounterMode(display=False)
    with counter:
        bundle.embed(wav)
    return float(counter.get_total_flops())


@dataclass
class Throughput:
    """Raw encoder forward throughput at one δt.

    Attributes:
        dt: window length, s.
        batch_size: windows per forward.
        windows: windows timed (after warm-up).
        seconds: time of the timed forwards.
        windows_per_s: windows / seconds.
        encoder_s_per_audio_hour: encoder seconds per hour of audio, windows not overlapping (hop = δt).
        peak_mib: peak memory during the timed forwards.
        memory_kind: what ``peak_mib`` measures.
        flops_per_window: FLOPs of one window (counted on the warm-up batch, see :func:`flops_per_window`).
    """

    dt: float
    batch_size: int
    windows: int
    seconds: float
    windows_per_s: float
    encoder_s_per_audio_hour: float
    peak_mib: float
    memory_kind: str
    flops_per_window: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def raw_throughput(
    bundle: EncoderBundle, dt: float, *, batch_size: int = 32, batches: int = 3, warmup: int = 1, min_seconds: float = 0.0
) -> Throughput:
    """Time the bare encoder forward on ready-made windows of noise already on the device.

    Runs ``batches`` timed forwards, and more until ``min_seconds`` have passed.
    The first warm-up forward runs under ``FlopCounterMode`` to count the
    FLOPs per window (at least one warm-up forward is always made).
    """
    from torch.utils.flop_counter import FlopCounterMode

    win = window_samples(dt, bundle.sample_rate)
    gen = torch.Generator().manual_seed(0)
    wav = (0.1 * torch.randn(batch_size, win, generator=gen)).to(bundle.device)
    counter = FlopCounterMode(display=False)
    with counter:
        bundle.embed(wav)
    flops = float(counter.get_total_flops()) / batch_size
    for _ in range(warmup - 1):
        bundle.embed(wav)
    synchronize(bundle.device)
    with PeakMemory(bundle.device) as mem:
        t0 = time.perf_counter()
        done = 0
        while done < batches or time.perf_counter() - t0 < min_seconds:
            bundle.embed(wav)
            done += 1
            if done >= batches and min_seconds > 0:
                synchronize(bundle.device)
        synchronize(bundle.device)
        seconds = time.perf_counter() - t0
    n = batch_size * done
    wps = n / seconds if seconds > 0 else float("inf")
    return Throughput(
        dt=dt,
        batch_size=batch_size,
        windows=n,
        seconds=seconds,
        windows_per_s=wps,
        encoder_s_per_audio_hour=(3600.0 / dt) / wps,
        peak_mib=mem.peak_mib,
        memory_kind=mem.kind,
        flops_per_window=flops,
    )
