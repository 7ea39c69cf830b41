"""``sp4sc doctor``: what this installation is and what this machine can do, as one block for a bug report.

    sp4sc doctor            # plain text, paste it into the report
    sp4sc doctor --json

Versions of Python and the compiled dependencies, the CPU (model, cores,
AVX2 / AVX-512 / avx512_bf16 / AMX), whether a GPU is visible, whether
torch.compile can build CPU kernels, and whether each optional extra imports.
A dependency that fails to import is reported with its error, not raised.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from typing import Any

# (distribution shown, module imported)
CORE = (("torch", "torch"), ("torchaudio", "torchaudio"), ("pytorch-lightning", "pytorch_lightning"),
        ("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("numpy", "numpy"), ("soundfile", "soundfile"),
        ("soxr", "soxr"), ("librosa", "librosa"))
EXTRAS = {"probes": (("hear21passt", "hear21passt"), ("speechbrain", "speechbrain"), ("torchvision", "torchvision")),
          "dev": (("pytest", "pytest"), ("scikit-learn", "sklearn"))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text block")


def _version(dist: str, module: str) -> dict[str, Any]:
    """``{"version": ...}`` of an importable package, else ``{"error": first line of the failure}``."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install is what the doctor is for
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"error": f"{type(exc).__name__}: {first}"[:300]}
    version = getattr(mod, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        try:
            version = dist_version(dist)
        except PackageNotFoundError:
            version = "?"
    return {"version": str(version)}


def collect() -> dict[str, Any]:
    """Everything the doctor reports, as plain data."""
    import sp4sc
    from sp4sc import cpu

    info: dict[str, Any] = {"sp4sc": sp4sc.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "packages": {}, "extras": {}}
    for dist, module in CORE:
        info["packages"][dist] = _version(dist, module)
    info["cpu"] = {"model": cpu.cpu_model(), "cores": cpu.cores(), **cpu.features(),
                   "bf16_autocast_on_cpu": cpu.has_native_bf16(), "cxx_compiler": cpu.cxx_compiler()}
    gpu: dict[str, Any] = {"visible": False}
    if "error" not in info["packages"]["torch"]:
        import torch

        gpu["torch_cuda_build"] = torch.version.cuda
        gpu["threads"] = torch.get_num_threads()
        try:
            if torch.cuda.is_available():
                gpu.update(visible=True, count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0))
        except Exception as exc:  # noqa: BLE001
            gpu["error"] = str(exc).splitlines()[0][:200]
    info["gpu"] = gpu
    for extra, pkgs in EXTRAS.items():
        info["extras"][extra] = {dist: _version(dist, module) for dist, module in pkgs}
    return info


def _fmt(entry: dict[str, Any]) -> str:
    return entry.get("version") or f"BROKEN ({entry['error']})"


def text(info: dict[str, Any]) -> str:
    """The block a user pastes into a bug report."""
    yn = {True: "yes", False: "no"}
    c, g = info["cpu"], info["gpu"]
    lines = [f"sp4sc {info['sp4sc']}", f"python {info['python']} ({info['platform']})"]
    lines += [f"{dist} {_fmt(entry)}" for dist, entry in info["packages"].items()]
    lines.append(f"cpu: {c['model']}, {c['cores']} cores; AVX2 {yn[c['avx2']]}, AVX-512 {yn[c['avx512']]}, "
                 f"avx512_bf16 {yn[c['avx512_bf16']]}, AMX {yn[c['amx']]}")
    lines.append(f"cpu training: bf16 autocast {'on' if c['bf16_autocast_on_cpu'] else 'off (no native bf16)'}; "
                 f"torch.compile {'can build kernels with ' + c['cxx_compiler'] if c['cxx_compiler'] else 'off (no C++ compiler)'}")
    if g.get("visible"):
        lines.append(f"gpu: {g['count']} x {g['name']} (CUDA {g.get('torch_cuda_build')})")
    else:
        lines.append(f"gpu: none visible (torch CUDA build: {g.get('torch_cuda_build')})")
    for extra, pkgs in info["extras"].items():
        lines.append(f"extra [{extra}]: " + ", ".join(f"{d} {_fmt(e)}" for d, e in pkgs.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else text(info))
    broken = [d for d, e in info["packages"].items() if "error" in e]
    if broken:
        print(f"error: {', '.join(broken)} failed to import: reinstall with "
              "`pip install -c requirements-lock.txt -e \".[all]\"` in a fresh venv", file=sys.stderr)
        return 1
    return 0
