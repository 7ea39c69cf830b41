"""How a model trains on a CPU: the CPU path, torch.compile and bf16 autocast, chosen for this machine.

:func:`choose` reads the recipe's wishes (``cpu_path``, ``compile_backbone``,
``cpu_bf16``; None = automatic) against what the CPU can do (:mod:`sp4sc.cpu`)
and returns a :class:`CpuTraining`, whose :meth:`CpuTraining.forward` is the
training forward: compiled where chosen (a failed compile falls back to eager
with a one-line notice, never fails) and under bf16 autocast where the CPU has
native bf16. Off a CPU it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from sp4sc.errors import Sp4scError


@dataclass
class CpuTraining:
    """What was chosen, and the training forward that applies it.

    Attributes:
        setup: ``{"device", "cpu_path", "compile", "bf16", "keep_freed_memory"}`` as chosen (for logs).
        bf16: bf16 autocast of the forward (fp32 master weights).
        compiled: the compiled backbone, or None (eager). Not an ``nn.Module`` attribute of the
            LightningModule, so it never enters the state dict.
    """

    setup: dict[str, Any] = field(default_factory=dict)
    bf16: bool = False
    compiled: Optional[Callable] = None

    def forward(self, eager: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``compiled(x)`` (or ``eager(x)``) under the chosen autocast."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if self.compiled is None:
                return eager(x)
            try:
                return self.compiled(x)  # (batch, classes)
            except Sp4scError:
                raise
            except Exception as exc:  # noqa: BLE001 - inductor/compiler failures: fall back, never fail
                from sp4sc.log import logger

                first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                logger.info("torch.compile failed (%s); training in eager mode", first)
                self.compiled = None
                self.setup["compile"] = False
                return eager(x)


def choose(backbone: nn.Module, device_type: str, cpu_path: Optional[bool] = None,
           compile_backbone: Optional[bool] = None, cpu_bf16: Optional[bool] = None,
           name: str = "backbone") -> CpuTraining:
    """Choose the CPU path, torch.compile and bf16 autocast for training ``backbone`` on ``device_type``.

    Args:
        backbone: the model; its CPU path is switched on in place (``set_cpu_path``) when chosen.
        device_type: ``"cpu"``, ``"cuda"``...; anything but a CPU gets the plain forward.
        cpu_path: None = on when the backbone has one; False = off; True = on (a notice if it has none).
        compile_backbone: None = on when a C++ compiler is found and ``SP4SC_COMPILE`` is not ``0``.
        cpu_bf16: None = on when the CPU has native bf16; True on a CPU without it = off with a notice.
        name: the backbone's name, for notices.
    """
    from sp4sc import cpu
    from sp4sc.log import logger

    out = CpuTraining(setup={"device": device_type, "cpu_path": False, "compile": False, "bf16": False})
    if device_type != "cpu":
        return out
    out.setup["keep_freed_memory"] = cpu.keep_freed_memory()  # no page faults per step on large maps
    if cpu_path is None or cpu_path:
        if hasattr(backbone, "set_cpu_path"):
            backbone.set_cpu_path(True)
            out.setup["cpu_path"] = True
        elif cpu_path:
            logger.info("--model.cpu_path: backbone %r has no CPU path; training it as it is", name)
    if compile_backbone is None:
        compile_backbone = cpu.compile_by_default()
    elif compile_backbone and cpu.cxx_compiler() is None:
        logger.info("torch.compile needs a C++ compiler (g++ or clang++) and none was found: training in eager mode")
        compile_backbone = False
    if compile_backbone:
        out.compiled = torch.compile(backbone, dynamic=False)
        out.setup["compile"] = True
    if cpu_bf16 is None:
        cpu_bf16 = cpu.has_native_bf16()
    elif cpu_bf16 and not cpu.has_native_bf16():
        logger.info("--model.cpu_bf16: this CPU has no native bf16 (avx512_bf16 or AMX): training in fp32")
        cpu_bf16 = False
    out.bf16 = bool(cpu_bf16)
    out.setup["bf16"] = out.bf16
    return out
