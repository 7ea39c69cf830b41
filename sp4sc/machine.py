"""A short description of the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform


def describe() -> dict[str, object]:
    """CPU model, core count, accelerator and library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def line() -> str:
    """One line naming the machine, for printed tables."""
    d = describe()
    acc = d["accelerator"] or "no GPU"
    return f"machine: {d['cpu']}, {d['cores']} cores, {acc}, torch {d['torch']}"
