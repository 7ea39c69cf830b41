"""``sp4sc bench train``: train-step throughput (clips/s) of SP4SC and CNN6.

One train step = SpecAugment + forward + cross-entropy + backward + AdamW step,
on random log-mels at full TAU resolution: SP4SC on 431 x 256 (the sp4asc front
end, batch 256) and CNN6 on 1001 x 64 (the panns front end, batch 128). SP4SC is
measured twice in the same run, plain and with the training fast path (one
plus-shaped depthwise conv per block). On a GPU the step runs under bf16
autocast with channels-last tensors; on a CPU in float32, with a smaller batch
by default (``--batch`` overrides it) so that it finishes. The implied wall
time of the 200-epoch SP4SC recipe on TAU2020 fold 1 (13,962 training clips
per epoch) is printed from the faster SP4SC figure, training steps only
(no validation, no data loading).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

TAU_TRAIN_CLIPS = 13_962
RECIPE_EPOCHS = 200
CPU_BATCH = 8


@dataclass
class Case:
    """One benchmark configuration."""

    label: str
    model: str
    fast: bool
    frames: int
    mels: int
    batch: int
    spec_augment: tuple[int, int, int, int]


CASES = (
    Case("sp4sc plain", "sp4sc", False, 431, 256, 256, (128, 2, 32, 2)),
    Case("sp4sc fast path", "sp4sc", True, 431, 256, 256, (128, 2, 32, 2)),
    Case("cnn6", "cnn6", False, 1001, 64, 128, (64, 2, 8, 2)),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case (default: 20 on GPU, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on GPU, 1 on CPU)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size for every case (default: 256 SP4SC / 128 CNN6 on GPU, {CPU_BATCH} on CPU)")
    parser.add_argument("--models", default="sp4sc,cnn6", help="comma-separated subset of: sp4sc, cnn6")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def measure(case: Case, device: torch.device, steps: int, warmup: int, batch: int) -> dict:
    """Clips per second of ``case``'s train step on ``device``."""
    from sp4sc.data.augment import SpecAugment
    from sp4sc.models import create_model

    gpu = device.type == "cuda"
    torch.manual_seed(0)
    model = create_model(case.model, n_classes=10, n_mels=case.mels, **({"fast": True} if case.fast else {}))
    model.to(device).train()
    aug = SpecAugment(*case.spec_augment).train()
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    x = torch.randn(batch, 1, case.frames, case.mels, device=device) * 10 - 40  # dB-like values
    y = torch.randint(0, 10, (batch,), device=device)
    if gpu:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        xa = aug(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            logits = model(xa)  # (batch, 10)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if gpu:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if gpu:
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    return {**asdict(case), "batch": batch, "steps": steps, "seconds": dt, "clips_per_s": steps * batch / dt,
            "precision": "bf16-autocast, channels_last" if gpu else "fp32"}


def run(args: argparse.Namespace) -> int:
    from sp4sc.benchmarks.machine import describe, line
    from sp4sc.errors import Sp4scError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Sp4scError("--device cuda: no CUDA GPU is visible")
    gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (20 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if steps < 1 or warmup < 0 or (args.batch is not None and args.batch < 1):
        raise Sp4scError("--steps and --batch must be >= 1, --warmup >= 0")
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    unknown = wanted - {"sp4sc", "cnn6"}
    if unknown:
        raise Sp4scError(f"--models: unknown {sorted(unknown)}; choose from sp4sc, cnn6")
    results = []
    for case in CASES:
        if case.model not in wanted:
            continue
        batch = args.batch or (case.batch if gpu else CPU_BATCH)
        results.append(measure(case, device, steps, warmup, batch))
    sp = [r for r in results if r["model"] == "sp4sc"]
    implied = None
    if sp:
        best = max(sp, key=lambda r: r["clips_per_s"])
        implied = {"from": best["label"], "epochs": RECIPE_EPOCHS, "clips_per_epoch": TAU_TRAIN_CLIPS,
                   "hours": RECIPE_EPOCHS * TAU_TRAIN_CLIPS / best["clips_per_s"] / 3600.0}
    out = {"device": str(device), "machine": describe(), "machine_line": line(), "results": results,
           "implied_sp4sc_recipe": implied,
           "note": None if gpu else "CPU only: full-resolution figures at a small batch; no GPU figures here"}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train-step throughput on {device}")
    for col in ("case", "input", "batch", "precision", "steps", "clips/s"):
        table.add_column(col, justify="right" if col in ("batch", "steps", "clips/s") else "left")
    for r in results:
        table.add_row(r["label"], f"{r['frames']} x {r['mels']}", str(r["batch"]), r["precision"],
                      str(r["steps"]), f"{r['clips_per_s']:,.1f}")
    console = Console()
    console.print(table)
    if len(sp) == 2:
        console.print(f"SP4SC fast path / plain: {sp[1]['clips_per_s'] / sp[0]['clips_per_s']:.2f}x")
    if implied:
        console.print(f"implied SP4SC recipe ({RECIPE_EPOCHS} epochs x {TAU_TRAIN_CLIPS:,} clips, "
                      f"{implied['from']}, train steps only): {implied['hours']:.1f} h")
    if out["note"]:
        console.print(out["note"])
    console.print(line())
    return 0
