"""``sp4sc bench train``: train-step throughput (clips/s) of SP4SC and CNN6, plain against the CPU path.

One train step = SpecAugment + forward + cross-entropy + backward + AdamW step,
on random log-mels at full TAU resolution: SP4SC on 431 x 256 (the sp4asc front
end) and CNN6 on 1001 x 64 (the panns front end); ``--frames`` scales both
(e.g. 0.5 for the 5 s clips of ESC-10).

On a CPU each model is measured twice in the same run: the plain fp32 path
(eager, oneDNN's kernels) and the CPU training path that ``sp4sc fit`` uses by
default (SP4SC's depthwise taps with a hand-written backward, torch.compile,
bf16 autocast where the CPU has native bf16, freed memory kept mapped). Each
path runs in its own fresh process (the allocator setting of the CPU path is
process-wide and would speed up the plain path too), and the two alternate in
rounds, so a shared or drifting machine affects both alike; clips/s and the
ratio are medians over the rounds. The compile time (first step) is reported apart. A memory-traffic estimate reads
the figure against the machine: the bytes a step must move per clip if each
activation is written once and read about four times (forward read, saved for
backward, its gradient written and read), over the measured copy bandwidth,
gives the clips/s an unfused step cannot beat. A compute estimate does the same
for arithmetic: a train step costs about three forward passes of multiply-adds
(forward, input gradient, weight gradient), over the rate the same cores reach
in a large matrix product (fp32, and bf16 where the CPU has it natively), gives
the clips/s no kernel can beat; the achieved MAC rate is printed as a share of it.

On a GPU: plain and fast path under bf16 autocast with channels-last tensors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

TAU_TRAIN_CLIPS = 13_962
ESC10_TRAIN_CLIPS = 320  # per fold; 5 folds
RECIPE_EPOCHS = 200
CPU_BATCH = 8
TRAIN_MACS_PER_FORWARD = 3  # forward + input gradient + weight gradient
PASSES_PER_ACTIVATION = 5  # write + forward read + saved read + gradient write + gradient read


@dataclass
class Case:
    """One benchmark configuration."""

    label: str
    model: str
    path: str  # "plain", "cpu" (CPU training path) or "fast" (GPU fast path)
    frames: int
    mels: int
    batch: int
    spec_augment: tuple[int, int, int, int]


def cases(gpu: bool, frames_scale: float) -> list[Case]:
    sp, cn = max(16, round(431 * frames_scale)), max(16, round(1001 * frames_scale))
    second = "fast" if gpu else "cpu"
    return [
        Case("sp4sc plain", "sp4sc", "plain", sp, 256, 256, (128, 2, 32, 2)),
        Case(f"sp4sc {'fast path' if gpu else 'CPU path'}", "sp4sc", second, sp, 256, 256, (128, 2, 32, 2)),
        Case("cnn6 plain", "cnn6", "plain", cn, 64, 128, (64, 2, 8, 2)),
        *([] if gpu else [Case("cnn6 CPU path", "cnn6", "cpu", cn, 64, 128, (64, 2, 8, 2))]),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case and round (default: 20 on GPU, 2 on CPU)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds; each times --steps steps of every path in turn, each path in its own "
                             "process; figures are medians over rounds (default: 3 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps after the first (default: 5 on GPU, 1 on CPU); the first step, "
                             "which includes compiling, is timed apart")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size for every case (default: 256 SP4SC / 128 CNN6 on GPU, {CPU_BATCH} on CPU)")
    parser.add_argument("--frames", type=float, default=1.0,
                        help="clip length as a fraction of 10 s (default 1.0: 431 x 256 and 1001 x 64; "
                             "0.5 for the 5 s clips of ESC-10)")
    parser.add_argument("--models", default="sp4sc,cnn6", help="comma-separated subset of: sp4sc, cnn6")
    parser.add_argument("--paths", default="plain,cpu",
                        help="comma-separated subset of: plain, cpu (CPU path) / fast (GPU fast path)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def copy_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Measured memory copy bandwidth (GB/s, read + write counted) of a large tensor copy."""
    import torch

    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def gemm_gmacs(dtype_name: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured multiply-add rate (G MAC/s) of an ``n`` x ``n`` matrix product on the CPU, best of ``repeats``."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # first call: allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return n**3 / best / 1e9


def activation_elements(model, x) -> int:
    """Elements of every leaf module's output in one forward (per batch): the maps a step moves."""
    import torch

    total = 0

    def hook(_module, _inp, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def prepare(case: Case, device, batch: int):
    """Build ``case``'s model, optimiser and batch; return ``(step, sync, info)`` for timing its train step."""
    import torch
    import torch.nn.functional as F

    from sp4sc import cpu
    from sp4sc.data.augment import SpecAugment
    from sp4sc.models import create_model

    gpu = device.type == "cuda"
    torch.manual_seed(0)
    model = create_model(case.model, n_classes=10, n_mels=case.mels, **({"fast": True} if case.path == "fast" else {}))
    model.to(device).train()
    aug = SpecAugment(*case.spec_augment).train()
    x = torch.randn(batch, 1, case.frames, case.mels, device=device) * 10 - 40  # dB-like values
    y = torch.randint(0, 10, (batch,), device=device)
    elements = activation_elements(model, x) // batch
    from sp4sc.deploy.complexity import macs_thop

    macs = macs_thop(model, (1, 1, case.frames, case.mels))  # forward multiply-adds per clip
    bf16 = gpu or (case.path == "cpu" and cpu.has_native_bf16())
    fn = model
    precision = "bf16-autocast, channels_last" if gpu else ("bf16-autocast" if bf16 else "fp32")
    kept = False
    if gpu:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        fn = model
    elif case.path == "cpu":
        kept = cpu.keep_freed_memory()  # process-wide: why each path runs in its own process
        if hasattr(model, "set_cpu_path"):
            model.set_cpu_path(True)
        if cpu.compile_by_default():  # as sp4sc fit decides it
            fn = torch.compile(model, dynamic=False)
            precision += ", compiled"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)

    def step() -> None:
        xa = aug(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = fn(xa)  # (batch, 10)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    info = {**asdict(case), "batch": batch, "precision": precision, "bf16": bf16, "keep_freed_memory": kept,
            "forward_macs_per_clip": macs, "activation_mb_per_clip": elements * 4 / 1e6,
            "traffic_mb_per_clip": PASSES_PER_ACTIVATION * elements * 4 / 1e6}
    return step, sync, info


def _worker(conn, case: dict, device_name: str, batch: int, warmup: int) -> None:
    """One path in its own process: prepare, time the first step and warm up, then time rounds on request.

    Protocol: sends ``{"info": ..., "first_step_s": ...}`` (or ``{"error": ...}``) when ready; then each
    integer received is a number of steps to time, answered with the seconds they took; ``None`` ends it.
    """
    import traceback

    import torch

    try:
        step, sync, info = prepare(Case(**case), torch.device(device_name), batch)
        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
        for _ in range(warmup):
            step()
        sync()
        conn.send({"info": info, "first_step_s": first})
        while (n := conn.recv()) is not None:
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            conn.send(time.perf_counter() - t0)
    except Exception as exc:  # reported by the parent, which names the case
        conn.send({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    finally:
        conn.close()


def measure_model(model_cases: list[Case], device, steps: int, warmup: int, batch_of, rounds: int) -> list[dict]:
    """Time the paths of one model in alternating rounds, each path in its own fresh process.

    A separate process per path keeps process-wide settings of one path (the CPU path's allocator
    setting, compiled kernels, thread pools) out of the other; alternating ``rounds`` of ``steps``
    steps exposes both paths to the same drift of a shared or noisy machine, so their ratio is read
    per round (median), not from two measurements minutes apart. Workers are prepared one after
    the other (compiling never competes with the other path) and only one computes at a time.
    """
    import multiprocessing as mp

    from sp4sc.errors import Sp4scError

    def receive(case: Case, proc, parent, doing: str):
        try:
            return parent.recv()
        except EOFError:
            raise Sp4scError(f"bench train: the {case.label} worker died while {doing} (exit code "
                             f"{proc.join(5) or proc.exitcode}); out of memory? try a smaller --batch") from None

    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from this process's torch
    workers = []
    try:
        for case in model_cases:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, asdict(case), str(device), batch_of(case), warmup),
                               daemon=True)
            proc.start()
            child.close()
            ready = receive(case, proc, parent, "preparing")
            if "error" in ready:
                raise Sp4scError(f"bench train: {case.label} failed: {ready['error']}")
            workers.append((case, proc, parent, ready, []))
        for _ in range(rounds):
            for case, proc, parent, _ready, seconds in workers:
                parent.send(steps)
                seconds.append(receive(case, proc, parent, "timing"))
    finally:
        for _case, proc, parent, *_ in workers:
            try:
                parent.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    results = []
    for case, _proc, _parent, ready, seconds in workers:
        info = ready["info"]
        rates = [steps * info["batch"] / s for s in seconds]
        clips = statistics.median(rates)
        results.append({**info, "steps": steps, "rounds": rounds, "round_clips_per_s": rates,
                        "seconds": sum(seconds), "clips_per_s": clips, "first_step_s": ready["first_step_s"],
                        "achieved_gmacs": clips * TRAIN_MACS_PER_FORWARD * info["forward_macs_per_clip"] / 1e9})
    return results


def run(args: argparse.Namespace) -> int:
    import torch

    from sp4sc import cpu
    from sp4sc.machine import describe, line
    from sp4sc.errors import Sp4scError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Sp4scError("--device cuda: no CUDA GPU is visible")
    gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (20 if gpu else 2)
    rounds = args.rounds if args.rounds is not None else (3 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if steps < 1 or rounds < 1 or warmup < 0 or (args.batch is not None and args.batch < 1):
        raise Sp4scError("--steps, --rounds and --batch must be >= 1, --warmup >= 0")
    if not 0.05 <= args.frames <= 4:
        raise Sp4scError(f"--frames {args.frames}: give a fraction of 10 s between 0.05 and 4")
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    unknown = wanted - {"sp4sc", "cnn6"}
    if unknown:
        raise Sp4scError(f"--models: unknown {sorted(unknown)}; choose from sp4sc, cnn6")
    paths = {p.strip() for p in args.paths.split(",") if p.strip()}
    if paths - {"plain", "cpu", "fast"}:
        raise Sp4scError(f"--paths: unknown {sorted(paths - {'plain', 'cpu', 'fast'})}; choose from plain, cpu, fast")
    if gpu:
        paths = {("fast" if p == "cpu" else p) for p in paths}
    results = []
    for model in ("sp4sc", "cnn6"):
        chosen = [c for c in cases(gpu, args.frames) if c.model == model and model in wanted and c.path in paths]
        if chosen:
            results += measure_model(chosen, device, steps, warmup,
                                     lambda c: args.batch or (c.batch if gpu else CPU_BATCH), rounds)
    bandwidth = None if gpu else copy_bandwidth_gbs()
    gemm = None
    if not gpu:
        gemm = {"float32": gemm_gmacs("float32")}
        if any(r["bf16"] for r in results):
            gemm["bfloat16"] = gemm_gmacs("bfloat16")
    for r in results:
        r["traffic_bound_clips_per_s"] = (bandwidth * 1e3 / r["traffic_mb_per_clip"]) if bandwidth else None
        rate = None if gemm is None else gemm["bfloat16" if r["bf16"] else "float32"]
        r["compute_bound_clips_per_s"] = (rate * 1e9 / (TRAIN_MACS_PER_FORWARD * r["forward_macs_per_clip"])
                                          if rate else None)
        r["share_of_gemm_rate"] = r["achieved_gmacs"] / rate if rate else None
    ratios, ratio_ranges = {}, {}
    for model in ("sp4sc", "cnn6"):
        by = {r["path"]: r["round_clips_per_s"] for r in results if r["model"] == model}
        if "plain" in by and len(by) == 2:
            other = next(p for p in by if p != "plain")
            per_round = [a / b for a, b in zip(by[other], by["plain"])]  # rounds ran side by side
            ratios[model] = statistics.median(per_round)
            ratio_ranges[model] = [min(per_round), max(per_round)]
    implied = {}
    sp = [r for r in results if r["model"] == "sp4sc"]
    if sp:
        best = max(sp, key=lambda r: r["clips_per_s"])
        rate_10s = best["clips_per_s"] * best["frames"] / 431  # per 10 s clip, assuming linear in length
        implied = {"from": best["label"],
                   "tau2020_fold1_200_epochs_h": RECIPE_EPOCHS * TAU_TRAIN_CLIPS / rate_10s / 3600.0,
                   "esc10_5folds_200_epochs_h": 5 * RECIPE_EPOCHS * ESC10_TRAIN_CLIPS / (2 * rate_10s) / 3600.0}
    out = {"device": str(device), "machine": describe(), "machine_line": line(), "cpu": cpu.summary_line(),
           "copy_bandwidth_gbs": bandwidth, "gemm_gmacs": gemm, "steps": steps, "rounds": rounds, "warmup": warmup,
           "results": results, "ratios": ratios, "ratio_ranges": ratio_ranges, "implied": implied}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train-step throughput on {device}")
    cols = ("case", "input", "batch", "precision", "clips/s", "first step (s)", "MB/clip moved", "traffic bound",
            "G MAC/s", "compute bound")
    for col in cols:
        table.add_column(col, justify="left" if col in ("case", "input", "precision") else "right")
    for r in results:
        bound = f"{r['traffic_bound_clips_per_s']:,.1f}" if r["traffic_bound_clips_per_s"] else "-"
        share = f" ({100 * r['share_of_gemm_rate']:.0f} %)" if r["share_of_gemm_rate"] else ""
        compute = f"{r['compute_bound_clips_per_s']:,.1f}" if r["compute_bound_clips_per_s"] else "-"
        table.add_row(r["label"], f"{r['frames']} x {r['mels']}", str(r["batch"]), r["precision"],
                      f"{r['clips_per_s']:,.2f}", f"{r['first_step_s']:.1f}", f"{r['traffic_mb_per_clip']:,.0f}", bound,
                      f"{r['achieved_gmacs']:,.1f}{share}", compute)
    console = Console(width=150)
    console.print(table)
    console.print(f"clips/s: median of {rounds} rounds of {steps} steps; each path in its own process, "
                  f"the paths alternating round by round")
    for model, ratio in ratios.items():
        lo, hi = ratio_ranges[model]
        console.print(f"{model}: {'fast' if gpu else 'CPU'} path / plain = {ratio:.2f}x "
                      f"(median of per-round ratios; range {lo:.2f}-{hi:.2f}x)")
    if bandwidth:
        console.print(f"memory copy bandwidth {bandwidth:.1f} GB/s; traffic bound = bandwidth / "
                      f"({PASSES_PER_ACTIVATION} passes x activations per clip), an estimate for an unfused step")
    if gemm:
        rates = ", ".join(f"{k} {v:,.1f} G MAC/s" for k, v in gemm.items())
        console.print(f"matrix-product rate of these cores: {rates}; compute bound = that rate / "
                      f"({TRAIN_MACS_PER_FORWARD} x forward MACs per clip); G MAC/s in brackets: share of it")
    if implied:
        console.print(f"implied by {implied['from']} (train steps only): TAU2020 fold1, 200 epochs: "
                      f"{implied['tau2020_fold1_200_epochs_h']:.1f} h; ESC-10, 5 folds x 200 epochs of 5 s clips: "
                      f"{implied['esc10_5folds_200_epochs_h']:.1f} h")
    console.print(cpu.summary_line() if not gpu else line())
    console.print(line())
    return 0
