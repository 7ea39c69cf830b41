"""What this CPU can do, read at run time (never assumed): model, cores, AVX-512, bf16, AMX, a C++ compiler.

The CPU training path asks two questions here: does bf16 autocast pay off
(the CPU has ``avx512_bf16`` or AMX, so oneDNN runs bf16 natively), and can
``torch.compile`` build its kernels (inductor needs a C++ compiler on a CPU).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def features() -> dict[str, bool]:
    """AVX2, AVX-512, avx512_bf16 and AMX (tile / bf16) as booleans."""
    flags = cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def has_native_bf16() -> bool:
    """True when bf16 matrix maths runs natively (avx512_bf16 or AMX): bf16 autocast pays off then."""
    env = os.environ.get("SP4SC_CPU_BF16")  # "0"/"1" overrides detection (tests, odd kernels)
    if env in ("0", "1"):
        return env == "1"
    flags = cpu_flags()
    return any(f in flags for f in BF16_FLAGS)


def cxx_compiler() -> str | None:
    """Path of the C++ compiler torch.compile's CPU backend would use, or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_by_default() -> bool:
    """Whether CPU training compiles by default: a C++ compiler is found and ``SP4SC_COMPILE`` is not ``0``."""
    return os.environ.get("SP4SC_COMPILE", "1") != "0" and cxx_compiler() is not None


def summary_line() -> str:
    """``AMD EPYC, 2 cores, AVX2 yes, AVX-512 no, avx512_bf16 no, AMX no``."""
    f = features()
    yn = {True: "yes", False: "no"}
    return (f"{cpu_model()}, {cores()} cores, AVX2 {yn[f['avx2']]}, AVX-512 {yn[f['avx512']]}, "
            f"avx512_bf16 {yn[f['avx512_bf16']]}, AMX {yn[f['amx']]}")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory mapped (no mmap per large tensor, no trimming).

    A training step allocates and frees the same large activations every step; by default glibc
    serves each from a fresh mmap and unmaps it on free, so every step page-faults its whole working
    set again (measured here: ~1.4 M minor faults and a third of the step in the kernel). With
    ``M_MMAP_MAX = 0`` and a 2 GiB trim threshold the heap keeps those pages: faults drop ~50x.
    Same effect as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``
    but applied at run time. Returns True when applied (glibc only; a no-op elsewhere, and when
    ``SP4SC_KEEP_FREED_MEMORY=0``).
    """
    if os.environ.get("SP4SC_KEEP_FREED_MEMORY") == "0" or platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
